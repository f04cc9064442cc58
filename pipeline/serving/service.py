"""The ingress logic as plain async Python: resolve ids, pick the arm, fan out to the channels under
their time budgets, merge the pool, rank, re-rank, answer and log.

It talks to the stages through `Backends` (three async methods). Behind Ray Serve they call
deployment handles (`pipeline.serving.deployments`); `LocalBackends` calls the same plain
components in this process, which is how the logic is unit-tested without a cluster.
A channel that times out or fails is dropped for the request and named in `degraded`; a failing
ranker or re-ranker falls back to the pool's fused order; with every channel down the ingress's own
popularity channel answers (`fallback: true`); short lists are topped up from popularity.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from pipeline.cascade import anonymous_rows
from pipeline.pool import PoolSpec, merge_pool
from pipeline.protocols import Channel
from pipeline.serving.ab import ArmPlan, ArmTable, UnknownArm
from pipeline.serving.api import ChannelInfo, ChannelsResponse, FeedbackRequest, Item, RecommendRequest, RecommendResponse
from pipeline.serving.config import ServeConfig
from pipeline.serving.eventlog import EventLog
from pipeline.serving.metrics import Metrics
from pipeline.serving.runview import Histories, IdMaps, RunView
from pipeline.types import PAD, CandidateSet, RequestBatch, Retrieved
from rerank.passthrough import PassThroughReRanker

log = logging.getLogger(__name__)


class BadRequest(ValueError):
    """A request the service refuses, with the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class StaleRun(RuntimeError):
    """A stage answered from another run's data (mid rolling update): dropped like a failure."""


class Backends(Protocol):
    """The stages as seen by the ingress. `run` is the ingress's data fingerprint: a stage loaded
    from different data raises `StaleRun` (channels) or answers None (ranker, re-ranker)."""

    async def retrieve(self, channel: str, batch: RequestBatch, k: int, run: str) -> Retrieved: ...

    async def score(self, arm: str, batch: RequestBatch, pool: CandidateSet, run: str) -> np.ndarray | None: ...

    async def rerank(self, arm: str, batch: RequestBatch, pool: CandidateSet, k: int, run: str) -> CandidateSet | None: ...


@dataclass
class Resolved:
    """One request in dense ids, ready for the cascade."""

    batch: RequestBatch
    user: int | None
    ignored: list[str]


@dataclass
class IngressState:
    """What the ingress holds for one run: id maps, stored histories, the fallback, the arms, the
    /channels answer, logs. A new run is a new state, swapped in whole (`RecommendService.swap`)."""

    run: str
    fingerprint: str  # the run's data fingerprint: every stage call must come from the same data
    maps: IdMaps
    histories: Histories
    fallback: Channel
    arms: ArmTable
    max_history: int
    info: ChannelsResponse
    served_log: EventLog | None = None
    feedback_log: EventLog | None = None

    @classmethod
    def build(cls, view: RunView, cfg: ServeConfig, with_logs: bool = True) -> "IngressState":
        from channels.popularity import PopularityChannel

        served = view.channel_configs()
        pops = [n for n, c in served.items() if c.kind == "popularity"]
        fallback = view.load_channel(pops[0]) if pops else PopularityChannel().fit(view.fit_data())
        logs = (None, None)
        if with_logs:
            folder = cfg.logging.dir or str(view.path / "serve_logs")
            size = int(cfg.logging.rotate_mb * (1 << 20))
            logs = tuple(EventLog(folder, p, rotate_bytes=size, queue_size=cfg.logging.queue_size) for p in ("served", "feedback"))
        arms = ArmTable(cfg.experiment, view.config, served)
        info = ChannelsResponse(
            channels=[ChannelInfo(name=n, kind=c.kind, quota=c.quota, budget_ms=cfg.channel(n).budget_ms,
                                  replicas=cfg.channel(n).replicas) for n, c in served.items()],
            arms={name: list(plan.channels) for name, plan in arms.plans.items()},
        )
        return cls(
            run=str(view.path), fingerprint=view.fingerprint, maps=IdMaps.of(view.dataset),
            histories=Histories.of(view.split.history(view.stage), view.dataset.n_users), fallback=fallback,
            arms=arms, max_history=view.config.data.max_history, info=info, served_log=logs[0], feedback_log=logs[1],
        )

    def close(self) -> None:
        for event_log in (self.served_log, self.feedback_log):
            if event_log is not None:
                event_log.close(timeout=2.0)


