"""CobraConfig: every parameter of the COBRA channel in one typed object (issue 18).

The channel receives this one object and hands each part its own nested config as is: `encoder`
(content vectors), `ids` (the semantic-ID tokenizer), `items` (item features), `model` (the
transformer), `train` (the training loop), `beam` (beam search and BeamFusion), `ann` (the faiss
index). A new parameter is one field in the config of the part that reads it, plus its use.

Configs may also be written flat, as they were before the parts were nested (`fusion_tau: 1.0`
instead of `beam: {tau: 1.0}`): a flat key sets the field of that name in the one part that has
it, and RENAMED lists the flat names that differ from the part's field name. A few fields are not
set by hand because fitting derives them (DERIVED: the seeds, TIGER's disambiguation level from the
mode, the training window from `model.max_len`, progress bars from the top-level switch).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, is_dataclass, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from channels.cobra.beam import BeamConfig
from channels.cobra.catalog import IndexConfig
from channels.cobra.encoder import EncoderConfig
from channels.cobra.model import ModelConfig
from channels.cobra.semantic_ids import IdConfig
from channels.cobra.train import TrainConfig


@dataclass(frozen=True)
class ModelParams:
    """The transformer's hyper-parameters; ModelConfig adds what fitting derives (sizes, widths)."""

    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    d_ff: int = 256
    max_len: int = 50  # history items the model reads (and the training windows' length)
    dropout: float = 0.2
    dense_dim: int = 64
    id_embedding: bool = False  # the item encoder also learns an item-id embedding
    dense_levels: int | None = None  # ID levels the dense head is conditioned on (None: all)
    dense_head: str = "identity"
    item_head: str = "linear"
    embed_std: float | None = None
    tied_input: bool = False
    dense_cond: str = "shared"

    def build(self, *, code_sizes: tuple[int, ...], n_tokens: int, content_dim: int, n_price: int, n_items: int,
              dense: bool) -> ModelConfig:
        own = {k: v for k, v in asdict(self).items() if k != "id_embedding"}
        return ModelConfig(code_sizes=code_sizes, n_tokens=n_tokens, content_dim=content_dim, n_price=n_price,
                           n_items=n_items if self.id_embedding else 0, dense=dense, **own)


@dataclass(frozen=True)
class ItemParams:
    """The item side: per-item features and optional external collaborative vectors."""

    max_tokens: int = 32  # title/description tokens per item
    price_buckets: int = 10
    collab_vectors_path: str | None = None  # a .npy of item vectors replacing the co-visitation ones


PARTS: dict[str, type] = {"encoder": EncoderConfig, "ids": IdConfig, "items": ItemParams, "model": ModelParams,
                          "train": TrainConfig, "beam": BeamConfig, "ann": IndexConfig}
DERIVED = {"encoder": {"seed"}, "ids": {"seed", "disambiguate"}, "train": {"seed", "max_len", "progress"}}
RENAMED = {  # flat name -> (part, field)
    "fusion_tau": ("beam", "tau"), "fusion_psi": ("beam", "psi"), "fusion_sparse_weight": ("beam", "sparse_weight"),
    "fusion_dense_weight": ("beam", "dense_weight"), "dense_loss_weight": ("train", "dense_weight"),
    "sparse_loss_weight": ("train", "sparse_weight"), "max_train_seconds": ("train", "max_seconds"),
    "index": ("ann", "kind"),
}


def _flat_names() -> dict[str, tuple[str, str]]:
    """Every flat key -> (part, field): the part's own field names, then the renamed ones."""
    out: dict[str, tuple[str, str]] = dict(RENAMED)
    renamed = set(RENAMED.values())
    for part, cls in PARTS.items():
        for f in fields(cls):
            if f.name not in DERIVED.get(part, ()) and (part, f.name) not in renamed:
                assert f.name not in out, f"flat name {f.name!r} is in two parts: rename one in RENAMED"
                out[f.name] = (part, f.name)
    return out


class CobraConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["cobra", "cobra_sparse", "tiger"] = Field("cobra", description="which parts: see channels/cobra/parts.py")
    encoder: EncoderConfig = EncoderConfig(collab="covisit")
    ids: IdConfig = IdConfig()
    items: ItemParams = ItemParams()
    model: ModelParams = ModelParams()
    train: TrainConfig = TrainConfig(temperature=1.0, negatives="full", similarity="dot", dense_condition="sampled")
    beam: BeamConfig = BeamConfig()
    ann: IndexConfig = IndexConfig()
    cold_quota: int = Field(0, description="last places of an answer kept for items without interactions")
    valid_users: int | None = Field(5000, description="users of the early-stopping evaluation (None: all)")
    refit: bool = Field(False, description="retrain on the full history for the best epoch count")
    num_threads: int | None = Field(2, description="torch threads (None: torch's default)")
    seed: int | None = Field(None, description="None: the run's seed")
    progress: bool = True
    eval_batch_size: int = Field(1024, ge=1, description="requests per block at retrieval")
    device: str = Field("cpu", description="auto | cpu | cuda[:N]")

    @model_validator(mode="before")
    @classmethod
    def _nest_flat_keys(cls, raw: Any) -> Any:
        """Flat keys (`fusion_tau`, `lr`, ...) into their parts; unknown keys are left for the
        strict check to name."""
        if not isinstance(raw, dict):
            return raw
        top, names = set(cls.model_fields), _flat_names()
        out: dict[str, Any] = {}
        for key, value in raw.items():  # a part given as a mapping changes the channel's defaults
            if key in PARTS and isinstance(value, dict):
                out[key] = _as_dict(cls.model_fields[key].default, key) | value
            elif key in top:
                out[key] = _as_dict(value, key) if key in PARTS else value
        for key, value in raw.items():
            if key in top:
                continue
            if key not in names:
                out[key] = value  # extra: the strict check reports it
                continue
            part, name = names[key]
            nested = out.setdefault(part, _as_dict(cls.model_fields[part].default, part))
            if not isinstance(nested, dict):
                raise ValueError(f"'{key}' is a field of '{part}', which is not given as a mapping")
            nested[name] = value
        for part, derived in DERIVED.items():
            given = derived & set(out.get(part, {}) if isinstance(out.get(part), dict) else ())
            if given:
                raise ValueError(f"{part}.{sorted(given)[0]} is derived when fitting, not set (see DERIVED)")
        return out

    @model_validator(mode="after")
    def _check(self) -> "CobraConfig":
        from channels.cobra.parts import MODES

        if self.cold_quota < 0 or (self.cold_quota > 0 and not MODES[self.mode].head.dense):
            raise ValueError(f"cold_quota must be >= 0, and 0 in mode {self.mode!r} (it needs the dense vectors), "
                             f"got {self.cold_quota}")
        return self

    def with_(self, **flat: Any) -> "CobraConfig":
        """A copy with some parameters changed, given flat or by part (`beam=BeamConfig(...)`)."""
        return type(self).model_validate(self.dump() | flat)

    def get(self, key: str) -> Any:
        """One parameter by its flat name (`fusion_tau`, `beam_size`) or a top-level one."""
        if key in type(self).model_fields:
            return getattr(self, key)
        names = _flat_names()
        if key not in names:
            raise KeyError(f"no COBRA parameter named {key!r}")
        part, name = names[key]
        return getattr(getattr(self, part), name)

    def dump(self) -> dict[str, Any]:
        """JSON-ready, nested, without the derived fields: what params.json stores."""
        out = {}
        for key in type(self).model_fields:
            value = getattr(self, key)
            if is_dataclass(value):
                value = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(value).items()
                         if k not in DERIVED.get(key, ())}
            out[key] = value
        return out


def _as_dict(value: Any, part: str) -> Any:
    """A part given as an object or a mapping becomes a new mapping of its fields (an object's
    derived fields dropped), so that flat keys can be merged into it."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in fields(value) if f.name not in DERIVED.get(part, ())}
    return dict(value) if isinstance(value, dict) else value


def derived(cfg: CobraConfig, seed: int, unique_ids: bool) -> tuple[EncoderConfig, IdConfig, TrainConfig]:
    """The parts' configs with the fields fitting derives filled in."""
    return (replace(cfg.encoder, seed=seed), replace(cfg.ids, seed=seed, disambiguate=unique_ids),
            replace(cfg.train, seed=seed, max_len=cfg.model.max_len, progress=cfg.progress))
