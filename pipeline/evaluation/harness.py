"""Offline evaluation harness: build the evaluated requests from a split, run a channel or the
cascade over them in batches, and score the lists (full catalog, seen items excluded)."""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from pipeline.core import metrics as M
from pipeline.core.evalset import EvalSet, build_eval_set
from pipeline.core.types import PAD, RequestBatch

__all__ = ["EvalSet", "TopKFn", "build_eval_set", "channel_topk_fn", "per_user", "run_topk", "score_lists", "topk_frame"]

TopKFn = Callable[[RequestBatch, int], np.ndarray]


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
