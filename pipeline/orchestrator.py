"""The cascade's steps, written once: retrieve (under time budgets), fall back, merge the pool,
rank, re-rank, back-fill short lists.

Two drivers run this same code. `Cascade` (pipeline/cascade.py) runs it on in-process stages, a
batch at a time, with no time limits: offline evaluation, tests, batch inference. The serving
ingress runs it per request on Ray Serve deployment handles, with the serving config's budgets
and the channels called concurrently. So a served list and an in-process list for the same state
are the same list (tests/test_orchestrator.py checks it through HTTP).

Failure handling, the same in both:
- a channel that raises, times out or answers a malformed `Retrieved` is dropped for the batch
  and named in `degraded` (with its reason in `reasons`);
- anonymous rows (no user id, no history) and, when every channel failed, all rows are answered
  by the fallback channel (popularity); if it fails too the rows get empty lists;
- a ranker that fails, times out or answers the wrong shapes leaves the pools in their fused
  order; a failing re-ranker leaves the ranked order (pass-through);
- a final list shorter than k is topped up from the fallback, reason `backfill:<name>`.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Protocol, Sequence

import numpy as np

from pipeline.core.protocols import Channel
from pipeline.core.types import PAD, CandidateSet, RequestBatch, Retrieved
from pipeline.pool import PoolSpec, merge_pool
from rerank.passthrough import PassThroughReRanker

log = logging.getLogger(__name__)


class Stages(Protocol):
    """The stages one run calls. `score` / `rerank` answer None when the stage serves other data
    than the caller (mid rolling update); that is handled like a failure."""

    async def retrieve(self, channel: str, batch: RequestBatch, k: int) -> Retrieved: ...

    async def score(self, batch: RequestBatch, pools: list[CandidateSet]) -> Sequence[np.ndarray] | None: ...

    async def rerank(self, batch: RequestBatch, pools: list[CandidateSet], k: int) -> list[CandidateSet] | None: ...


@dataclass(frozen=True)
class Plan:
    """Which channels to ask, and how their answers become one pool."""

    channels: tuple[str, ...]
    pool: PoolSpec


@dataclass(frozen=True)
class Budgets:
    """Time limits in ms per stage call; None = wait as long as it takes (in process)."""

    channels: dict[str, float] = field(default_factory=dict)
    ranker_ms: float | None = None
    reranker_ms: float | None = None

    def channel(self, name: str) -> float | None:
        return self.channels.get(name)


@dataclass
class StageResult:
    """Everything one batch went through: channel outputs, pools, final lists, what degraded."""

    outputs: dict[str, Retrieved]
    pools: list[CandidateSet]
    final: list[CandidateSet]
    degraded: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)  # degraded stage -> error | timeout | row_failed | stale | shape
    fallback: np.ndarray | None = None  # bool [B]: rows only the fallback answered


def anonymous_rows(batch: RequestBatch) -> np.ndarray:
    """bool [B]: rows with no user id and no history, which only the fallback can answer."""
    return (batch.users == PAD) & (batch.lengths == 0)


class _Run:
    """One batch through the steps; collects what degraded and the timings."""

    def __init__(self, stages: Stages, plan: Plan, batch: RequestBatch, fallback: Channel | None,
                 budgets: Budgets, concurrent: bool) -> None:
        self.stages, self.plan, self.batch, self.fallback = stages, plan, batch, fallback
        self.budgets, self.concurrent = budgets, concurrent
        self.degraded: list[str] = []
        self.reasons: dict[str, str] = {}
        self.timings: dict[str, float] = {}

    def degrade(self, name: str, reason: str) -> None:
        if name not in self.reasons:
            self.degraded.append(name)
            self.reasons[name] = reason

    async def call(self, name: str, call: Awaitable[Any], budget_ms: float | None) -> tuple[Any, str]:
        """(answer, "") or (None, reason); never raises."""
        try:
            out = await (call if budget_ms is None else asyncio.wait_for(call, budget_ms / 1e3))
            return out, ("stale" if out is None else "")
        except asyncio.TimeoutError:
            return None, "timeout"
        except Exception as err:  # a dead replica or a bug in a stage degrades, never fails the request
            log.warning("%s failed: %s: %s", name, type(err).__name__, err)
            return None, "error"

    async def channel(self, name: str, rows: RequestBatch, k: int) -> tuple[str, Retrieved | None, str, float]:
        t = time.perf_counter()
        out, reason = await self.call(f"channel {name}", self.stages.retrieve(name, rows, k), self.budgets.channel(name))
        if out is not None and (not isinstance(out, Retrieved) or out.items.shape[0] != len(rows)):
            log.warning("channel %s answered %s for %d rows; dropped", name, type(out).__name__, len(rows))
            out, reason = None, "shape"
        return name, out, reason, (time.perf_counter() - t) * 1e3

    async def retrieve(self, route_anonymous: bool = True) -> tuple[dict[str, Retrieved], np.ndarray]:
        batch, n = self.batch, len(self.batch)
        cold = anonymous_rows(batch) if route_anonymous and self.fallback is not None else np.zeros(n, bool)
        warm = np.flatnonzero(~cold)
        rows = batch if len(warm) == n else batch.take(warm)
        names = self.plan.channels if len(warm) else ()
        calls = [self.channel(c, rows, self.plan.pool.quotas.get(c, 100)) for c in names]
        answers = await asyncio.gather(*calls) if self.concurrent else [await c for c in calls]
        outputs: dict[str, Retrieved] = {}
        for name, out, reason, ms in answers:
            self.timings[f"channel.{name}"] = ms
            if out is None:
                self.degrade(name, reason)
                continue
            outputs[name] = _scatter(out, warm, n)
            if out.any_failed():  # answered, but not for every row
                self.degrade(name, "row_failed")
        need = np.ones(n, bool) if not outputs else cold
        if need.any() and self.fallback is not None:
            t = time.perf_counter()
            part = self.from_fallback(batch.take(np.flatnonzero(need)), self.plan.pool.budget)
            if part is not None:  # the fallback may also be a channel that answered the other rows
                part = _scatter(part, np.flatnonzero(need), n)
                name = self.fallback.name
                outputs[name] = _overlay(outputs[name], part, need) if name in outputs else part
            self.timings[f"channel.{self.fallback.name}"] = (time.perf_counter() - t) * 1e3
        return outputs, need if self.fallback is not None else np.zeros(n, bool)

    def from_fallback(self, rows: RequestBatch, k: int) -> Retrieved | None:
        try:
            return self.fallback.retrieve(rows, k)
        except Exception as err:  # the last resort failed too: empty lists, flagged
            log.warning("fallback channel %s failed: %s: %s", self.fallback.name, type(err).__name__, err)
            self.degrade("fallback", "error")
            return None

    async def rank(self, pools: list[CandidateSet]) -> list[CandidateSet]:
        scores = None
        if any(len(p) for p in pools):
            scores, reason = await self.call("ranker", self.stages.score(self.batch, pools), self.budgets.ranker_ms)
            if scores is not None and (len(scores) != len(pools) or any(np.shape(s) != (len(p),) for s, p in zip(scores, pools))):
                log.warning("ranker answered the wrong shapes; pool order kept")
                scores, reason = None, "shape"
            if scores is None:
                self.degrade("ranker", reason)
        if scores is None:
            return [p.select(np.arange(len(p))) for p in pools]
        return [p.select(np.arange(len(p)), s) for p, s in zip(pools, scores)]

    async def rerank(self, ranked: list[CandidateSet], k: int) -> list[CandidateSet]:
        final = None
        if any(len(p) for p in ranked):
            call = self.stages.rerank(self.batch, ranked, k)
            final, reason = await self.call("reranker", call, self.budgets.reranker_ms)
            if final is not None and len(final) != len(ranked):
                final, reason = None, "shape"
            if final is None:
                self.degrade("reranker", reason)
        return final if final is not None else PassThroughReRanker().rerank(self.batch, ranked, k)

    def backfill(self, final: list[CandidateSet], k: int) -> list[CandidateSet]:
        short = [r for r, f in enumerate(final) if len(f) < k]
        if not short or self.fallback is None:
            return final
        answer = self.from_fallback(self.batch.take(np.array(short)), k + max(len(final[r]) for r in short))
        if answer is None:
            return final
        out = list(final)
        for j, r in enumerate(short):
            extra = answer.items[j]
            extra = extra[(extra != PAD) & ~np.isin(extra, final[r].items)][: k - len(final[r])]
            out[r] = _append(final[r], extra, f"backfill:{self.fallback.name}")
        return out


async def run(stages: Stages, plan: Plan, batch: RequestBatch, k: int, *, fallback: Channel | None,
              budgets: Budgets = Budgets(), concurrent: bool = False) -> StageResult:
    """The whole cascade for one batch. `concurrent`: ask the channels at the same time (served);
    otherwise one after the other (in process, where `drive` runs this without an event loop)."""
    r = _Run(stages, plan, batch, fallback, budgets, concurrent)
    t0 = time.perf_counter()
    outputs, fell_back = await r.retrieve()
    t1 = time.perf_counter()
    order = plan.channels + tuple(n for n in outputs if n not in plan.channels)
    pools = merge_pool(batch, outputs, plan.pool, order)
    t2 = time.perf_counter()
    ranked = await r.rank(pools)
    t3 = time.perf_counter()
    final = r.backfill(await r.rerank(ranked, k), k)
    t4 = time.perf_counter()
    r.timings.update(retrieve=(t1 - t0) * 1e3, pool=(t2 - t1) * 1e3, rank=(t3 - t2) * 1e3, rerank=(t4 - t3) * 1e3,
                     total=(t4 - t0) * 1e3)
    return StageResult(outputs, pools, final, r.degraded, r.timings, r.reasons, fell_back)


async def pools(stages: Stages, plan: Plan, batch: RequestBatch, *, fallback: Channel | None) -> list[CandidateSet]:
    """Retrieval and the pool merge only (what a ranker is trained on)."""
    r = _Run(stages, plan, batch, fallback, Budgets(), concurrent=False)
    outputs, _ = await r.retrieve()
    return merge_pool(batch, outputs, plan.pool, plan.channels + tuple(n for n in outputs if n not in plan.channels))


async def touch(stages: Stages, plan: Plan, batch: RequestBatch, k: int, budgets: Budgets) -> list[str]:
    """Every stage once, anonymous rows included (a warm-up: opens routes, waits for replicas still
    starting); the stages that degraded."""
    r = _Run(stages, plan, batch, None, budgets, concurrent=True)
    outputs, _ = await r.retrieve(route_anonymous=False)
    pools = merge_pool(batch, outputs, plan.pool, plan.channels)
    if not any(len(p) for p in pools):
        return r.degraded
    await r.rerank(await r.rank(pools), k)
    return r.degraded


def drive(coro: Any) -> Any:
    """Run a coroutine whose awaits all complete at once (in-process stages) without an event
    loop, so the cascade also runs inside one (a notebook, an async deployment)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("an in-process stage suspended; in-process stages must answer synchronously")


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


