"""Ray Serve deployments: thin adapters around the plain components.

Two topologies (`topology` in the serving config): split, one deployment per channel (or channel
group), ranker, re-ranker and the live-history store, the ingress calling them through handles;
fused, one `FusedIngress` deployment holding every stage (pipeline/serving/fused.py), plus the
history deployment for a local store (a Redis store is opened by each ingress replica).

Constructors get the serving config as plain data (the ingress also gets handles to the others);
the run folder arrives in `user_config` ({"run", "stamp", "fault"}), and `reconfigure` builds the
component from it (nothing fitted is pickled). A new run is therefore an in-place update: each
replica loads it in a worker thread while answering from the old one, then swaps.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import os
from typing import Any

import numpy as np
import ray
from ray import serve
from ray.serve.handle import DeploymentHandle, DeploymentResponse

from pipeline.core.types import CandidateSet, RequestBatch, Retrieved
from pipeline.serving.catalog import LiveItems, StageKey, split_key
from pipeline.serving.components import ChannelComponent, Fault, RankerComponent, RerankComponent
from pipeline.serving.config import ServeConfig
from pipeline.serving.fused import FusedService, InProcessStages
from pipeline.serving.history import AsyncStore, Event, open_store
from pipeline.serving.routes import create_app
from pipeline.serving.runview import RunView
from pipeline.serving.service import IngressState, RecommendService

log = logging.getLogger(__name__)


def _view(run_path: str, cfg: ServeConfig) -> RunView:
    return RunView.open(run_path, cfg.extra_channels)


def _run_key(user_config: dict[str, Any]) -> tuple[str, str]:
    """Which artifacts a replica should serve: the run path and its stamp (creation time and data
    fingerprint), so that a run retrained at the same path is reloaded too."""
    return str(user_config["run"]), str(user_config.get("stamp", ""))


class _Reloading:
    """Loads its component from the run named in user_config, in a worker thread (requests keep
    being answered by the current component meanwhile), then swaps it in."""

    loaded: tuple[str, str] | None = None

    async def _reload(self, user_config: dict[str, Any], build: Any) -> bool:
        key = _run_key(user_config)
        if key == self.loaded:
            return False
        self.component = await asyncio.to_thread(build, key[0])
        self.loaded = key
        return True


@serve.deployment
class ChannelDeployment(_Reloading):
    def __init__(self, serve_cfg: dict[str, Any], name: str) -> None:
        self.cfg = ServeConfig.model_validate(serve_cfg)
        self.name = name

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        threads = self.cfg.channel(self.name).threads
        await self._reload(user_config, lambda run: ChannelComponent(_view(run, self.cfg), self.name, threads))
        self.component.fault = Fault.of(user_config.get("fault"))

    async def retrieve(self, batch: RequestBatch, k: int, run: str | None = None) -> Retrieved:
        return await self.component.aretrieve(batch, k, run)


@serve.deployment
class ChannelGroupDeployment(_Reloading):
    """Several channels in one replica (`channel_groups` in the serving config): the ingress sends
    one call per request for all of them."""

    def __init__(self, serve_cfg: dict[str, Any], names: list[str]) -> None:
        self.cfg = ServeConfig.model_validate(serve_cfg)
        self.names = list(names)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        threads = max(self.cfg.channel(n).threads for n in self.names)
        await self._reload(user_config, lambda run: {n: ChannelComponent(_view(run, self.cfg), n, threads) for n in self.names})
        faults = user_config.get("faults") or {}
        for name, component in self.component.items():
            component.fault = Fault.of(faults.get(name))

    async def retrieve_group(self, names: list[str], batch: RequestBatch, ks: dict[str, int], run: str | None = None
                             ) -> dict[str, Retrieved | Exception]:
        """Each asked channel's answer, or the exception it raised (the ingress drops that one)."""
        out: dict[str, Retrieved | Exception] = {}
        for name in names:
            try:
                out[name] = await self.component[name].aretrieve(batch, ks[name], run)
            except Exception as err:  # one channel's failure must not take the group's others down
                out[name] = err
        return out


@serve.deployment
class RankerDeployment(_Reloading):
    def __init__(self, serve_cfg: dict[str, Any]) -> None:
        self.cfg = ServeConfig.model_validate(serve_cfg)
        self.score.set_max_batch_size(self.cfg.ranker.max_batch_size)
        self.score.set_batch_wait_timeout_s(self.cfg.ranker.batch_wait_timeout_s)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        await self._reload(user_config, lambda run: RankerComponent(_view(run, self.cfg), self.cfg, self.cfg.ranker.threads))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def score(
        self, arms: list[str], batches: list[RequestBatch], pools: list[CandidateSet], runs: list[str | None]
    ) -> list[np.ndarray | None]:
        await self.component.sync(runs)
        return self.component.score_many(arms, batches, pools, runs)


