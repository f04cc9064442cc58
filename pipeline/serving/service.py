"""The ingress logic as plain async Python: check limits, resolve ids, pick the arm, run the
cascade's steps (`pipeline.orchestrator`, the same code `Cascade` runs in process) on the stages
under the serving config's time budgets, answer and log.

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
from typing import Protocol

import numpy as np

from pipeline import orchestrator
from pipeline.orchestrator import Budgets, Plan, StageResult
from pipeline.pool import PoolSpec
from pipeline.serving.ab import ArmPlan, UnknownArm
from pipeline.serving.api import (
    EventsRequest, EventsResponse, FeedbackRequest, Item, ItemsRequest, ItemsResponse, ItemState, RecommendRequest,
    RecommendResponse,
)
from pipeline.core.types import CandidateSet, RequestBatch, Retrieved
from pipeline.serving.catalog import StageKey, record_of
from pipeline.serving.config import ServeConfig
from pipeline.serving.history import Event
from pipeline.serving.metrics import Metrics
from pipeline.serving.state import IngressState, Resolved, resolve

__all__ = ["ArmStages", "Backends", "BadRequest", "IngressState", "RecommendService", "Resolved", "StaleRun", "resolve"]

log = logging.getLogger(__name__)


class BadRequest(ValueError):
    """A request the service refuses, with the HTTP status to answer (and, for a 503, when to retry)."""

    def __init__(self, status: int, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after_s = retry_after_s


class StaleRun(RuntimeError):
    """A stage answered from another run's data (mid rolling update): dropped like a failure."""


class Backends(Protocol):
    """The stages as seen by the ingress. `run` is the ingress's data fingerprint: a stage loaded
    from different data raises `StaleRun` (channels) or answers None (ranker, re-ranker)."""

    async def retrieve(self, channel: str, batch: RequestBatch, k: int, run: str) -> Retrieved: ...

    async def score(self, arm: str, batch: RequestBatch, pool: CandidateSet, run: str) -> np.ndarray | None: ...

    async def rerank(self, arm: str, batch: RequestBatch, pool: CandidateSet, k: int, run: str) -> CandidateSet | None: ...

    async def history(self, user_id: str, limit: int) -> list[tuple[int, str]]:
        """The user's last stored events (time, original item id), oldest first."""
        ...

    async def add_events(self, events: list[Event]) -> tuple[int, int]:
        """Store events; (accepted, duplicates). Raises if the store cannot take them."""
        ...

    async def unavailable(self) -> set[str]:
        """Original ids of the items taken out of the catalog."""
        ...

    async def set_available(self, item_ids: list[str], available: bool) -> None: ...

    async def add_items(self, records: list[dict]) -> int:
        """Append item records to the live catalog; its version (records held) after. Raises if the store cannot."""
        ...

    async def live_items(self, start: int) -> list[dict]:
        """The live catalog's records from position `start` on."""
        ...


class ArmStages:
    """`orchestrator.Stages` for one request: the backends, with its arm and the state's data
    fingerprint bound (a stage loaded from other data answers None or raises StaleRun)."""

    def __init__(self, backends: Backends, arm: str, run: StageKey | str, plan: ArmPlan | None = None) -> None:
        self.backends, self.arm, self.run, self.plan = backends, arm, run, plan
        self.group_of: dict[str, str] = getattr(backends, "group_of", {})
        self._pending: dict[str, asyncio.Future] = {}

    async def retrieve(self, channel: str, batch: RequestBatch, k: int) -> Retrieved:
        group = self.group_of.get(channel)
        if group is None or self.plan is None:
            return await self.backends.retrieve(channel, batch, k, self.run)
        if group not in self._pending:  # the first of the group's channels asks for all of them, once
            names = [c for c in self.plan.channels if self.group_of.get(c) == group]
            ks = {c: self.plan.quotas.get(c, k) for c in names}
            self._pending[group] = asyncio.ensure_future(self.backends.retrieve_group(group, names, batch, ks, self.run))
        answers = await asyncio.shield(self._pending[group])  # a channel's budget cancels its wait only
        out = answers[channel]
        if isinstance(out, Exception):
            raise out
        return out

    async def score(self, batch: RequestBatch, pools: list[CandidateSet]) -> list[np.ndarray] | None:
        if len(pools) != 1:
            raise ValueError("the ingress sends one request's pool at a time")
        scores = await self.backends.score(self.arm, batch, pools[0], self.run)
        return None if scores is None else [scores]

    async def rerank(self, batch: RequestBatch, pools: list[CandidateSet], k: int) -> list[CandidateSet] | None:
        final = await self.backends.rerank(self.arm, batch, pools[0], k, self.run)
        return None if final is None else [final]


