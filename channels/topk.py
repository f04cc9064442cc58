"""Turning dense score rows into a channel's answer: mask seen items, take the top k."""
from __future__ import annotations

import numpy as np

from pipeline.types import PAD, RequestBatch, Retrieved


def mask_seen(scores: np.ndarray, batch: RequestBatch) -> np.ndarray:
    """Set the scores of every item each row has seen (its whole history) to -inf (in place;
    returns `scores`). Ids outside the score matrix (items added after fitting) are skipped."""
    rows, items = batch.seen_pairs()
    ok = (items >= 0) & (items < scores.shape[1])
    scores[rows[ok], items[ok]] = -np.inf
    return scores


def top_k(scores: np.ndarray, k: int, valid: np.ndarray | None = None) -> Retrieved:
    """Best-first top k of each row of a dense [B, N] score matrix.

    Entries equal to -inf (masked) or outside `valid` (bool [B, N] or [N]) are never returned;
    rows with fewer eligible items are padded with PAD / -inf. Ties break by lower item index.
    """
    scores = np.asarray(scores, dtype=np.float32)
    if valid is not None:
        scores = np.where(valid, scores, -np.inf)
    n_rows, n_items = scores.shape
    k_eff = min(k, n_items)
    if k_eff <= 0:
        return Retrieved.empty(n_rows, max(k, 0))
    part = np.argpartition(-scores, k_eff - 1, axis=1)[:, :k_eff]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    items = np.take_along_axis(part, order, axis=1).astype(np.int64)
    top = np.take_along_axis(part_scores, order, axis=1)
    items[~np.isfinite(top)] = PAD
    top = np.where(items == PAD, -np.inf, top).astype(np.float32)
    if k > k_eff:
        pad = k - k_eff
        items = np.pad(items, ((0, 0), (0, pad)), constant_values=PAD)
        top = np.pad(top, ((0, 0), (0, pad)), constant_values=-np.inf)
    return Retrieved(items, top)
