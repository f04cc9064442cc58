"""Validation requests for early stopping: each validation user's history (the rows of
`valid_history`) and target, scored through the channel's real retrieval path."""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from pipeline.core import metrics as M
from pipeline.core.types import RequestBatch


def history_batch(history: pd.DataFrame, users: np.ndarray, max_len: int) -> RequestBatch:
    """Left-padded histories of `users` (frame sorted by user then time)."""
    h_users = history["user_id"].to_numpy(np.int64)
    h_items = history["item_id"].to_numpy(np.int64)
    lo = np.searchsorted(h_users, users, "left")
    hi = np.searchsorted(h_users, users, "right")
    return RequestBatch.from_sequences(users, [h_items[a:b] for a, b in zip(lo, hi)], max_len=max_len)


def valid_callback(channel, history: pd.DataFrame, targets: pd.DataFrame, max_users: int | None,
                   seed: int, k: int = 10) -> Callable[[], dict]:
    """A function returning R@10 / N@10 of `channel.retrieve` on (a seeded sample of) the
    validation users."""
    tg = targets.sort_values("user_id", kind="stable")
    if max_users is not None and max_users < len(tg):
        pick = np.sort(np.random.default_rng(seed).choice(len(tg), size=max_users, replace=False))
        tg = tg.iloc[pick]
    users = tg["user_id"].to_numpy(np.int64)
    truth = tg["item_id"].to_numpy(np.int64)
    batch = history_batch(history, users, channel.config.model.max_len)

    def evaluate() -> dict:
        topk = channel.retrieve(batch, k).items
        out = M.summarize(M.target_ranks(topk, truth), (k,))
        return {f"R@{k}": out[f"R@{k}"], f"N@{k}": out[f"N@{k}"]}

    return evaluate