def resolve(req: RecommendRequest, state: IngressState, now: int | None = None) -> Resolved:
    """Original ids -> dense ids; the user's stored history with the sent items appended."""
    user = state.maps.user_index.get(req.user_id) if req.user_id is not None else None
    items, times = (state.histories.of_user(user) if user is not None else (np.zeros(0, np.int64), np.zeros(0, np.int64)))
    now = int(time.time()) if now is None else now
    now = max(now, int(times[-1]) if len(times) else 0)
    sent = [state.maps.item_index.get(i) for i in req.history]
    ignored = [i for i, d in zip(req.history, sent) if d is None]
    recent = np.array([d for d in sent if d is not None], np.int64)
    items = np.concatenate([items, recent])
    times = np.concatenate([times, np.full(len(recent), now, np.int64)])
    # the model sees the last max_history items; every item stays in the seen set
    batch = RequestBatch.from_sequences([user], [items], [times], max_len=state.max_history, now=[now],
                                        contexts=[dict(req.context)])
    return Resolved(batch, user, ignored)


@dataclass
class Turn:
    """One request in flight: the state it started with (kept even if a new run is swapped in
    meanwhile), its arm, batch, and what it collects."""

    state: IngressState
    plan: ArmPlan
    batch: RequestBatch
    degraded: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


