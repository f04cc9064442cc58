"""Offline evaluation harness: build the evaluated requests from a split, run a channel or the
cascade over them in batches, and score the lists (full catalog, seen items excluded)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from pipeline.evaluation import metrics as M
from pipeline.types import PAD, RequestBatch

TopKFn = Callable[[RequestBatch, int], np.ndarray]


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


def run_topk(fn: TopKFn, evalset: EvalSet, k: int, batch_size: int = 1024, desc: str = "") -> tuple[np.ndarray, float]:
    """Call `fn(batch, k)` over the eval set in batches; returns (topk int64 [B, k], seconds)."""
    n = len(evalset)
    out = np.full((n, k), PAD, np.int64)
    start = time.perf_counter()
    for lo in tqdm(range(0, n, batch_size), desc=desc or "evaluate", unit="batch", leave=False, disable=None if n > batch_size else True):
        rows = slice(lo, min(lo + batch_size, n))
        got = np.asarray(fn(evalset.batch.take(rows), k))
        out[rows, : got.shape[1]] = got[:, :k]
    return out, time.perf_counter() - start


def channel_topk_fn(channel) -> TopKFn:
    return lambda batch, k: channel.retrieve(batch, k).items


def score_lists(topk: np.ndarray, evalset: EvalSet, ks: tuple[int, ...], popularity: np.ndarray, n_items: int) -> dict:
    """Accuracy at each k, MRR, coverage, novelty and long-tail recall for one set of lists."""
    ranks = M.target_ranks(topk, evalset.targets)
    out = M.summarize(ranks, ks)
    kmax = max(ks)
    out["coverage@%d" % kmax] = M.catalog_coverage(topk, n_items, kmax)
    out["novelty@%d" % kmax] = M.novelty(topk[:, :kmax], popularity, int(popularity.sum()))
    tail = M.long_tail_mask(popularity)
    in_tail = tail[evalset.targets]
    out["tail_users"] = int(in_tail.sum())
    out["tail_R@%d" % kmax] = float(M.recall_at(ranks[in_tail], kmax).mean()) if in_tail.any() else 0.0
    return out


def per_user(topk: np.ndarray, evalset: EvalSet, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    ranks = M.target_ranks(topk, evalset.targets)
    return {name: M.per_user_metric(ranks, name) for name in names}


def topk_frame(topk: np.ndarray, evalset: EvalSet, user_ids: np.ndarray, item_ids: np.ndarray) -> pd.DataFrame:
    """Long Parquet-ready frame (user_id, rank, item_id) in the dataset's original ids."""
    b, k = topk.shape
    users = np.repeat(evalset.batch.users, k)
    ranks = np.tile(np.arange(1, k + 1), b)
    items = topk.reshape(-1)
    keep = items != PAD
    return pd.DataFrame({
        "user_id": user_ids[users[keep]].astype(str),
        "rank": ranks[keep].astype(np.int32),
        "item_id": item_ids[items[keep]].astype(str),
    })
