"""Build the Ray Serve application from a run folder and a `ServeConfig`; start, update, stop it.

    app = build_app("runs/quickstart-...", cfg)      # one deployment per channel, ranker, re-ranker, ingress
                                                      # (topology: fused: the ingress holds every stage)
    url = start(run, cfg)                             # local Ray node (or cfg.ray.address), HTTP on 127.0.0.1
    update(new_run, cfg)                              # rolling update of the running app to new artifacts
    stop()

Ray settings that matter on small machines (see docs of the project's environment): fractional
CPUs per replica, raised max_ongoing_requests, short graceful shutdown, access logs off, token
auth off and a loopback node address for local runs.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Iterable

import ray
from pydantic import BaseModel, ConfigDict, ValidationError
from ray import serve
from ray.serve import Application

from pipeline.config import ConfigError
from pipeline.core.raystart import start_or_join
from pipeline.resources import SERVING_CONFIG
from pipeline.serving.config import DeploymentConfig, ServeConfig, load_serve_config
from pipeline.serving.deployments import (
    ChannelDeployment, ChannelGroupDeployment, FusedIngress, HistoryDeployment, Ingress, RankerDeployment,
    RerankDeployment,
)
from pipeline.serving.runview import RunView

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
LOCAL_ENV = {
    "RAY_AUTH_MODE": "disabled",  # 2.60 turns token auth on by default
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # makes the local node address 127.0.0.1
    "RAY_USAGE_STATS_ENABLED": "0",
}


def _options(d: DeploymentConfig, cfg: ServeConfig, name: str, **extra: Any) -> dict[str, Any]:
    actor: dict[str, Any] = {"num_cpus": d.num_cpus} | ({"num_gpus": d.num_gpus} if d.num_gpus else {})
    actor |= {"resources": dict(d.resources)} if d.resources else {}
    scale: dict[str, Any] = {"num_replicas": d.replicas}
    if d.autoscaling is not None:
        scale = {"num_replicas": "auto", "autoscaling_config": d.autoscaling.model_dump()}
    if d.max_replicas_per_node is not None:
        scale["max_replicas_per_node"] = d.max_replicas_per_node
    return dict(
        name=name, max_ongoing_requests=d.max_ongoing_requests, ray_actor_options=actor,
        graceful_shutdown_wait_loop_s=cfg.shutdown.graceful_wait_s,
        graceful_shutdown_timeout_s=cfg.shutdown.graceful_timeout_s, **scale, **extra,
    )


def check(run_path: str | Path, cfg: ServeConfig) -> RunView:
    """Open the run and resolve the config against it (unknown channels, arms) before any Ray work."""
    from pipeline.serving.ab import ArmTable

    view = RunView.open(run_path, cfg.extra_channels)
    served = view.channel_configs()
    unknown = sorted(set(cfg.channels) - set(served))
    if unknown:
        raise ConfigError(f"serving config: channels {unknown} are not in the run {run_path}; served: {sorted(served)}")
    table = ArmTable(cfg.experiment, view.config, served)
    for arm, ranker in table.stage_configs("ranker").items():  # a ranker no replica could load fails here
        try:
            view.build_ranker(ranker)
        except ConfigError as err:
            raise ConfigError(f"serving config: experiment arm '{arm}': {err}") from None
    return view


def _init_args(cfg: ServeConfig) -> dict[str, Any]:
    """The config handed to constructors, without the fault settings: those travel as user_config
    only, so changing them reconfigures channel replicas in place instead of restarting the app."""
    raw = cfg.model_dump(mode="json")
    for section in [raw["channel_defaults"], *raw["channels"].values()]:
        section.pop("fault", None)
    return raw


def code_version(raw: dict[str, Any]) -> str:
    """What replicas are constructed from: the serving config and code. Serve restarts replicas
    (rolling) only when this changes. The run folder and the fault settings travel in user_config:
    a new run or a fault is applied in place by every replica (`reconfigure`), without restarts."""
    digest = hashlib.sha256(json.dumps(raw, sort_keys=True).encode())
    for source in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def _versioned(deployment: Any, version: str | None) -> Any:
    if version is None:
        return deployment
    # Serve's Python API gives every deploy a random version (so every update restarts every
    # replica); the version is still settable internally, which is what config-file deploys use.
    try:
        return deployment.options(version=version, _internal=True)
    except (TypeError, ValueError):  # a Serve without the internal option: restarts on every update
        return deployment


def build_app(run_path: str | Path, cfg: ServeConfig, view: RunView | None = None, pin_versions: bool = True) -> Application:
    """The application. `pin_versions` (the `hybridrec serve` path) sets each deployment's version
    from the config and code, so a rolling update to a new run reconfigures replicas in place;
    Serve's own tooling (`app` below, config files) versions deployments itself."""
    view = view or check(run_path, cfg)
    raw = _init_args(cfg)
    version = code_version(raw) if pin_versions else None
    run = {"run": str(Path(run_path).resolve()), "stamp": f"{view.manifest.get('created')}|{view.fingerprint}"}

    def opts(d: DeploymentConfig, name: str, **user: Any) -> dict[str, Any]:
        return _options(d, cfg, name, user_config=run | user)

    history = None
    if cfg.history_deployment:
        history = _versioned(HistoryDeployment.options(**opts(cfg.history, "history")), version).bind(raw)
    if cfg.topology == "fused":  # a fused ingress on Redis opens the store itself
        faults = {n: cfg.channel(n).fault.model_dump() for n in view.channel_configs()}
        return _versioned(FusedIngress.options(**opts(cfg.ingress, "ingress", faults=faults)), version).bind(raw, history)
    groups = cfg.groups_of(tuple(view.channel_configs()))
    group_of = {name: group for group, names in groups.items() for name in names}
    channels = {
        name: _versioned(ChannelDeployment.options(**opts(cfg.channel(name), f"channel-{name}", fault=cfg.channel(name).fault.model_dump())),
                         version).bind(raw, name)
        for name in view.channel_configs() if name not in group_of
    }
    group_apps = {
        group: _versioned(ChannelGroupDeployment.options(**opts(cfg.channel_groups[group], f"channels-{group}",
                                                                 faults={n: cfg.channel(n).fault.model_dump() for n in names})),
                          version).bind(raw, names)
        for group, names in groups.items()
    }
    ranker = _versioned(RankerDeployment.options(**opts(cfg.ranker, "ranker")), version).bind(raw)
    reranker = _versioned(RerankDeployment.options(**opts(cfg.reranker, "reranker")), version).bind(raw)
    ingress = _versioned(Ingress.options(**opts(cfg.ingress, "ingress")), version)
    return ingress.bind(raw, channels, ranker, reranker, history, group_apps, group_of)


