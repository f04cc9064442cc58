"""Typed configuration: YAML in configs/ loaded into pydantic models that reject unknown keys."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from pipeline.core.schema import Strict


class ConfigError(ValueError):
    """A configuration problem; the message names the file and the offending key."""


class SyntheticConfig(Strict):
    n_users: int = Field(2000, ge=10)
    n_items: int = Field(1000, ge=10)
    n_categories: int = Field(12, ge=1)
    n_brands: int = Field(40, ge=1)
    mean_length: int = Field(14, ge=5)
    seed: int = 0


class DataConfig(Strict):
    source: Literal["synthetic", "amazon", "movielens", "generic"] = "synthetic"
    path: str | None = None  # dataset folder or file; relative paths resolve from the working directory
    synthetic: SyntheticConfig = SyntheticConfig()
    columns: dict[str, str] | None = None  # generic logs: canonical name -> column in the file
    items_path: str | None = None  # generic logs: optional item table
    split: Literal["leave_one_out", "temporal"] = "leave_one_out"
    max_history: int = Field(50, ge=1, le=1000)
    # protocol B (SPEC section 9): a seed puts each user's same-timestamp rows in a seeded random
    # order before ids and splits; None keeps the file order (protocol A)
    shuffle_ties: int | None = None

    @model_validator(mode="after")
    def _path_needed(self) -> "DataConfig":
        if self.source != "synthetic" and not self.path:
            raise ValueError(f"data.path is required for source '{self.source}'")
        return self


class ChannelConfig(Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_\-]+$")
    kind: str  # a key of pipeline.registry.CHANNEL_KINDS, or 'plugin'
    quota: int = Field(100, ge=1, le=10000)
    class_path: str | None = None  # 'package.module:ClassName' for kind 'plugin'
    params: dict[str, Any] = {}
    enabled: bool = True

    @model_validator(mode="after")
    def _plugin_needs_path(self) -> "ChannelConfig":
        if self.kind == "plugin" and not self.class_path:
            raise ValueError(f"channel '{self.name}': kind 'plugin' needs class_path: 'package.module:ClassName'")
        if self.kind != "plugin" and self.class_path:
            raise ValueError(f"channel '{self.name}': class_path is only for kind 'plugin'")
        return self


class PoolConfig(Strict):
    budget: int = Field(500, ge=1, le=10000)
    exclude_seen: bool = True


class StageConfig(Strict):
    kind: str = "passthrough"
    params: dict[str, Any] = {}


class EvalConfig(Strict):
    stage: Literal["valid", "test"] = "test"
    ks: list[int] = [5, 10, 20]
    channel_k: int = Field(200, ge=1)  # list length for per-channel recall@budget
    batch_size: int = Field(1024, ge=1)
    n_boot: int = Field(1000, ge=10)
    max_users: int | None = None  # evaluate a seeded sample of users (None: all)
    k_lists: int = Field(50, ge=1)  # length of the per-user top-k lists written to Parquet
    # the request time of an evaluation request AND of every ranker label-fold request: 'target' =
    # the target's timestamp (the moment the user came back; point-in-time features see everything
    # before it), 'last' = the user's last history timestamp before it (protocol B: nothing about
    # when a target happened reaches any stage)
    request_time: Literal["target", "last"] = "target"


class ArmConfig(Strict):
    """One pipeline variant for the offline A/B comparison: a channel set with quotas, a ranker,
    re-rank settings. Unset fields fall back to the run's own."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_\-+.]+$")
    channels: list[str] | None = None  # names of the run's channels (None: all enabled)
    quotas: dict[str, int] = {}
    budget: int | None = Field(None, ge=1)
    ranker: StageConfig | None = None
    rerank: StageConfig | None = None


class TrainConfig(Strict):
    """Where the heavy offline steps run: in this process, or spread over Ray workers (the
    ranker's label-fold pools and cross features, partitioned by user; same arrays either way;
    the torch channels' training under Ray Train, data parallel over `workers`)."""

    backend: Literal["local", "ray"] = "local"
    workers: int = Field(2, ge=1, le=256)  # Ray Data actors and Ray Train workers (backend: ray)
    address: str | None = None  # an existing Ray cluster (None: $RAY_ADDRESS, else a new local one sized to `workers`)
    storage: str | None = None  # Ray Train checkpoints (None: a temporary folder; a cluster needs shared storage)
    # where the torch models (two-tower, COBRA, MTGR) train and infer, unless their params say:
    # auto (a GPU where torch sees one), cpu, cuda, cuda:N; None: their own default (cpu)
    device: str | None = Field(None, pattern=r"^(auto|cpu|cuda(:\d+)?)$")


TORCH_KINDS = ("two_tower", "cobra", "mtgr")  # the built-in kinds with a torch model (train.device)