@serve.deployment
class RerankDeployment(_Reloading):
    def __init__(self, serve_cfg: dict[str, Any]) -> None:
        self.cfg = ServeConfig.model_validate(serve_cfg)
        self.rerank.set_max_batch_size(self.cfg.reranker.max_batch_size)
        self.rerank.set_batch_wait_timeout_s(self.cfg.reranker.batch_wait_timeout_s)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        await self._reload(user_config, lambda run: RerankComponent(_view(run, self.cfg), self.cfg, self.cfg.reranker.threads))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def rerank(
        self, arms: list[str], batches: list[RequestBatch], pools: list[CandidateSet], ks: list[int], runs: list[str | None]
    ) -> list[CandidateSet | None]:
        await self.component.sync(runs)
        return self.component.rerank_many(arms, batches, pools, ks, runs)


@serve.deployment
class HistoryDeployment:
    """The live history store (`pipeline.serving.history`) for every ingress replica: one replica
    owning a local folder, or any number in front of Redis. Opened once, at the first run it is
    given: a rolling update to a new run keeps the same store (events are keyed by original ids)."""

    def __init__(self, serve_cfg: dict[str, Any]) -> None:
        self.cfg = ServeConfig.model_validate(serve_cfg)
        self.store: AsyncStore | None = None

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        if self.store is None:
            self.store = AsyncStore(await asyncio.to_thread(open_store, self.cfg.history, user_config["run"]))

    async def recent(self, user_id: str, limit: int) -> list[tuple[int, str]]:
        return await self.store.history(user_id, limit)

    async def add(self, events: list[Event]) -> tuple[int, int]:
        return await self.store.add_events(events)

    async def unavailable(self) -> set[str]:
        return await self.store.unavailable()

    async def set_available(self, item_ids: list[str], available: bool) -> None:
        await self.store.set_available(item_ids, available)

    async def add_items(self, records: list[dict]) -> int:
        return await self.store.add_items(records)

    async def items(self, start: int) -> list[dict]:
        return await self.store.live_items(start)

    def __del__(self) -> None:
        if getattr(self, "store", None) is not None:
            self.store.close()


async def _await(response: DeploymentResponse) -> Any:
    """Await a handle call; if the caller gives up (budget), cancel the call too."""
    try:
        return await response
    except asyncio.CancelledError:
        response.cancel()
        raise


def _transport(handle: DeploymentHandle, grpc: bool) -> DeploymentHandle:
    try:
        return handle.options(_by_reference=not grpc)
    except (TypeError, ValueError):  # a Serve without the option: its default transport
        return handle


class HandleBackends:
    """`service.Backends` over deployment handles."""

    def __init__(self, channels: dict[str, DeploymentHandle], ranker: DeploymentHandle, reranker: DeploymentHandle,
                 history: DeploymentHandle | None = None, groups: dict[str, DeploymentHandle] | None = None,
                 group_of: dict[str, str] | None = None) -> None:
        # handles are built in the driver, with its defaults; this replica's environment decides
        # (ray.env in the serving config): gRPC between deployments, or Ray object references
        grpc = os.environ.get("RAY_SERVE_USE_GRPC_BY_DEFAULT") == "1"
        self.channels = {name: _transport(h, grpc) for name, h in channels.items()}
        self.ranker = _transport(ranker, grpc) if ranker is not None else None  # None: the fused topology
        self.reranker = _transport(reranker, grpc) if reranker is not None else None
        self.store = history
        self.groups = {name: _transport(h, grpc) for name, h in (groups or {}).items()}
        self.group_of = dict(group_of or {})
        self._live_ref: tuple[int, Any] | None = None  # (catalog version, object reference of its records)

    async def retrieve_group(self, group: str, names: list[str], batch: RequestBatch, ks: dict[str, int], run: str
                             ) -> dict[str, Retrieved | Exception]:
        return await _await(self.groups[group].retrieve_group.remote(names, batch, ks, self._wire(run)))

    async def history(self, user_id: str, limit: int) -> list[tuple[int, str]]:
        return await _await(self.store.recent.remote(user_id, limit))

    async def add_events(self, events: list[Event]) -> tuple[int, int]:
        return await _await(self.store.add.remote(events))

    async def unavailable(self) -> set[str]:
        return await _await(self.store.unavailable.remote())

    async def set_available(self, item_ids: list[str], available: bool) -> None:
        await _await(self.store.set_available.remote(item_ids, available))

    async def add_items(self, records: list[dict]) -> int:
        return await _await(self.store.add_items.remote(records))

    async def live_items(self, start: int) -> list[dict]:
        return await _await(self.store.items.remote(start))

    def _wire(self, run: StageKey | str) -> StageKey | str:
        """The live items as one object reference, put once per catalog version (not the records
        themselves in every call)."""
        fingerprint, live = split_key(run)
        if live is None or live.records is None:
            return run
        if self._live_ref is None or self._live_ref[0] != live.version:
            self._live_ref = (live.version, ray.put(live.records))
        return StageKey(fingerprint, LiveItems(live.version, None, self._live_ref[1]))

    async def retrieve(self, channel: str, batch: RequestBatch, k: int, run: str) -> Retrieved:
        return await _await(self.channels[channel].retrieve.remote(batch, k, self._wire(run)))

    async def score(self, arm: str, batch: RequestBatch, pool: CandidateSet, run: str) -> np.ndarray | None:
        return await _await(self.ranker.score.remote(arm, batch, pool, self._wire(run)))

    async def rerank(self, arm: str, batch: RequestBatch, pool: CandidateSet, k: int, run: str) -> CandidateSet | None:
        return await _await(self.reranker.rerank.remote(arm, batch, pool, k, self._wire(run)))