class AppArgs(BaseModel):
    """The arguments of the application builder (`serve run pipeline.serving.app:app run=DIR`)."""

    model_config = ConfigDict(extra="forbid")

    run: str  # a run folder from `hybridrec train`
    config: str | None = None  # serving config YAML (None: configs/serving.yaml when present, else defaults)


def app(args: AppArgs | dict[str, Any]) -> Application:
    """Application builder for Ray Serve's tooling: `serve run`, `serve build`, `serve deploy` and
    KubeRay's RayService start the same deployments as `hybridrec serve` (docs/serving.md). The
    HTTP host/port and Ray settings of the serving config do not apply there: the Serve config
    file's `http_options` and the cluster decide."""
    try:  # Serve hands a dict over (it reads the annotation as a string under postponed annotations)
        args = args if isinstance(args, AppArgs) else AppArgs.model_validate(args)
    except ValidationError as err:
        raise ConfigError(f"application args: {err.errors()[0]['loc']}: {err.errors()[0]['msg']}; "
                          "expected run=<run folder> [config=<serving YAML>]") from None
    path = args.config if args.config is not None else (str(SERVING_CONFIG) if SERVING_CONFIG.is_file() else None)
    cfg = load_serve_config(path)
    init_ray_env(cfg)
    return build_app(args.run, cfg, pin_versions=False)