def _with_device(stage: Any, device: str) -> Any:
    """A channel or ranker config dict given `device` when it is a torch kind that names none."""
    if not isinstance(stage, dict) or stage.get("kind") not in TORCH_KINDS:
        return stage
    params = dict(stage.get("params") or {})
    params.setdefault("device", device)
    return stage | {"params": params}


class RunConfig(Strict):
    root: str = "runs"
    name: str = "run"
    seed: int = 0


class Config(Strict):
    data: DataConfig = DataConfig()
    channels: list[ChannelConfig]
    pool: PoolConfig = PoolConfig()
    ranker: StageConfig = StageConfig()
    rerank: StageConfig = StageConfig()
    eval: EvalConfig = EvalConfig()
    run: RunConfig = RunConfig()
    train: TrainConfig = TrainConfig()
    arms: list[ArmConfig] = []
    control: str | None = None  # the arm the others are compared with (default: the first arm)

    @model_validator(mode="before")
    @classmethod
    def _device_default(cls, data: Any) -> Any:
        train = data.get("train") if isinstance(data, dict) else None
        device = train.get("device") if isinstance(train, dict) else None
        if not isinstance(device, str):
            return data
        data = dict(data, channels=[_with_device(c, device) for c in data.get("channels") or []])
        if "ranker" in data:
            data["ranker"] = _with_device(data["ranker"], device)
        if data.get("arms"):
            data["arms"] = [dict(a, ranker=_with_device(a["ranker"], device)) if isinstance(a, dict) and a.get("ranker")
                            else a for a in data["arms"]]
        return data

    @model_validator(mode="after")
    def _unique_names(self) -> "Config":
        names = [c.name for c in self.channels]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"channel names must be unique, repeated: {dup}")
        if not any(c.enabled for c in self.channels):
            raise ValueError("at least one channel must be enabled")
        enabled = {c.name for c in self.channels if c.enabled}
        for arm in self.arms:
            unknown = sorted(set(arm.channels or []) - enabled) + sorted(set(arm.quotas) - enabled)
            if unknown:
                raise ValueError(f"arm '{arm.name}' names channels that are not enabled: {unknown}")
        arm_names = [a.name for a in self.arms]
        if len(set(arm_names)) != len(arm_names):
            raise ValueError(f"arm names must be unique, got {arm_names}")
        if self.control is not None and self.control not in arm_names:
            raise ValueError(f"control '{self.control}' is not an arm; arms: {arm_names}")
        return self

    def enabled_channels(self) -> list[ChannelConfig]:
        return [c for c in self.channels if c.enabled]


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def parse_config(raw: dict[str, Any], source: str = "<dict>") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"{source}: invalid configuration\n{_format_errors(err)}") from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Read a YAML config. `overrides` are dotted keys (e.g. {'eval.max_users': 500})."""
    raw = read_yaml_mapping(path, "config")
    for key, value in (overrides or {}).items():
        _set_dotted(raw, key, value)
    return _parse_checked(raw, str(path))


def apply_overrides(cfg: Config, overrides: dict[str, Any], source: str = "<config>") -> Config:
    """A copy of `cfg` with dotted overrides applied, validated again."""
    raw = cfg.model_dump(mode="json")
    for key, value in overrides.items():
        _set_dotted(raw, key, value)
    return _parse_checked(raw, source)


def _parse_checked(raw: dict[str, Any], source: str) -> Config:
    """A config from YAML or overrides: the models, then every built-in component's params
    (pipeline.params; a run folder's manifest was checked when it was trained)."""
    cfg = parse_config(raw, source)
    from pipeline.params import check_params  # the component tables sit above this module

    check_params(cfg, source)
    return cfg


def read_yaml_mapping(path: str | Path, what: str = "config") -> dict[str, Any]:
    """A YAML file whose top level is a mapping, with errors that name the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: {what} file not found")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of sections")
    return raw


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set `key` (dotted) in the raw config. A part that meets a list picks an item by its index
    (`channels.1.quota`) or by its `name` field (`channels.item2item.quota`, `arms.control.budget`)."""
    node: Any = raw
    parts = key.split(".")
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            index = _list_index(node, part, key, where)
            if last:
                node[index] = value
                return
            node = node[index]
        elif isinstance(node, dict):
            if last:
                node[part] = value
                return
            node = node.setdefault(part, {})
        else:
            raise ConfigError(f"override {key}: '{'.'.join(parts[:depth])}' is a value, not a section or list")


def _list_index(items: list, part: str, key: str, where: str) -> int:
    if part.lstrip("-").isdigit():
        index = int(part)
        if not -len(items) <= index < len(items):
            raise ConfigError(f"override {key}: {where} is out of range (the list has {len(items)} items)")
        return index % len(items)
    names = [item.get("name") if isinstance(item, dict) else None for item in items]
    if part not in names:
        known = [n for n in names if n is not None]
        raise ConfigError(f"override {key}: no item named '{part}' in that list; names: {known}")
    return names.index(part)
