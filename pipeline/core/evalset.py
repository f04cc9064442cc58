"""The requests of one evaluation stage, built from a split: every stage that learns from a
held-out fold (the rankers) and the evaluation harness build them the same way."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.core.types import RequestBatch


@dataclass(frozen=True)
class EvalSet:
    """The requests of one stage: each user's history before the target, and the target."""

    stage: str
    batch: RequestBatch
    targets: np.ndarray  # int64 [B]
    target_times: np.ndarray  # int64 [B]

    def __len__(self) -> int:
        return len(self.targets)


def build_eval_set(split, stage: str, max_history: int, max_users: int | None = None, seed: int = 0,
                   request_time: str = "target") -> EvalSet:
    """Requests for `stage` ('valid' or 'test'): history = split.history(stage) rows of the user,
    request time = the target's timestamp (the moment the user came back; `request_time='target'`)
    or the user's last history timestamp (`'last'`: an audit in which nothing about the target's
    time reaches the pipeline)."""
    if request_time not in ("target", "last"):
        raise ValueError(f"request_time must be 'target' or 'last', got {request_time!r}")
    hist = split.history(stage)
    tg = split.targets(stage).sort_values("user_id", kind="stable")
    if max_users is not None and max_users < len(tg):
        pick = np.sort(np.random.default_rng(seed).choice(len(tg), size=max_users, replace=False))
        tg = tg.iloc[pick]
    users = tg["user_id"].to_numpy(np.int64)
    h_users = hist["user_id"].to_numpy(np.int64)
    h_items = hist["item_id"].to_numpy(np.int64)
    h_times = hist["timestamp"].to_numpy(np.int64)
    order = np.argsort(h_users, kind="stable")  # history is sorted already; stay safe
    h_users, h_items, h_times = h_users[order], h_items[order], h_times[order]
    lo = np.searchsorted(h_users, users, "left")
    hi = np.searchsorted(h_users, users, "right")
    seqs = [h_items[a:b] for a, b in zip(lo, hi)]
    times = [h_times[a:b] for a, b in zip(lo, hi)]
    target_times = tg["timestamp"].to_numpy(np.int64)
    now = target_times
    if request_time == "last":  # a user without history gets the history's latest time, never the target's
        latest = int(h_times.max()) if len(h_times) else 0
        now = np.array([t[-1] if len(t) else latest for t in times], np.int64)
    batch = RequestBatch.from_sequences(users, seqs, times, max_len=max_history, now=now)
    return EvalSet(stage, batch, tg["item_id"].to_numpy(np.int64), target_times)
