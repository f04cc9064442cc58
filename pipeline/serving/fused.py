"""The fused topology (`topology: fused` in the serving config): each ingress replica holds every
stage of the run in its own process and answers the requests that arrive together as one batch.

The split topology (one deployment per channel, ranker and re-ranker) pays a process hop per stage
and per request; on a small node those hops cost more than the models. Fused, a request goes
proxy -> ingress and the ingress runs `pipeline.orchestrator` on the in-process stages, the same
code and stages `Cascade` runs offline, on a batch of the requests that queued while the previous
batch was computed (`MicroBatcher`). The compute runs in one worker thread, so the replica's event
loop keeps reading requests meanwhile. Scale it with ingress replicas (or autoscaling); the live
history store stays its own deployment (or Redis).

What it gives up: per-stage replicas, a per-channel time budget (an in-process call cannot be cut
off; a slow channel slows its batch) and the per-stage fault drills. A channel that raises is
still dropped for its batch and named in `degraded`, as is a failing ranker or re-ranker; a
channel that fails for some rows only flags every row of the batch.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import Any, Callable

import numpy as np

from pipeline import orchestrator
from pipeline.cascade import PlainStages
from pipeline.core.types import RequestBatch, Retrieved
from pipeline.orchestrator import StageResult
from pipeline.serving.ab import ArmPlan
from pipeline.serving.catalog import split_key
from pipeline.serving.components import ChannelComponent, RankerComponent, RerankComponent, stack_batches
from pipeline.serving.config import ServeConfig
from pipeline.serving.runview import RunView
from pipeline.serving.service import Backends, BadRequest, IngressState, RecommendService, plan_of

log = logging.getLogger(__name__)


class MicroBatcher:
    """Calls made while a batch is being computed wait and go together as the next batch (at most
    `max_batch_size`). `compute(items) -> results` runs in one worker thread, one batch at a time;
    a result that is an exception is raised to its caller only."""

    def __init__(self, compute: Callable[[list[Any]], list[Any]], max_batch_size: int) -> None:
        self.compute = compute
        self.max_batch_size = max_batch_size
        self._queue: list[tuple[Any, asyncio.Future]] = []
        self._draining = False
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fused-cascade")
        self.batches = 0  # how many batches ran, and over how many items (for the mean batch size)
        self.items = 0

    async def submit(self, item: Any) -> Any:
        future = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if not self._draining:
            self._draining = True
            asyncio.ensure_future(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                await asyncio.sleep(0)  # calls made in this loop turn join the batch
                taken = [(i, f) for i, f in self._queue[: self.max_batch_size] if not f.done()]
                del self._queue[: self.max_batch_size]
                if not taken:
                    continue
                self.batches, self.items = self.batches + 1, self.items + len(taken)
                try:
                    results = await loop.run_in_executor(self._worker, self.compute, [i for i, _ in taken])
                except Exception as err:  # the batch's callers get the error; the next batch runs
                    for _, future in taken:
                        if not future.done():
                            future.set_exception(err)
                    continue
                for (_, future), result in zip(taken, results):
                    if future.done():  # a caller that gave up (cancelled) is skipped
                        continue
                    if isinstance(result, Exception):  # that item failed alone
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._draining = False

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)


class InProcessStages:
    """Every stage of one run in this process: `orchestrator.Stages` for one arm at a time.
    Only the batcher's worker thread calls it, so the live-catalog catch-up needs no lock."""

    def __init__(self, view: RunView, cfg: ServeConfig) -> None:
        threads = cfg.ingress.threads
        self.channels = {name: ChannelComponent(view, name, threads) for name in view.channel_configs()}
        self.ranker = RankerComponent(view, cfg, threads)
        self.reranker = RerankComponent(view, cfg, threads)
        self.fingerprint = view.fingerprint

    def catch_up(self, key: Any) -> None:
        """Apply the live items `key` carries that a stage has not applied yet."""
        fingerprint, live = split_key(key)
        if live is None or live.records is None or fingerprint not in (None, self.fingerprint):
            return
        stages = [*self.channels.items(), ("ranker", self.ranker), ("reranker", self.reranker)]
        for name, stage in stages:
            if stage.live.behind(live):
                try:
                    stage.live.catch_up(live.records)
                except Exception as err:  # that stage serves without the new items (tried again next batch)
                    log.warning("live items not applied to %s: %s: %s", name, type(err).__name__, err)

    def for_arm(self, arm: str) -> PlainStages:
        """The stages one arm runs (its ranker and re-ranker settings; the channels are shared)."""
        return PlainStages(self.channels, self.ranker.by_arm[arm], self.reranker.by_arm[arm])