DIRECT_PORTS = 64  # ports tried per direct-ingress range
_DIRECT_ENV: dict[str, str | None] = {}  # what init_ray_env set for direct ingress, and the values before


def _restore_direct_env() -> None:
    """Undo what init_ray_env set for direct ingress (the next node this process starts, or a
    `serve` command it runs, gets Serve's defaults)."""
    for key, before in _DIRECT_ENV.items():
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before
    _DIRECT_ENV.clear()


def init_ray_env(cfg: ServeConfig) -> None:
    """Replicas import the project and see the serving config's environment."""
    for key, value in {**LOCAL_ENV, **cfg.ray.env}.items():
        os.environ.setdefault(key, value)
    _restore_direct_env()
    if cfg.http.direct_ingress:  # read by the Serve controller and replicas a local node starts
        first = cfg.http.direct_port_from
        settings = {
            "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(first), "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(first + DIRECT_PORTS),
            "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(first + DIRECT_PORTS + 1),
            "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(first + 2 * DIRECT_PORTS + 1),
            # Serve keeps a draining direct replica up 30 s for outside load balancers to notice
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(max(cfg.shutdown.graceful_wait_s, 0.5)),
        }
        _DIRECT_ENV.update({key: os.environ.get(key) for key in settings})
        os.environ.update(settings)
    paths = [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))


def init_ray(cfg: ServeConfig, log_to_driver: bool = False) -> str | None:
    """Join `ray.address` (or $RAY_ADDRESS), else start a local instance sized by `ray`; returns
    the cluster address joined (None: a local instance; the configured address when Ray was
    already up in this process)."""
    init_ray_env(cfg)
    if not log_to_driver:
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
    if ray.is_initialized():
        return cfg.ray.address
    return start_or_join(cfg.ray.address, num_cpus=cfg.ray.num_cpus, object_store_memory=cfg.ray.object_store_mb << 20,
                         include_dashboard=False, log_to_driver=log_to_driver, logging_level=logging.WARNING)


def direct_urls(cfg: ServeConfig, timeout_s: float = 60.0, replicas: int | None = None) -> list[str]:
    """The base URLs of the ingress replicas' own HTTP servers (direct ingress), found by asking
    /healthz on the configured port range; waits until `replicas` (default: the ingress's) answer."""
    import requests

    want = replicas or (cfg.ingress.autoscaling.min_replicas if cfg.ingress.autoscaling else cfg.ingress.replicas)
    first = cfg.http.direct_port_from
    deadline = time.time() + timeout_s
    while True:
        found = []
        for port in range(first, first + DIRECT_PORTS):
            url = f"http://{cfg.http.host}:{port}"
            try:
                if requests.get(f"{url}/healthz", timeout=0.5).status_code == 200:
                    found.append(url)
            except requests.RequestException:
                continue
        if len(found) >= want or time.time() > deadline:
            if not found:
                raise RuntimeError(f"no ingress replica answers on ports {first}-{first + DIRECT_PORTS - 1}; "
                                   "is http.direct_ingress on and the app running on a local node?")
            return found
        time.sleep(0.5)


def cpu_demand(cfg: ServeConfig, channels: Iterable[str]) -> dict[str, float]:
    """CPUs each deployment reserves at start (replicas, or autoscaling's min_replicas, x num_cpus)."""
    def need(d: DeploymentConfig) -> float:
        return (d.autoscaling.min_replicas if d.autoscaling is not None else d.replicas) * d.num_cpus

    channels = tuple(channels) if cfg.topology == "split" else ()  # fused: every stage inside the ingress
    groups = cfg.groups_of(channels)
    grouped = {n for names in groups.values() for n in names}
    demand = {f"channel-{name}": need(cfg.channel(name)) for name in channels if name not in grouped}
    demand.update({f"channels-{group}": need(cfg.channel_groups[group]) for group in groups})
    stages = (("ranker", cfg.ranker), ("reranker", cfg.reranker)) if cfg.topology == "split" else ()
    for name, d in (*stages, ("ingress", cfg.ingress)):
        demand[name] = need(d)
    if cfg.history_deployment:
        demand["history"] = need(cfg.history)
    return demand


