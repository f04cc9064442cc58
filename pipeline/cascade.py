"""The in-process cascade: channels -> pool merge -> ranker -> re-ranker.

The same object answers offline evaluation, tests and batch inference. Its steps are
`pipeline.orchestrator`'s, which the serving ingress runs too (there on deployment handles): a
channel that raises is dropped for that batch and named in `degraded`; the `fallback` channel
(popularity, a separate object from the configured channels) answers the anonymous rows (no user
id and an empty history: the other channels have nothing to read; a known user without history
still reaches channels keyed by user, such as a candidate table), every row when all channels
failed, and tops up lists shorter than k; if it fails too, the rows get what they have (maybe
nothing) with 'fallback' in `degraded`, never an error. A failing ranker or re-ranker degrades
the same way (fused or ranked order kept), except in `topk`, the evaluation entry point, where it
raises: an offline figure must not silently come from a broken stage.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from pipeline import orchestrator
from pipeline.core.protocols import Channel, Ranker, ReRanker
from pipeline.core.types import PAD, CandidateSet, Recommendation, Request, RequestBatch, Retrieved
from pipeline.orchestrator import Plan, StageResult, anonymous_rows
from pipeline.pool import PoolSpec
from rankers.passthrough import PassThroughRanker
from rerank.passthrough import PassThroughReRanker

__all__ = ["Cascade", "PlainStages", "StageResult", "anonymous_rows"]


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

    @property
    def plan(self) -> Plan:
        return Plan(self.channel_names, self.pool_spec)

    @property
    def stages(self) -> "PlainStages":
        return PlainStages({c.name: c for c in self.channels}, self.ranker, self.reranker)

    def run(self, batch: RequestBatch, k: int) -> StageResult:
        return orchestrator.drive(orchestrator.run(self.stages, self.plan, batch, k, fallback=self.fallback))

    def pools(self, batch: RequestBatch) -> list[CandidateSet]:
        """The merged candidate pools (retrieval and merge only, as the ranker is trained on)."""
        return orchestrator.drive(orchestrator.pools(self.stages, self.plan, batch, fallback=self.fallback))

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
        res = self.run(batch, k)
        broken = [s for s in ("ranker", "reranker") if s in res.degraded]
        if broken:
            raise RuntimeError(f"{' and '.join(broken)} failed during evaluation (see the log); no figure from a broken stage")
        for r, f in enumerate(res.final):
            out[r, : len(f)] = f.items[:k]
        return out


class PlainStages:
    """`orchestrator.Stages` over plain objects in this process (every await completes at once);
    the fused serving topology runs one per arm too."""

    def __init__(self, channels: dict[str, Channel], ranker: Ranker, reranker: ReRanker) -> None:
        self.channels, self.ranker, self.reranker = channels, ranker, reranker

    async def retrieve(self, channel: str, batch: RequestBatch, k: int) -> Retrieved:
        return self.channels[channel].retrieve(batch, k)

    async def score(self, batch: RequestBatch, pools: list[CandidateSet]) -> Sequence[np.ndarray]:
        return self.ranker.score(batch, pools)

    async def rerank(self, batch: RequestBatch, pools: list[CandidateSet], k: int) -> list[CandidateSet]:
        return self.reranker.rerank(batch, pools, k)
