"""The serving configuration (`configs/serving.yaml`): deployments, budgets, limits, A/B arms, logs.

Loaded into pydantic models that reject unknown keys, like the training config. Nothing here
imports ray: the config is checked (and arms resolved against a run) before a cluster starts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from pipeline.config import (
    ChannelConfig, ConfigError, StageConfig, Strict, _format_errors, _set_dotted, read_yaml_mapping,
)


class HttpConfig(Strict):
    host: str = "127.0.0.1"  # loopback by default; 0.0.0.0 only behind your own network controls
    port: int = Field(8000, ge=1, le=65535)
    # Serve's direct ingress: each ingress replica also answers HTTP on its own port (from
    # direct_port_from up, on `host`), without the proxy hop; a load balancer in front spreads
    # the traffic (`app.direct_urls` lists the ports). Local node only: on a cluster set
    # RAY_SERVE_ENABLE_DIRECT_INGRESS=1 for `ray start`. `port` (the proxy) keeps answering.
    direct_ingress: bool = False
    direct_port_from: int = Field(30000, ge=1024, le=64000)


class RayConfig(Strict):
    address: str | None = None  # None: our own local node ($RAY_ADDRESS, if set, is joined); 'auto' or 'HOST:6379': join a cluster
    num_cpus: int | None = None  # local node only (None: every core)
    object_store_mb: int = Field(500, ge=100)
    app_name: str = "hybridrec"
    # set in this process before a local node starts (a cluster: set them for `ray start`);
    # gRPC between deployments instead of the object store: p50 67 -> 40 ms on a busy 2-core box
    env: dict[str, str] = {"RAY_SERVE_USE_GRPC_BY_DEFAULT": "1"}


class Limits(Strict):
    """Request size limits: anything above is a 4xx with a message."""

    max_k: int = Field(100, ge=1, le=1000)
    max_history: int = Field(200, ge=1, le=10000)
    max_body_bytes: int = Field(65536, ge=1024)
    max_context_keys: int = Field(16, ge=0)
    max_id_length: int = Field(256, ge=1)
    max_events: int = Field(1000, ge=1, le=100000)  # events per POST /events
    max_items: int = Field(1000, ge=1, le=100000)  # item records per POST /items


class Autoscaling(Strict):
    """Ray Serve's autoscaling_config for one deployment (replaces the fixed `replicas`)."""

    min_replicas: int = Field(1, ge=0, le=64)
    max_replicas: int = Field(2, ge=1, le=64)
    target_ongoing_requests: float = Field(2.0, gt=0.0)
    upscale_delay_s: float = Field(30.0, ge=0.0)
    downscale_delay_s: float = Field(600.0, ge=0.0)

    @model_validator(mode="after")
    def _bounds(self) -> "Autoscaling":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"autoscaling: min_replicas {self.min_replicas} > max_replicas {self.max_replicas}")
        return self


class DeploymentConfig(Strict):
    """Ray Serve knobs of one deployment. Fractional CPUs: 2-core machines fit every replica."""

    replicas: int = Field(1, ge=1, le=64)
    num_cpus: float = Field(0.25, ge=0.0, le=64.0)
    num_gpus: float = Field(0.0, ge=0.0, le=16.0)  # e.g. 0.5 for a two-tower / COBRA channel on a GPU node
    max_ongoing_requests: int = Field(32, ge=1, le=10000)
    threads: int = Field(1, ge=1, le=64)  # torch / faiss / BLAS threads inside the replica
    autoscaling: Autoscaling | None = None  # None: `replicas` fixed replicas
    # placement on a cluster: custom node resources a replica needs (e.g. {"head": 0.01} with
    # `ray start --resources='{"head": 1}'` keeps it on that node), and a cap per node that
    # spreads replicas so one node's loss leaves the others serving
    resources: dict[str, float] = {}
    max_replicas_per_node: int | None = Field(None, ge=1, le=100)


class FaultConfig(Strict):
    """Fault injection for drills and benchmarks; applied in place (Ray Serve user_config)."""

    delay_ms: float = Field(0.0, ge=0.0, le=60000.0)
    error_rate: float = Field(0.0, ge=0.0, le=1.0)


class ChannelDeploymentConfig(DeploymentConfig):
    budget_ms: float = Field(50.0, gt=0.0, le=60000.0)  # past this, the channel is dropped for the request
    fault: FaultConfig = FaultConfig()


class BatchedDeploymentConfig(DeploymentConfig):
    budget_ms: float = Field(200.0, gt=0.0, le=60000.0)
    max_batch_size: int = Field(16, ge=1, le=1024)
    batch_wait_timeout_s: float = Field(0.002, ge=0.0, le=1.0)