def _overlay(base: Retrieved, top: Retrieved, rows: np.ndarray) -> Retrieved:
    """`base` with the rows where `rows` (bool [B]) is set taken from `top` (widths padded to the wider)."""
    width = max(base.items.shape[1], top.items.shape[1])

    def wide(out: Retrieved) -> tuple[np.ndarray, np.ndarray]:
        extra = width - out.items.shape[1]
        return (np.pad(out.items, ((0, 0), (0, extra)), constant_values=PAD),
                np.pad(out.scores, ((0, 0), (0, extra)), constant_values=-np.inf))

    (items, scores), (top_items, top_scores) = wide(base), wide(top)
    items[rows], scores[rows] = top_items[rows], top_scores[rows]
    failed = None
    if base.failed is not None or top.failed is not None:
        failed = base.failed.copy() if base.failed is not None else np.zeros(len(rows), bool)
        failed[rows] = top.failed[rows] if top.failed is not None else False
    return Retrieved(items, scores.astype(np.float32), failed)


def _append(final: CandidateSet, items: np.ndarray, reason: str) -> CandidateSet:
    """`final` with `items` added at the end: no provenance, no score, one reason each."""
    if not len(items):
        return final
    c, m = len(final.channels), len(items)
    reasons = final.reasons if final.reasons is not None else [[] for _ in range(len(final))]
    return CandidateSet(
        np.concatenate([final.items, items.astype(np.int64)]),
        np.concatenate([final.scores, np.full(m, np.nan, np.float32)]),
        final.channels,
        np.concatenate([final.found, np.zeros((m, c), bool)]),
        np.concatenate([final.channel_rank, np.full((m, c), -1, np.int32)]),
        np.concatenate([final.channel_score, np.full((m, c), np.nan, np.float32)]),
        [list(x) for x in reasons] + [[reason] for _ in range(m)],
    )
