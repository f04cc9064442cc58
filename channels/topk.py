"""Turning dense score rows into a channel's answer: mask seen items, take the top k."""
from __future__ import annotations

import numpy as np

from pipeline.core.types import PAD, RequestBatch, Retrieved


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
    part = _top_columns(scores, k_eff)
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


def _top_columns(scores: np.ndarray, k: int) -> np.ndarray:
    """Columns [B, k] of each row's k best scores, where a tie at the cut keeps the lower
    indices (argpartition alone keeps an arbitrary one of the tied entries)."""
    if k == scores.shape[1]:
        return np.broadcast_to(np.arange(k), scores.shape).copy()
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    cut = np.take_along_axis(scores, part, axis=1).min(axis=1, keepdims=True)
    above = scores > cut
    tied = scores == cut
    need = k - above.sum(axis=1, keepdims=True)
    chosen = above | (tied & (np.cumsum(tied, axis=1) <= need))
    return np.nonzero(chosen)[1].reshape(len(scores), k)


def top_k_pairs(rows: np.ndarray, items: np.ndarray, scores: np.ndarray, n_rows: int, k: int) -> Retrieved:
    """Best-first top k of each row from candidate (row, item, score) triples, the sparse twin
    of `top_k`: the same order (score descending, ties by lower item index), -inf never returned,
    rows with fewer candidates padded with PAD / -inf. Each (row, item) pair must appear once."""
    rows, items = np.asarray(rows, np.int64), np.asarray(items, np.int64)
    scores = np.asarray(scores, np.float32)
    out = Retrieved.empty(n_rows, max(k, 0))
    keep = np.isfinite(scores)
    rows, items, scores = rows[keep], items[keep], scores[keep]
    if k <= 0 or not len(rows):
        return out
    order = np.lexsort((items, -scores, rows))
    rows, items, scores = rows[order], items[order], scores[order]
    starts = np.searchsorted(rows, rows, side="left")  # first position of each entry's row
    rank = np.arange(len(rows)) - starts
    take = rank < k
    out.items[rows[take], rank[take]] = items[take]
    out.scores[rows[take], rank[take]] = scores[take]
    return out