class HistoryConfig(DeploymentConfig):
    """The live history store (POST /events) and its deployment (every ingress replica calls it)."""

    backend: Literal["local", "redis", "off"] = "local"
    dir: str | None = None  # local backend folder (None: <first served run>/serve_history); keep it across runs
    redis_url: str = "redis://127.0.0.1:6379/0"
    prefix: str = Field("hybridrec", min_length=1, max_length=64)  # Redis key prefix
    timeout_ms: float = Field(200.0, gt=0.0, le=60000.0)  # Redis socket timeout
    budget_ms: float = Field(50.0, gt=0.0, le=60000.0)  # a /recommend waits this long for the stored events
    snapshot_every: int = Field(10000, ge=1)
    catalog_ttl_s: float = Field(1.0, ge=0.0, le=3600.0)  # how long an ingress replica reuses the catalog state it read
    max_live_items: int = Field(10000, ge=0, le=1000000)  # item records kept since training; beyond: 409, retrain
    num_cpus: float = Field(0.1, ge=0.0, le=64.0)

    @model_validator(mode="after")
    def _one_owner(self) -> "HistoryConfig":
        if self.backend == "local" and (self.replicas > 1 or self.autoscaling is not None):
            raise ValueError("history: the local backend is one process's folder, so it runs one replica; "
                             "use backend: redis to scale it")
        return self


class ChannelGroupConfig(DeploymentConfig):
    """Several cheap channels in one deployment: one call per request for all of them instead of
    one each (their budgets stay per channel). Names the run does not serve are skipped."""

    channels: list[str] = Field(min_length=1)


class IngressConfig(DeploymentConfig):
    max_ongoing_requests: int = Field(64, ge=1, le=10000)
    max_batch_size: int = Field(32, ge=1, le=1024)  # fused topology: requests computed together at most


class ArmConfig(Strict):
    """One arm of an online experiment: anything left out is the run's own setting."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-.]+$")
    weight: float = Field(gt=0.0)
    channels: list[str] | None = None  # a subset of the served channels
    quotas: dict[str, int] = {}
    budget: int | None = Field(None, ge=1, le=10000)  # pool budget
    ranker: StageConfig | None = None
    rerank: StageConfig | None = None


class ExperimentConfig(Strict):
    name: str = Field(min_length=1, max_length=64)
    salt: str = Field(min_length=1)
    arms: list[ArmConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_arms(self) -> "ExperimentConfig":
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"experiment '{self.name}': arm names must be unique, got {names}")
        return self


class LogConfig(Strict):
    dir: str | None = None  # None: <run>/serve_logs
    rotate_mb: float = Field(16.0, gt=0.0)
    queue_size: int = Field(10000, ge=1)


class ShutdownConfig(Strict):
    graceful_wait_s: float = Field(0.1, ge=0.0)
    graceful_timeout_s: float = Field(10.0, ge=0.0)  # only used while requests are still running


class ServeConfig(Strict):
    # split: one deployment per channel, ranker and re-ranker (per-stage replicas, budgets, drills);
    # fused: every stage inside each ingress replica, concurrent requests batched (pipeline/serving/fused.py)
    topology: Literal["split", "fused"] = "split"
    http: HttpConfig = HttpConfig()
    ray: RayConfig = RayConfig()
    limits: Limits = Limits()
    ingress: IngressConfig = IngressConfig()
    channel_defaults: ChannelDeploymentConfig = ChannelDeploymentConfig()
    channels: dict[str, ChannelDeploymentConfig] = {}  # per channel name, replaces the defaults
    channel_groups: dict[str, ChannelGroupConfig] = {}  # group name -> channels served by one deployment
    ranker: BatchedDeploymentConfig = BatchedDeploymentConfig()
    reranker: BatchedDeploymentConfig = BatchedDeploymentConfig(max_batch_size=1)
    history: HistoryConfig = HistoryConfig()
    extra_channels: list[ChannelConfig] = []  # e.g. an `http` channel added at serve time
    experiment: ExperimentConfig | None = None
    logging: LogConfig = LogConfig()
    shutdown: ShutdownConfig = ShutdownConfig()

    @property
    def history_deployment(self) -> bool:
        """Whether the app runs a `history` deployment (a fused ingress on Redis opens the store itself)."""
        return self.history.backend != "off" and not (self.topology == "fused" and self.history.backend == "redis")

    def channel(self, name: str) -> ChannelDeploymentConfig:
        return self.channels.get(name, self.channel_defaults)

    def groups_of(self, served: list[str] | tuple[str, ...]) -> dict[str, list[str]]:
        """group -> its channels that `served` holds (groups left empty are dropped)."""
        out = {g: [c for c in cfg.channels if c in served] for g, cfg in self.channel_groups.items()}
        return {g: names for g, names in out.items() if names}

    @model_validator(mode="after")
    def _fused_has_no_groups(self) -> "ServeConfig":
        if self.topology == "fused" and self.channel_groups:
            raise ValueError("channel_groups: the fused topology already runs every channel in the ingress; "
                             "remove channel_groups or use topology: split")
        return self

    @model_validator(mode="after")
    def _groups_disjoint(self) -> "ServeConfig":
        seen: dict[str, str] = {}
        for group, cfg in self.channel_groups.items():
            for name in cfg.channels:
                if name in seen:
                    raise ValueError(f"channel_groups: channel '{name}' is in both '{seen[name]}' and '{group}'")
                seen[name] = group
        return self


def parse_serve_config(raw: dict[str, Any], source: str = "<dict>") -> ServeConfig:
    try:
        return ServeConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"{source}: invalid serving configuration\n{_format_errors(err)}") from None


def load_serve_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> ServeConfig:
    """Read a serving YAML (None: all defaults); `overrides` are dotted keys like 'http.port'."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_yaml_mapping(path, "serving config")
    for key, value in (overrides or {}).items():
        _set_dotted(raw, key, value)
    return parse_serve_config(raw, str(path or "<defaults>"))
