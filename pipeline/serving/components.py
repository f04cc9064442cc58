"""The plain per-stage components that the Ray deployments wrap (and `LocalBackends` calls directly).

Each is built from a run folder path (never a pickled model): a channel replica loads its one
channel, the ranker and re-ranker replicas build one stage per distinct arm setting. Batched calls
take lists (one entry per request) and group them by arm, so `@serve.batch` can hand them over.
"""
from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import StageConfig
from pipeline.core.protocols import SupportsAddItems, SupportsAddItemIds
from pipeline.core.types import CandidateSet, RequestBatch, Retrieved
from pipeline.serving.ab import ArmTable
from pipeline.serving.catalog import LiveItems, LiveSync, split_key
from pipeline.serving.config import ServeConfig
from pipeline.serving.history import AsyncStore, open_store
from pipeline.serving.runview import RunView
from pipeline.serving.service import StaleRun
from pipeline.workflow import bind_items, load_rerank_vectors

log = logging.getLogger(__name__)


def set_threads(n: int) -> None:
    """Cap torch / faiss threads in a replica (fractional-CPU replicas get OMP_NUM_THREADS=1)."""
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    if "faiss" in sys.modules:
        sys.modules["faiss"].omp_set_num_threads(n)


@dataclass(frozen=True)
class Fault:
    """Fault injection for drills and benchmarks (off by default): added latency, failure rate."""

    delay_ms: float = 0.0
    error_rate: float = 0.0

    @classmethod
    def of(cls, raw: dict[str, Any] | None) -> "Fault":
        raw = raw or {}
        return cls(float(raw.get("delay_ms", 0.0)), float(raw.get("error_rate", 0.0)))


class InjectedFault(RuntimeError):
    pass


def _stale(own: str, runs: list | None, n: int) -> list[bool]:
    """Which rows were sent by an ingress serving other data than this component's."""
    if runs is None:
        return [False] * n
    return [fp is not None and fp != own for fp in (split_key(r)[0] for r in runs)]


def _newest(own: str, runs: list | None) -> LiveItems | None:
    """The most complete live catalog among a batch's calls from this component's data (each is
    a prefix of the store's)."""
    keys = [split_key(r) for r in runs or ()]
    lives = [live for fp, live in keys if live is not None and fp in (None, own)]
    return max(lives, key=lambda live: live.version, default=None)


class ChannelComponent:
    def __init__(self, view: RunView, name: str, threads: int = 1) -> None:
        self.name = name
        self.run = str(view.path)
        self.fingerprint = view.fingerprint
        self.channel = view.load_channel(name)
        self.fault = Fault()
        self._rng = np.random.default_rng(0)
        self.live = LiveSync(view.dataset.item_ids, self._add_items)
        set_threads(threads)

    def _add_items(self, frame: pd.DataFrame, new_ids: list[str]) -> None:
        """Live items, for a channel that embeds items from content (COBRA, the two-tower) or maps
        ids another service answers (the HTTP plug-in); the others cannot retrieve an item without
        interactions and leave them out."""
        if isinstance(self.channel, SupportsAddItems):
            self.channel.add_items(frame)
        elif isinstance(self.channel, SupportsAddItemIds):
            self.channel.add_item_ids(new_ids)

    def retrieve(self, batch: RequestBatch, k: int) -> Retrieved:
        if self.fault.error_rate and self._rng.random() < self.fault.error_rate:
            raise InjectedFault(f"channel {self.name}: injected failure")
        if self.fault.delay_ms:
            time.sleep(self.fault.delay_ms / 1e3)
        return self.channel.retrieve(batch, k)

    async def aretrieve(self, batch: RequestBatch, k: int, run: str | None = None) -> Retrieved:
        """Async form: injected delay does not hold the replica's event loop. `run`: the caller's
        data fingerprint; another one raises StaleRun (the caller drops this channel)."""
        fingerprint, live = split_key(run)
        if fingerprint is not None and fingerprint != self.fingerprint:
            raise StaleRun(f"channel {self.name} serves {self.run}, built from other data")
        await self.live.sync(live)
        if self.fault.delay_ms:
            await asyncio.sleep(self.fault.delay_ms / 1e3)
        if self.fault.error_rate and self._rng.random() < self.fault.error_rate:
            raise InjectedFault(f"channel {self.name}: injected failure")
        return self.channel.retrieve(batch, k)


def stack_batches(batches: list[RequestBatch]) -> RequestBatch:
    """One batch from several (re-padded to the longest history), for batched ranking."""
    rows = [(b, r) for b in batches for r in range(len(b))]
    stacked = RequestBatch.from_sequences(
        [int(b.users[r]) for b, r in rows],
        [b.history_of(r) for b, r in rows],
        [b.history_times[r, b.history.shape[1] - int(b.lengths[r]):] if b.lengths[r] else np.zeros(0, np.int64) for b, r in rows],
        now=[int(b.now[r]) for b, r in rows],
        contexts=[b.contexts[r] if b.contexts else {} for b, r in rows],
    )
    if all(b.seen_offsets is None for b in batches):
        return stacked
    seen = [b.seen_of(r) for b, r in rows]  # keep each row's whole seen set
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in seen])]).astype(np.int64)
    return replace(stacked, seen_items=np.concatenate(seen).astype(np.int64), seen_offsets=offsets)


def _key(cfg: StageConfig) -> str:
    return json.dumps(cfg.model_dump(mode="json"), sort_keys=True)


