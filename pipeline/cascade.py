"""The in-process cascade: channels -> pool merge -> ranker -> re-ranker.

The same object answers offline evaluation, tests and (wrapped by the serving module) HTTP
requests. A channel that raises is dropped for that batch and named in `degraded`. The `fallback`
channel (popularity, a separate object from the configured channels) answers the anonymous rows
(no user id and an empty history: the other channels have nothing to read; a known user without
history still reaches channels keyed by user, such as a candidate table) and every row when all
channels failed; if it fails too, the rows get empty lists with 'fallback' in
`degraded`, never an error.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from pipeline.pool import PoolSpec, merge_pool
from pipeline.protocols import Channel, Ranker, ReRanker
from pipeline.types import PAD, CandidateSet, Recommendation, Request, RequestBatch, Retrieved
from rankers.passthrough import PassThroughRanker
from rerank.passthrough import PassThroughReRanker

log = logging.getLogger(__name__)


@dataclass
class StageResult:
    """Everything one batch went through, for inspection and per-stage timings."""

    outputs: dict[str, Retrieved]
    pools: list[CandidateSet]
    final: list[CandidateSet]
    degraded: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)


class Cascade:
    def __init__(
        self,
        channels: Sequence[Channel],
        quotas: dict[str, int],
        *,
        ranker: Ranker | None = None,
        reranker: ReRanker | None = None,
        budget: int = 500,
        exclude_seen: bool = True,
        max_history: int = 50,
        fallback: Channel | None = None,
    ) -> None:
        names = [c.name for c in channels]
        if len(set(names)) != len(names):
            raise ValueError(f"channel names must be unique, got {names}")
        if not channels and fallback is None:
            raise ValueError("a cascade needs at least one channel or a fallback")
        self.channels = list(channels)
        self.quotas = dict(quotas)
        self.ranker = ranker or PassThroughRanker()
        self.reranker = reranker or PassThroughReRanker()
        self.pool_spec = PoolSpec(quotas=self.quotas, budget=budget, exclude_seen=exclude_seen)
        self.max_history = max_history
        self.fallback = fallback

    @property
    def channel_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.channels)

    def retrieve(self, batch: RequestBatch) -> tuple[dict[str, Retrieved], list[str], dict[str, float]]:
        outputs: dict[str, Retrieved] = {}
        degraded: list[str] = []
        timings: dict[str, float] = {}
        cold = anonymous_rows(batch) if self.fallback is not None else np.zeros(len(batch), bool)
        warm = np.flatnonzero(~cold)
        rows = batch if len(warm) == len(batch) else batch.take(warm)
        for ch in self.channels if len(warm) else ():
            t = time.perf_counter()
            try:
                outputs[ch.name] = _scatter(ch.retrieve(rows, self.quotas.get(ch.name, 100)), warm, len(batch))
                if outputs[ch.name].any_failed():  # answered, but not for every row
                    degraded.append(ch.name)
            except Exception as err:  # a failing channel degrades the answer, never breaks it
                log.warning("channel %s failed: %s", ch.name, err)
                degraded.append(ch.name)
            timings[f"channel.{ch.name}"] = (time.perf_counter() - t) * 1e3
        need = np.ones(len(batch), bool) if not outputs else cold
        if need.any() and self.fallback is not None:
            t = time.perf_counter()
            try:
                part = self.fallback.retrieve(batch.take(np.flatnonzero(need)), self.pool_spec.budget)
                outputs[self.fallback.name] = _scatter(part, np.flatnonzero(need), len(batch))
            except Exception as err:  # the last resort failed too: empty lists, flagged
                log.warning("fallback channel %s failed: %s", self.fallback.name, err)
                degraded.append(self.fallback.name)
            timings[f"channel.{self.fallback.name}"] = (time.perf_counter() - t) * 1e3
        return outputs, degraded, timings

    def run(self, batch: RequestBatch, k: int) -> StageResult:
        t0 = time.perf_counter()
        outputs, degraded, timings = self.retrieve(batch)
        t1 = time.perf_counter()
        order = self.channel_names + tuple(n for n in outputs if n not in self.channel_names)
        pools = merge_pool(batch, outputs, self.pool_spec, order)
        t2 = time.perf_counter()
        scores = self.ranker.score(batch, pools)
        ranked = [p.select(np.arange(len(p)), s) for p, s in zip(pools, scores)]
        t3 = time.perf_counter()
        final = self.reranker.rerank(batch, ranked, k)
        t4 = time.perf_counter()
        timings.update(
            retrieve=(t1 - t0) * 1e3, pool=(t2 - t1) * 1e3, rank=(t3 - t2) * 1e3, rerank=(t4 - t3) * 1e3,
            total=(t4 - t0) * 1e3,
        )
        return StageResult(outputs, pools, final, degraded, timings)

    def recommend_batch(self, batch: RequestBatch, k: int) -> list[Recommendation]:
        res = self.run(batch, k)
        return [
            Recommendation(
                items=f.items, scores=f.scores, reasons=f.reasons or [[] for _ in range(len(f))],
                degraded=list(res.degraded), timings_ms=dict(res.timings_ms), pool_size=len(p),
            )
            for f, p in zip(res.final, res.pools)
        ]

    def recommend(self, request: Request) -> Recommendation:
        batch = RequestBatch.from_requests([request], max_len=self.max_history)
        return self.recommend_batch(batch, request.k)[0]

    def topk(self, batch: RequestBatch, k: int) -> np.ndarray:
        """int64 [B, k] final lists (PAD-filled), for offline evaluation."""
        out = np.full((len(batch), k), PAD, np.int64)
        for r, f in enumerate(self.run(batch, k).final):
            out[r, : len(f)] = f.items[:k]
        return out


def anonymous_rows(batch: RequestBatch) -> np.ndarray:
    """bool [B]: rows with no user id and no history, which only the fallback can answer."""
    return (batch.users == PAD) & (batch.lengths == 0)


def _scatter(part: Retrieved, rows: np.ndarray, n_rows: int) -> Retrieved:
    """`part` answered `rows` of a batch of `n_rows`: the whole batch's answer (PAD elsewhere)."""
    if len(rows) == n_rows:
        return part
    items = np.full((n_rows, part.items.shape[1]), PAD, np.int64)
    scores = np.full((n_rows, part.items.shape[1]), -np.inf, np.float32)
    items[rows], scores[rows] = part.items, part.scores
    failed = None
    if part.failed is not None:
        failed = np.zeros(n_rows, bool)
        failed[rows] = part.failed
    return Retrieved(items, scores, failed)
