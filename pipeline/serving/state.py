"""What the ingress holds for one run, and how a request becomes a dense-id batch.

`IngressState` (id maps, trained histories, the fallback, the arms, the /channels answer, logs) is
built once per run and swapped in whole on a rolling update; `resolve` turns one request (original
ids) plus the user's stored events and the unavailable items into the one-row `RequestBatch` the
cascade runs on.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from pipeline.core.protocols import FALLBACK, Channel, declares_role
from pipeline.registry import channel_class
from pipeline.core.types import RequestBatch
from pipeline.serving.ab import ArmTable
from pipeline.serving.api import ChannelInfo, ChannelsResponse, RecommendRequest
from pipeline.serving.catalog import LiveItems, StageKey, first_records
from pipeline.serving.config import ServeConfig
from pipeline.serving.eventlog import EventLog
from pipeline.serving.runview import Histories, IdMaps, RunView
from pipeline.workflow import fallback_channel


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
    live_records: list[dict] = field(default_factory=list)  # the live catalog's records read so far (catalog.py)
    live_checked: float = 0.0  # time.monotonic() of the last read
    key: StageKey | str = ""  # what stage calls carry: the fingerprint, and the live items once there are any

    def __post_init__(self) -> None:
        self.n_trained = len(self.maps.item_ids)  # dense ids from here on are live items: never in a model sequence
        self.key = self.key or self.fingerprint

    def add_live(self, start: int, records: list[dict]) -> list[str]:
        """Records read from the store from position `start` on: new ids join the id maps (dense
        ids in order of their first record). Returns the ids added; records already held are skipped."""
        held = len(self.live_records)
        if start > held:  # a gap: those records are read again from `held` on the next call
            return []
        fresh = records[held - start:]
        if not fresh:
            return []
        added = [r["item_id"] for r in first_records(self.maps.item_index, fresh)]
        self.live_records = self.live_records + fresh
        if added:
            index = dict(self.maps.item_index)
            index.update((item, len(index) + j) for j, item in enumerate(added))
            self.maps = replace(self.maps, item_index=index,
                                item_ids=np.concatenate([self.maps.item_ids.astype(object), np.array(added, dtype=object)]))
        self.key = StageKey(self.fingerprint, LiveItems(len(self.live_records), tuple(self.live_records)))
        return added

    @classmethod
    def build(cls, view: RunView, cfg: ServeConfig, with_logs: bool = True) -> "IngressState":
        served = view.channel_configs()
        # lazily, in order: the classes are imported only up to the first one declaring the role
        first = next((n for n, c in served.items() if declares_role(channel_class(c), FALLBACK)), None)
        fallback = view.load_channel(first) if first else fallback_channel(view.fit_data())
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


def resolve(req: RecommendRequest, state: IngressState, now: int | None = None,
            recent: list[tuple[int, str]] | None = None, exclude: np.ndarray | None = None) -> Resolved:
    """Original ids -> dense ids; the user's trained history, then the events stored since
    (`recent`, items the run does not know skipped), then the sent items. `exclude` (dense ids,
    the items taken out of the catalog) joins the row's seen set, which every channel and the
    pool leave out."""
    user = state.maps.user_index.get(req.user_id) if req.user_id is not None else None
    items, times = (state.histories.of_user(user) if user is not None else (np.zeros(0, np.int64), np.zeros(0, np.int64)))
    if recent:
        known = [(t, state.maps.item_index[i]) for t, i in recent if i in state.maps.item_index]
        if known:
            times = np.concatenate([times, np.array([t for t, _ in known], np.int64)])
            items = np.concatenate([items, np.array([d for _, d in known], np.int64)])
            order = np.argsort(times, kind="stable")
            items, times = items[order], times[order]
    now = now if now is not None else req.now if req.now is not None else int(time.time())
    now = max(now, int(times[-1]) if len(times) else 0)
    sent = [state.maps.item_index.get(i) for i in req.history]
    ignored = [i for i, d in zip(req.history, sent) if d is None]
    recent = np.array([d for d in sent if d is not None], np.int64)
    items = np.concatenate([items, recent])
    times = np.concatenate([times, np.full(len(recent), now, np.int64)])
    # the model sees the last max_history trained items; every item (live ones too) stays in the seen set
    trained = items < state.n_trained
    batch = RequestBatch.from_sequences([user], [items[trained]], [times[trained]], max_len=state.max_history, now=[now],
                                        contexts=[dict(req.context)])
    if (exclude is not None and len(exclude)) or not trained.all():
        seen = np.concatenate([items, exclude if exclude is not None else np.zeros(0, np.int64)]).astype(np.int64)
        batch = replace(batch, seen_items=seen, seen_offsets=np.array([0, len(seen)], np.int64))
    return Resolved(batch, user, ignored)