def plan_of(plan: ArmPlan) -> Plan:
    return Plan(plan.channels, PoolSpec(plan.quotas, plan.budget, plan.exclude_seen))


class RecommendService:
    def __init__(self, state: IngressState | None, backends: Backends, cfg: ServeConfig, metrics: Metrics | None = None) -> None:
        self.state = state
        self.backends = backends
        self.cfg = cfg
        self.metrics = metrics or Metrics()
        # (expires, (run fingerprint, catalog size), dense ids) of the unavailable items
        self._off: tuple[float, tuple[str, int], np.ndarray] | None = None

    def swap(self, state: IngressState) -> IngressState | None:
        """Serve a new run from now on; requests already running finish on the old state."""
        old, self.state = self.state, state
        return old

    def close(self) -> None:
        """Flush and close the logs of the run being served."""
        if self.state is not None:
            self.state.close()

    def current(self) -> IngressState:
        if self.state is None:
            raise BadRequest(503, "the service is loading its run; retry shortly")
        return self.state

    def budgets(self, plan: ArmPlan) -> Budgets:
        return Budgets({n: self.cfg.channel(n).budget_ms for n in plan.channels},
                       self.cfg.ranker.budget_ms, self.cfg.reranker.budget_ms)

    async def run(self, state: IngressState, plan: ArmPlan, batch: RequestBatch, k: int) -> StageResult:
        """The cascade's steps for one resolved request, on the backends."""
        return await orchestrator.run(ArmStages(self.backends, plan.name, state.key, plan), plan_of(plan), batch, k,
                                      fallback=state.fallback, budgets=self.budgets(plan), concurrent=True)

    async def recommend(self, req: RecommendRequest) -> RecommendResponse:
        t0 = time.perf_counter()
        self._check_limits(req)
        state = self.current()
        try:
            plan = state.arms.assign(req.user_id, req.arm)
        except UnknownArm as err:
            raise BadRequest(422, str(err)) from None
        await self._catalog(state)  # first: the unavailable ids may name live items
        (recent, store_failed), exclude = await asyncio.gather(self._recent(req.user_id, state), self._excluded(state))
        res = resolve(req, state, recent=recent, exclude=exclude)
        t1 = time.perf_counter()
        out = await self.run(state, plan, res.batch, req.k)
        if store_failed:  # counted below with the stages, once
            out.degraded.insert(0, "history_store")
            out.reasons["history_store"] = store_failed
        fallback = bool(out.fallback[0]) if out.fallback is not None else False
        if fallback:
            self.metrics.fallback.inc()
        for name in out.degraded:
            self.metrics.degraded.labels(name, out.reasons.get(name, "error")).inc()
        out.timings_ms["resolve"] = (t1 - t0) * 1e3
        out.timings_ms["total"] = (time.perf_counter() - t0) * 1e3
        return self._respond(req, res, state, plan, out, fallback)

    async def warmup(self, max_rounds: int = 20) -> int:
        """Send anonymous requests of each arm through every stage (opens the handles' routes, and
        waits for stages still starting) until a round degrades nothing; not logged. Returns the
        number of rounds."""
        state = self.current()
        batch = RequestBatch.from_sequences([None], [np.zeros(0, np.int64)], now=[int(time.time())])
        for n in range(1, max_rounds + 1):
            degraded: list[str] = []
            if self.cfg.history.backend != "off":
                degraded += ["history_store"] if (await self._recent("\x00warm-up", state))[1] else []
            for plan in state.arms.plans.values():
                stages = ArmStages(self.backends, plan.name, state.key, plan)
                degraded += await orchestrator.touch(stages, plan_of(plan), batch, 10, self.budgets(plan))
            if not degraded and n > 1:
                return n
        return max_rounds

    async def _recent(self, user_id: str | None, state: IngressState) -> tuple[list[tuple[int, str]], str | None]:
        """(the user's stored events, why the store failed: 'timeout', 'error' or None): a store
        that is down or slow leaves the trained history, flagged."""
        if user_id is None or self.cfg.history.backend == "off":
            return [], None
        try:
            call = self.backends.history(user_id, state.max_history)
            return list(await asyncio.wait_for(call, self.cfg.history.budget_ms / 1e3)), None
        except Exception as err:  # outage or timeout: degrade, never fail the request
            log.warning("history store unavailable for a request: %s: %s", type(err).__name__, err)
            return [], "timeout" if isinstance(err, asyncio.TimeoutError) else "error"

    async def _excluded(self, state: IngressState) -> np.ndarray | None:
        """Dense ids of the items taken out of the catalog, reread at most every catalog_ttl_s (a
        store that fails keeps the last set)."""
        if self.cfg.history.backend == "off":
            return None
        cached = self._off
        if cached is not None and cached[0] > time.monotonic() and cached[1] == (state.fingerprint, len(state.maps.item_ids)):
            return cached[2]
        try:
            ids = await asyncio.wait_for(self.backends.unavailable(), self.cfg.history.budget_ms / 1e3)
        except Exception as err:
            log.warning("unavailable items not read: %s: %s", type(err).__name__, err)
            return cached[2] if cached is not None else None
        dense = np.array(sorted(state.maps.item_index[i] for i in ids if i in state.maps.item_index), np.int64)
        self._off = (time.monotonic() + self.cfg.history.catalog_ttl_s, (state.fingerprint, len(state.maps.item_ids)), dense)
        return dense

    async def _catalog(self, state: IngressState, force: bool = False) -> None:
        """Read the live catalog's new records (at most every catalog_ttl_s unless `force`); a
        store that fails leaves the items read before."""
        if self.cfg.history.backend == "off":
            return
        if not force and state.live_checked and time.monotonic() < state.live_checked + self.cfg.history.catalog_ttl_s:
            return
        start = len(state.live_records)
        try:
            fresh = await asyncio.wait_for(self.backends.live_items(start), self.cfg.history.budget_ms / 1e3)
        except Exception as err:
            log.warning("live catalog not read: %s: %s", type(err).__name__, err)
            return
        state.live_checked = time.monotonic()
        if fresh:
            state.add_live(start, list(fresh))

    async def add_items(self, body: ItemsRequest) -> ItemsResponse:
        """Store item records; new ids are served from the next request, known ones are made
        available again (their content waits for the next training)."""
        state = self.current()
        if self.cfg.history.backend == "off":
            raise BadRequest(404, "this server keeps no live catalog (history.backend: off in its serving config)")
        now = int(time.time())
        records = [record_of(i.item_id, i.model_dump(exclude={"item_id"}), now) for i in body.items]
        limit = self.cfg.history.timeout_ms / 1e3 + 1.0
        try:
            await self._catalog(state, force=True)
            if len(state.live_records) + len(records) > self.cfg.history.max_live_items:
                raise BadRequest(409, f"the live catalog holds {len(state.live_records)} records and takes at most "
                                      f"{self.cfg.history.max_live_items} (history.max_live_items) until the next training")
            served = set(state.maps.item_index)
            version = await asyncio.wait_for(self.backends.add_items(records), limit)
            ids = list(dict.fromkeys(r["item_id"] for r in records))
            updated = [i for i in ids if i in served]
            off = await asyncio.wait_for(self.backends.unavailable(), limit)
            if off.intersection(ids):
                await asyncio.wait_for(self.backends.set_available(sorted(off.intersection(ids)), True), limit)
        except BadRequest:
            raise
        except Exception as err:  # never acknowledged: the client retries (a repeated record changes nothing served)
            log.warning("live catalog refused %d items: %s: %s", len(records), type(err).__name__, err)
            raise BadRequest(503, "the history store is unavailable; retry later", retry_after_s=1) from None
        self._off = None
        await self._catalog(state, force=True)
        self.metrics.items.inc(len(records))
        return ItemsResponse(accepted=len(records), added=[i for i in ids if i not in served], updated=updated,
                             version=int(version))

    async def set_available(self, item_id: str, available: bool) -> ItemState:
        """Take an item out of every list (or put it back) from the next request on."""
        state = self.current()
        if self.cfg.history.backend == "off":
            raise BadRequest(404, "this server keeps no live catalog state (history.backend: off in its serving config)")
        if item_id not in state.maps.item_index:
            raise BadRequest(404, f"item '{item_id}' is not in the served catalog")
        try:
            await asyncio.wait_for(self.backends.set_available([item_id], available), self.cfg.history.timeout_ms / 1e3 + 1.0)
        except Exception as err:
            log.warning("availability of %s not stored: %s: %s", item_id, type(err).__name__, err)
            raise BadRequest(503, "the history store is unavailable; nothing was changed, retry later", retry_after_s=1) from None
        self._off = None  # this replica sees it on its next request; others within catalog_ttl_s
        return ItemState(item_id=item_id, available=available)

    async def events(self, body: EventsRequest) -> EventsResponse:
        """Append interactions to the history store; the user's next request reads them."""
        state = self.current()
        if self.cfg.history.backend == "off":
            raise BadRequest(404, "this server keeps no live history (history.backend: off in its serving config)")
        now = int(time.time())
        events = [Event(e.user_id, e.item_id, e.time if e.time is not None else now, e.type,
                        None if e.value is None else float(e.value), e.event_id or "") for e in body.events]
        unknown = sorted({e.item_id for e in events if e.item_id not in state.maps.item_index})
        accepted, duplicates = await self._store(events)
        m = self.metrics.events
        m.labels("accepted").inc(accepted)
        m.labels("duplicate").inc(duplicates)
        m.labels("unknown_item").inc(sum(e.item_id in set(unknown) for e in events))
        return EventsResponse(accepted=accepted, duplicates=duplicates, unknown_items=unknown)

    async def _store(self, events: list[Event]) -> tuple[int, int]:
        try:
            return await asyncio.wait_for(self.backends.add_events(events), self.cfg.history.timeout_ms / 1e3 + 1.0)
        except Exception as err:  # never acknowledged, so the client may retry (ids make it idempotent)
            log.warning("history store refused %d events: %s: %s", len(events), type(err).__name__, err)
            self.metrics.events.labels("refused").inc(len(events))
            raise BadRequest(503, "the history store is unavailable; nothing was stored, retry later", retry_after_s=1) from None

    async def feedback(self, fb: FeedbackRequest) -> bool:
        """Log a click (or other event) on a served list, and add it to the user's live history
        when a user id is given; False when the log is off or full."""
        state = self.current()
        if fb.user_id is not None and self.cfg.history.backend != "off":
            event = Event(fb.user_id, fb.item_id, int(time.time()), fb.event, None, f"feedback:{fb.request_id}:{fb.item_id}:{fb.event}")
            try:
                await self._store([event])
            except BadRequest:  # the click is still logged below
                pass
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

    def _respond(
        self, req: RecommendRequest, res: Resolved, state: IngressState, plan: ArmPlan, out: StageResult, fallback: bool,
    ) -> RecommendResponse:
        final = out.final[0]
        known = np.flatnonzero(final.items[: req.k] < len(state.maps.item_ids))  # a stage ahead of this replica's catalog
        items = final.items[known].astype(np.int64)
        scores = [float(final.scores[j]) if np.isfinite(final.scores[j]) else None for j in known]
        given = final.reasons or [()] * len(final.items)
        reasons = [list(given[j]) for j in known]
        ids = state.maps.item_ids[items].tolist()
        answer = RecommendResponse(
            request_id=uuid.uuid4().hex, user_id=req.user_id, known_user=res.user is not None, arm=plan.name,
            experiment=state.arms.experiment,
            items=[Item(item_id=i, position=p, score=s, reasons=r) for p, (i, s, r) in enumerate(zip(ids, scores, reasons))],
            degraded=list(out.degraded), fallback=fallback, ignored_items=res.ignored, history_used=int(res.batch.lengths[0]),
            timings_ms={k: round(v, 3) for k, v in out.timings_ms.items()},
        )
        self._log(state, answer, forced=req.arm is not None)
        return answer

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