class RecommendService:
    def __init__(self, state: IngressState | None, backends: Backends, cfg: ServeConfig, metrics: Metrics | None = None) -> None:
        self.state = state
        self.backends = backends
        self.cfg = cfg
        self.metrics = metrics or Metrics()
        self.passthrough = PassThroughReRanker()

    def swap(self, state: IngressState) -> IngressState | None:
        """Serve a new run from now on; requests already running finish on the old state."""
        old, self.state = self.state, state
        return old

    def current(self) -> IngressState:
        if self.state is None:
            raise BadRequest(503, "the service is loading its run; retry shortly")
        return self.state

    async def recommend(self, req: RecommendRequest) -> RecommendResponse:
        t0 = time.perf_counter()
        self._check_limits(req)
        state = self.current()
        try:
            plan = state.arms.assign(req.user_id, req.arm)
        except UnknownArm as err:
            raise BadRequest(422, str(err)) from None
        res = resolve(req, state)
        turn = Turn(state, plan, res.batch)
        # an anonymous request (no user id, no history) gives the channels nothing to read: popularity answers
        outputs = {} if anonymous_rows(res.batch)[0] else await self._retrieve(turn)
        fallback = not outputs
        if fallback:
            outputs = self._fallback(turn, plan.budget)
            self.metrics.fallback.inc()
        t1 = time.perf_counter()
        order = plan.channels + tuple(n for n in outputs if n not in plan.channels)
        pool = merge_pool(res.batch, outputs, PoolSpec(plan.quotas, plan.budget, plan.exclude_seen), order)[0]
        t2 = time.perf_counter()
        final = await self._rank_and_rerank(turn, pool, req.k)
        items, scores, reasons = self._backfill(turn, final, req.k)
        turn.timings.update(retrieve=(t1 - t0) * 1e3, pool=(t2 - t1) * 1e3, total=(time.perf_counter() - t0) * 1e3)
        return self._respond(req, res, turn, items, scores, reasons, fallback)

    async def warmup(self, max_rounds: int = 20) -> int:
        """Send anonymous requests of each arm through every stage (opens the handles' routes, and
        waits for stages still starting) until a round degrades nothing; not logged. Returns the
        number of rounds."""
        state = self.current()
        batch = RequestBatch.from_sequences([None], [np.zeros(0, np.int64)], now=[int(time.time())])
        for n in range(1, max_rounds + 1):
            degraded: list[str] = []
            for plan in state.arms.plans.values():
                turn = Turn(state, plan, batch)
                outputs = await self._retrieve(turn) or {state.fallback.name: state.fallback.retrieve(batch, plan.budget)}
                pool = merge_pool(batch, outputs, PoolSpec(plan.quotas, plan.budget, plan.exclude_seen))[0]
                await self._rank_and_rerank(turn, pool, 10)
                degraded += turn.degraded
            if not degraded and n > 1:
                return n
        return max_rounds

    def feedback(self, fb: FeedbackRequest) -> bool:
        """Log a click (or other event) on a served list; False when the log is off or full."""
        state = self.current()
        if state.feedback_log is None:
            return False
        accepted = state.feedback_log.write({
            "type": "feedback", "request_id": fb.request_id, "item_id": fb.item_id, "event": fb.event,
            "user_id": fb.user_id, "time": time.time(),
        })
        self.metrics.log_dropped.labels("feedback").set(state.feedback_log.dropped)
        return accepted

    def _check_limits(self, req: RecommendRequest) -> None:
        lim = self.cfg.limits
        if req.k > lim.max_k:
            raise BadRequest(422, f"k={req.k} is above this server's limit of {lim.max_k}")
        if len(req.history) > lim.max_history:
            raise BadRequest(422, f"history has {len(req.history)} items; this server takes at most {lim.max_history}")
        if len(req.context) > lim.max_context_keys:
            raise BadRequest(422, f"context has {len(req.context)} keys; at most {lim.max_context_keys}")
        long_ids = [i for i in [req.user_id, *req.history] if i is not None and len(i) > lim.max_id_length]
        if long_ids:
            raise BadRequest(422, f"an id is {len(long_ids[0])} characters long; at most {lim.max_id_length}")

    async def _retrieve(self, turn: Turn) -> dict[str, Retrieved]:
        plan, batch, run = turn.plan, turn.batch, turn.state.fingerprint

        async def one(name: str) -> tuple[str, Retrieved | None, str, float]:
            t = time.perf_counter()
            budget = self.cfg.channel(name).budget_ms / 1e3
            try:
                out = await asyncio.wait_for(self.backends.retrieve(name, batch, plan.quotas[name], run), budget)
                if not isinstance(out, Retrieved) or out.items.shape[0] != len(batch):
                    raise TypeError(f"channel {name} answered {type(out).__name__}, not one Retrieved row")
                return name, out, "", time.perf_counter() - t
            except asyncio.TimeoutError:
                return name, None, "timeout", time.perf_counter() - t
            except Exception as err:  # a dead replica or a bug in a channel degrades, never fails
                log.warning("channel %s failed: %s: %s", name, type(err).__name__, err)
                return name, None, "error", time.perf_counter() - t

        results = await asyncio.gather(*(one(n) for n in plan.channels))
        for name, out, reason, seconds in results:
            turn.timings[f"channel.{name}"] = seconds * 1e3
            if out is None or out.any_failed():  # failed, or answered without this request's row
                turn.degraded.append(name)
                self.metrics.degraded.labels(name, reason or "row_failed").inc()
        return {name: out for name, out, _, _ in results if out is not None}

    async def _stage(self, turn: Turn, name: str, call: Any, budget_ms: float) -> Any:
        try:
            out = await asyncio.wait_for(call, budget_ms / 1e3)
            if out is None:
                raise StaleRun(f"{name} serves another run's data")
            return out
        except Exception as err:
            reason = "timeout" if isinstance(err, asyncio.TimeoutError) else "error"
            log.warning("%s dropped for a request (%s): %s", name, reason, err)
            self.metrics.degraded.labels(name, reason).inc()
            turn.degraded.append(name)
            return None

    async def _rank_and_rerank(self, turn: Turn, pool: CandidateSet, k: int) -> CandidateSet:
        t, arm, batch, run = time.perf_counter(), turn.plan.name, turn.batch, turn.state.fingerprint
        scores = None
        if len(pool):
            scores = await self._stage(turn, "ranker", self.backends.score(arm, batch, pool, run), self.cfg.ranker.budget_ms)
        if scores is not None and np.shape(scores) != (len(pool),):
            log.warning("ranker answered shape %s for a pool of %d; pool order kept", np.shape(scores), len(pool))
            turn.degraded.append("ranker")
            scores = None
        ranked = pool.select(np.arange(len(pool)), scores)
        t2 = time.perf_counter()
        final = None
        if len(pool):
            final = await self._stage(turn, "reranker", self.backends.rerank(arm, batch, ranked, k, run), self.cfg.reranker.budget_ms)
        if final is None:
            final = self.passthrough.rerank(batch, [ranked], k)[0]
        turn.timings.update(rank=(t2 - t) * 1e3, rerank=(time.perf_counter() - t2) * 1e3)
        return final

    def _fallback(self, turn: Turn, k: int) -> dict[str, Retrieved]:
        """The ingress popularity channel's answer, or nothing (flagged) if even it fails."""
        try:
            return {turn.state.fallback.name: turn.state.fallback.retrieve(turn.batch, k)}
        except Exception as err:  # the last resort failed: an empty list, never a 5xx
            log.warning("fallback channel failed: %s: %s", type(err).__name__, err)
            if "fallback" not in turn.degraded:
                turn.degraded.append("fallback")
            return {}

    def _backfill(self, turn: Turn, final: CandidateSet, k: int) -> tuple[np.ndarray, list[float | None], list[list[str]]]:
        items = final.items[:k].astype(np.int64)
        scores: list[float | None] = [float(s) if np.isfinite(s) else None for s in final.scores[:k]]
        reasons = [list(r) for r in (final.reasons or [[] for _ in range(len(items))])[:k]]
        if len(items) < k:
            answer = self._fallback(turn, k + len(items)).get(turn.state.fallback.name)
            extra = answer.items[0] if answer is not None else np.zeros(0, np.int64)
            extra = extra[(extra != PAD) & ~np.isin(extra, items)][: k - len(items)]
            items = np.concatenate([items, extra])
            scores += [None] * len(extra)
            reasons += [["backfill:popularity"] for _ in range(len(extra))]
        return items, scores, reasons

    def _respond(
        self, req: RecommendRequest, res: Resolved, turn: Turn, items: np.ndarray, scores: list[float | None],
        reasons: list[list[str]], fallback: bool,
    ) -> RecommendResponse:
        ids = turn.state.maps.item_ids[items].tolist()
        out = RecommendResponse(
            request_id=uuid.uuid4().hex, user_id=req.user_id, known_user=res.user is not None, arm=turn.plan.name,
            experiment=turn.state.arms.experiment,
            items=[Item(item_id=i, position=p, score=s, reasons=r) for p, (i, s, r) in enumerate(zip(ids, scores, reasons))],
            degraded=turn.degraded, fallback=fallback, ignored_items=res.ignored, history_used=int(res.batch.lengths[0]),
            timings_ms={k: round(v, 3) for k, v in turn.timings.items()},
        )
        self._log(turn.state, out, forced=req.arm is not None)
        return out

    def _log(self, state: IngressState, out: RecommendResponse, forced: bool) -> None:
        m = self.metrics
        m.served.labels(out.arm).inc()
        m.latency.labels(out.arm).observe(out.timings_ms["total"] / 1e3)
        m.observe_timings(out.timings_ms)
        if out.ignored_items:
            m.ignored.inc(len(out.ignored_items))
        if state.served_log is not None:
            state.served_log.write({
                "type": "served", "request_id": out.request_id, "time": time.time(), "user_id": out.user_id,
                "arm": out.arm, "experiment": out.experiment, "forced": forced, "run": state.run,
                "items": [i.item_id for i in out.items], "positions": [i.position for i in out.items],
                "degraded": out.degraded, "fallback": out.fallback,
            })
            m.log_dropped.labels("served").set(state.served_log.dropped)