def _group(arms: list[str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, arm in enumerate(arms):
        out.setdefault(arm, []).append(i)
    return out


class _PerArm:
    """What the ranker and re-ranker components share: one stage per distinct arm setting
    (`by_arm`), kept in step with the live catalog the calls carry."""

    by_arm: dict[str, Any]
    fingerprint: str
    live: LiveSync

    def distinct(self) -> list[Any]:
        return list({id(stage): stage for stage in self.by_arm.values()}.values())

    async def sync(self, runs: list | None) -> None:
        """Catch up with the newest live catalog a batch of calls carries."""
        await self.live.sync(_newest(self.fingerprint, runs))


class RankerComponent(_PerArm):
    """One ranker per distinct arm setting; scores many single-request pools in one call per arm."""

    def __init__(self, view: RunView, cfg: ServeConfig, threads: int = 1) -> None:
        configs = ArmTable(cfg.experiment, view.config, view.channel_configs()).stage_configs("ranker")
        built = {key: view.build_ranker(c) for key, c in {_key(c): c for c in configs.values()}.items()}
        self.by_arm = {arm: built[_key(c)] for arm, c in configs.items()}
        self.run, self.fingerprint = str(view.path), view.fingerprint
        self.live = LiveSync(view.dataset.item_ids, self._add_items)
        set_threads(threads)

    def _add_items(self, frame: pd.DataFrame, new_ids: list[str]) -> None:
        for ranker in self.distinct():
            if isinstance(ranker, SupportsAddItems):
                ranker.add_items(frame)

    def score_many(
        self, arms: list[str], batches: list[RequestBatch], pools: list[CandidateSet], runs: list[str | None] | None = None
    ) -> list[np.ndarray | None]:
        """Scores per pool; None for a row sent from other data (see `aretrieve`)."""
        fresh = [i for i, s in enumerate(_stale(self.fingerprint, runs, len(arms))) if not s]
        out: list[np.ndarray | None] = [None] * len(arms)
        for arm, positions in _group([arms[i] for i in fresh]).items():
            rows = [fresh[p] for p in positions]
            scores = self.by_arm[arm].score(stack_batches([batches[i] for i in rows]), [pools[i] for i in rows])
            for i, s in zip(rows, scores):
                out[i] = np.asarray(s, np.float32)
        return out


class RerankComponent(_PerArm):
    def __init__(self, view: RunView, cfg: ServeConfig, threads: int = 1) -> None:
        configs = ArmTable(cfg.experiment, view.config, view.channel_configs()).stage_configs("rerank")
        built = {key: view.build_reranker(c) for key, c in {_key(c): c for c in configs.values()}.items()}
        self.by_arm = {arm: built[_key(c)] for arm, c in configs.items()}
        self.run, self.fingerprint = str(view.path), view.fingerprint
        self._table = (view.dataset.items, load_rerank_vectors(view.path, view.manifest), view.dataset.item_ids)
        self.live = LiveSync(view.dataset.item_ids, self._add_items)
        set_threads(threads)

    def _add_items(self, frame: pd.DataFrame, new_ids: list[str]) -> None:
        """Rebind every re-ranker to the item table with the live items appended (item vectors,
        where MMR needs them: zero rows, similar to nothing)."""
        items, vectors, ids = self._table
        items = pd.concat([items, frame], ignore_index=True)
        if vectors is not None:
            vectors = np.concatenate([vectors, np.zeros((len(frame), vectors.shape[1]), vectors.dtype)])
        ids = np.concatenate([ids.astype(object), np.array(new_ids, dtype=object)])  # fixed-width str would cut them
        self._table = (items, vectors, ids)
        for reranker in self.distinct():
            bind_items(reranker, items, vectors, ids)

    def rerank_many(
        self, arms: list[str], batches: list[RequestBatch], pools: list[CandidateSet], ks: list[int],
        runs: list[str | None] | None = None,
    ) -> list[CandidateSet | None]:
        """Final lists per pool; None for a row sent from other data (see `aretrieve`)."""
        fresh = [i for i, s in enumerate(_stale(self.fingerprint, runs, len(arms))) if not s]
        out: list[CandidateSet | None] = [None] * len(arms)
        for key, positions in _group([f"{arms[i]}\x00{ks[i]}" for i in fresh]).items():
            rows = [fresh[p] for p in positions]
            arm, k = key.split("\x00")[0], ks[rows[0]]
            lists = self.by_arm[arm].rerank(stack_batches([batches[i] for i in rows]), [pools[i] for i in rows], k)
            for i, final in zip(rows, lists):
                out[i] = final
        return out


class LocalBackends(AsyncStore):
    """Every stage in this process: tests, and debugging the ingress logic without a cluster."""

    def __init__(self, view: RunView, cfg: ServeConfig) -> None:
        super().__init__(open_store(cfg.history, view.path))
        self.channels = {name: ChannelComponent(view, name) for name in view.channel_configs()}
        self.ranker = RankerComponent(view, cfg)
        self.reranker = RerankComponent(view, cfg)

    async def retrieve(self, channel: str, batch: RequestBatch, k: int, run: str | None = None) -> Retrieved:
        return await self.channels[channel].aretrieve(batch, k, run)

    async def score(self, arm: str, batch: RequestBatch, pool: CandidateSet, run: str | None = None) -> np.ndarray | None:
        await self.ranker.sync([run])
        return self.ranker.score_many([arm], [batch], [pool], [run])[0]

    async def rerank(self, arm: str, batch: RequestBatch, pool: CandidateSet, k: int, run: str | None = None) -> CandidateSet | None:
        await self.reranker.sync([run])
        return self.reranker.rerank_many([arm], [batch], [pool], [k], [run])[0]
