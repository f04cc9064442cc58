"""Merge channel outputs into one columnar candidate pool per request.

Union of the channels' lists, deduplicated, with provenance kept (which channels found each item,
its rank and score there), per-channel quotas, a total budget and the seen-item filter. When the
union exceeds the budget, items are kept by their best rank in any channel (ties: channel order),
which interleaves the channels fairly. The pool's initial score is reciprocal-rank fusion, so a
pass-through ranker already gives a sensible order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from pipeline.core.types import PAD, CandidateSet, RequestBatch, Retrieved

RRF_K = 60.0


@dataclass(frozen=True)
class PoolSpec:
    quotas: Mapping[str, int]  # channel name -> how many of its items may enter the pool
    budget: int = 500  # total pool size after the union
    exclude_seen: bool = True


def merge_pool(
    batch: RequestBatch,
    outputs: Mapping[str, Retrieved],
    spec: PoolSpec,
    channel_order: tuple[str, ...] | None = None,
) -> list[CandidateSet]:
    """One CandidateSet per request row. `outputs` maps channel name -> its Retrieved for the batch;
    channels missing from `outputs` (degraded) simply contribute nothing but keep their column."""
    names = tuple(channel_order) if channel_order is not None else tuple(outputs)
    n_rows = len(batch)
    pieces = []
    for c, name in enumerate(names):
        out = outputs.get(name)
        if out is None:
            continue
        q = min(int(spec.quotas.get(name, out.items.shape[1])), out.items.shape[1])
        items, scores = out.items[:, :q], out.scores[:, :q]
        rank = np.broadcast_to(np.arange(q, dtype=np.int32), items.shape)
        pieces.append((c, items, scores, rank))
    return [_merge_row(batch, r, pieces, names, spec) for r in range(n_rows)]


def _merge_row(batch: RequestBatch, r: int, pieces: list, names: tuple[str, ...], spec: PoolSpec) -> CandidateSet:
    n_ch = len(names)
    if not pieces:
        return _empty_set(names)
    items = np.concatenate([p[1][r] for p in pieces])
    scores = np.concatenate([p[2][r] for p in pieces]).astype(np.float32)
    ranks = np.concatenate([p[3][r] for p in pieces])
    chans = np.concatenate([np.full(p[1].shape[1], p[0], np.int32) for p in pieces])
    keep = items != PAD
    if spec.exclude_seen:
        keep &= ~np.isin(items, batch.seen_of(r))
    items, scores, ranks, chans = items[keep], scores[keep], ranks[keep], chans[keep]
    uniq, inv = np.unique(items, return_inverse=True)
    m = uniq.shape[0]
    found = np.zeros((m, n_ch), bool)
    ch_rank = np.full((m, n_ch), -1, np.int32)
    ch_score = np.full((m, n_ch), np.nan, np.float32)
    found[inv, chans] = True
    ch_rank[inv, chans] = ranks
    ch_score[inv, chans] = scores
    fused = np.zeros(m, np.float64)
    np.add.at(fused, inv, 1.0 / (RRF_K + ranks + 1.0))
    best_rank = np.where(found, ch_rank, np.iinfo(np.int32).max).min(axis=1)
    first_ch = np.argmax(found, axis=1)
    # keep the best `budget` by (best rank, first channel), then order by fused score
    order = np.lexsort((first_ch, best_rank))[: spec.budget]
    order = order[np.argsort(-fused[order], kind="stable")]
    return CandidateSet(
        uniq[order], fused[order].astype(np.float32), names, found[order], ch_rank[order], ch_score[order]
    )


def _empty_set(names: tuple[str, ...]) -> CandidateSet:
    c = len(names)
    return CandidateSet(
        np.zeros(0, np.int64),
        np.zeros(0, np.float32),
        names,
        np.zeros((0, c), bool),
        np.zeros((0, c), np.int32),
        np.zeros((0, c), np.float32),
    )