class _IngressBase:
    """What both ingress deployments share: load a run in a worker thread and swap it in (first
    start or rolling update; requests already running finish on the previous run's state), then
    warm up; the HTTP app over the service."""

    service: RecommendService
    cfg: ServeConfig
    loaded: tuple[str, str] | None = None

    def _install(self, view: RunView) -> IngressState | None:
        return self.service.swap(IngressState.build(view, self.cfg))

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        key = _run_key(user_config)
        if key == self.loaded:
            return
        old = await asyncio.to_thread(lambda: self._install(_view(key[0], self.cfg)))
        self.loaded = key
        gc.collect()
        gc.freeze()  # the loaded run is long-lived: later collections skip it (no pauses that scan it)
        if old is not None:
            old.close()
            return
        try:  # first calls through fresh handles are slow: pay for them before traffic arrives
            await asyncio.wait_for(self.service.warmup(), timeout=30.0)
        except Exception as err:
            log.warning("ingress warm-up incomplete: %s", err)

    def __serve_build_asgi_app__(self) -> Any:
        return create_app(self.service, self.cfg.limits.max_body_bytes)

    def __del__(self) -> None:
        if getattr(self, "service", None) is not None:
            self.service.close()


@serve.deployment
@serve.ingress()
class Ingress(_IngressBase):
    """The split topology's ingress: every stage is another deployment, called through handles."""

    def __init__(
        self, serve_cfg: dict[str, Any], channels: dict[str, DeploymentHandle], ranker: DeploymentHandle,
        reranker: DeploymentHandle, history: DeploymentHandle | None = None,
        groups: dict[str, DeploymentHandle] | None = None, group_of: dict[str, str] | None = None,
    ) -> None:
        self.cfg = ServeConfig.model_validate(serve_cfg)
        backends = HandleBackends(channels, ranker, reranker, history, groups, group_of)
        self.service = RecommendService(None, backends, self.cfg)


@serve.deployment
@serve.ingress()
class FusedIngress(_IngressBase):
    """The fused topology's ingress (`pipeline.serving.fused`): every stage in this replica,
    concurrent requests computed as one batch; only the history store is another deployment."""

    def __init__(self, serve_cfg: dict[str, Any], history: DeploymentHandle | None = None) -> None:
        self.cfg = ServeConfig.model_validate(serve_cfg)
        if self.cfg.history.backend == "redis":  # every replica talks to Redis itself: no history hop
            backends: Any = AsyncStore(open_store(self.cfg.history, ""))
        else:  # the local folder has one owner, the history deployment
            backends = HandleBackends({}, None, None, history)
        self.service = FusedService(backends, self.cfg)

    def _install(self, view: RunView) -> IngressState | None:
        return self.service.install(IngressState.build(view, self.cfg), InProcessStages(view, self.cfg))

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        await super().reconfigure(user_config)
        faults = user_config.get("faults") or {}  # drills: applied in place, like the split channels'
        for name, component in self.service.stages[id(self.service.state)].channels.items():
            component.fault = Fault.of(faults.get(name))