def check_cpus(demand: dict[str, float], available: float) -> None:
    """Ray never schedules a replica that does not fit and Serve then waits forever: refuse up front."""
    total = sum(demand.values())
    if total > available + 1e-9:
        parts = ", ".join(f"{k} {v:g}" for k, v in demand.items())
        raise ConfigError(
            f"serving config: the deployments reserve {total:g} CPUs ({parts}) but the Ray node has {available:g}; "
            "lower num_cpus (or replicas) in channel_defaults / channels / ranker / reranker / ingress, "
            "or raise ray.num_cpus")


def start(run_path: str | Path, cfg: ServeConfig, log_to_driver: bool = False) -> str:
    """Start (or join) Ray, start Serve on cfg.http, deploy the app; returns its base URL."""
    view = check(run_path, cfg)
    app = build_app(run_path, cfg, view)
    started = not ray.is_initialized()
    joined = init_ray(cfg, log_to_driver)
    if not joined:  # a cluster may add nodes; a local node never does
        try:
            check_cpus(cpu_demand(cfg, view.channel_configs()), float(ray.cluster_resources().get("CPU", 0.0)))
        except ConfigError:
            if started:
                ray.shutdown()
            raise
    serve.start(http_options={"host": cfg.http.host, "port": cfg.http.port}, proxy_location="HeadOnly",
                logging_config={"enable_access_log": False})
    serve.run(app, name=cfg.ray.app_name, route_prefix="/", logging_config={"enable_access_log": False})
    return f"http://{cfg.http.host}:{cfg.http.port}"


def update(run_path: str | Path, cfg: ServeConfig, wait_s: float = 300.0) -> None:
    """Roll the running app over to new artifacts (or a new config): Serve starts new replicas and
    drains the old ones; requests in flight finish on the old version."""
    app = build_app(run_path, cfg)
    init_ray(cfg if cfg.ray.address else cfg.model_copy(update={"ray": cfg.ray.model_copy(update={"address": "auto"})}))
    serve.run(app, name=cfg.ray.app_name, route_prefix="/", logging_config={"enable_access_log": False}, blocking=False)
    deadline = time.time() + wait_s
    while time.time() < deadline:
        status = serve.status().applications.get(cfg.ray.app_name)
        if status is not None and status.status == "RUNNING":
            return
        time.sleep(0.5)
    raise TimeoutError(f"application {cfg.ray.app_name} not RUNNING after {wait_s}s")


def stop(shutdown_ray: bool = True) -> None:
    try:
        serve.shutdown()
    finally:
        if shutdown_ray and ray.is_initialized():
            ray.shutdown()
        if shutdown_ray:
            _restore_direct_env()


def serve_forever(run_path: str | Path, cfg: ServeConfig, log_to_driver: bool = True) -> None:
    """`hybridrec serve`: start, print the URL, wait for Ctrl-C / SIGTERM, stop cleanly. On a cluster
    (cfg.ray.address set) the app is detached: deploy, print, return; `serve shutdown` removes it."""
    url = start(run_path, cfg, log_to_driver)
    print(f"serving {run_path} at {url}  (POST /recommend, GET /healthz /channels /metrics /docs)")
    if cfg.http.direct_ingress and not cfg.ray.address:
        print("ingress replicas answer directly (no proxy hop; balance over them): " + " ".join(direct_urls(cfg)))
    if cfg.ray.address:
        print("deployed on the cluster (detached); remove it with `serve shutdown -a <dashboard address>`")
        return
    print("Ctrl-C stops")
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    while not done.wait(0.5):  # polled: a signal may land on one of Ray's threads, not this one
        pass
    print("stopping ...")
    stop()