def row_of(res: StageResult, r: int) -> StageResult:
    """Row `r` of a batch's result, as the one-row result of a single request."""
    outputs = {name: Retrieved(o.items[r: r + 1], o.scores[r: r + 1], None if o.failed is None else o.failed[r: r + 1])
               for name, o in res.outputs.items()}
    fallback = None if res.fallback is None else res.fallback[r: r + 1]
    return StageResult(outputs, [res.pools[r]], [res.final[r]], list(res.degraded), dict(res.timings_ms),
                       dict(res.reasons), fallback)


class FusedService(RecommendService):
    """`RecommendService` whose cascade runs on in-process stages, a batch of requests at a time.
    The history store and the live catalog are still reached through `backends`."""

    def __init__(self, backends: Backends, cfg: ServeConfig) -> None:
        super().__init__(None, backends, cfg)
        self.stages: dict[int, InProcessStages] = {}  # id(state) -> its stages (the current run and the one before)
        self.batcher = MicroBatcher(self._compute, cfg.ingress.max_batch_size)

    def install(self, state: IngressState, stages: InProcessStages) -> IngressState | None:
        """Serve `state` with `stages` from now on; requests still running keep the previous pair."""
        old = self.swap(state)
        self.stages = {id(s): self.stages[id(s)] for s in (old,) if s is not None and id(s) in self.stages}
        self.stages[id(state)] = stages
        return old

    async def run(self, state: IngressState, plan: ArmPlan, batch: RequestBatch, k: int) -> StageResult:
        return await self.batcher.submit((state, plan, batch, k))

    async def warmup(self, max_rounds: int = 1) -> int:
        """One anonymous and one known-user request per arm through the in-process stages (one
        round: nothing here is opened lazily over the network). Returns 1."""
        state = self.current()
        anonymous = RequestBatch.from_sequences([None], [np.zeros(0, np.int64)])
        for plan in state.arms.plans.values():
            for batch in (anonymous, RequestBatch.from_sequences([0], [np.zeros(1, np.int64)])):
                await self.run(state, plan, batch, 10)
        return 1

    def _compute(self, items: list[tuple[IngressState, ArmPlan, RequestBatch, int]]) -> list[StageResult | BadRequest]:
        """The worker thread's side: one orchestrator run per (run, arm, k) group of the batch."""
        groups: dict[tuple[int, str, int], list[int]] = {}
        for i, (state, plan, _, k) in enumerate(items):
            groups.setdefault((id(state), plan.name, k), []).append(i)
        out: list[StageResult | BadRequest | None] = [None] * len(items)
        for (sid, arm, k), rows in groups.items():
            state, plan = items[rows[0]][0], items[rows[0]][1]
            stages = self.stages.get(sid)
            if stages is None:  # resolved two rolling updates ago: only its own requests fail, retryably
                for i in rows:
                    out[i] = BadRequest(503, "the run this request was resolved with is no longer loaded; retry", retry_after_s=1)
                continue
            stages.catch_up(state.key)
            batch = stack_batches([items[i][2] for i in rows])
            res = orchestrator.drive(orchestrator.run(stages.for_arm(arm), plan_of(plan), batch, k, fallback=state.fallback))
            self.metrics.batch_rows.observe(len(rows))
            for r, i in enumerate(rows):
                out[i] = row_of(res, r)
        return out

    def close(self) -> None:
        super().close()
        self.batcher.close()
