"""Builders shared by the re-ranker tests (tests/test_rerank_*.py); this module holds no tests.

It is named test_rerank_* only because the re-ranker's files are limited to that pattern."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from pipeline.core.types import CandidateSet, RequestBatch
from rerank.reranker import RerankResult, RuleDiversityReRanker

DAY = 86400
NOW = 100 * DAY
CHANNELS = ("popularity", "item2item")


def item_table(
    categories: Sequence[str],
    brands: Sequence[str] | None = None,
    prices: Sequence[float] | None = None,
    created: Sequence[int] | None = None,
    **extra: Sequence[Any],
) -> pd.DataFrame:
    """A canonical item table: row i describes item i."""
    n = len(categories)
    return pd.DataFrame({
        "item_id": np.arange(n, dtype=np.int64),
        "category": list(categories),
        "brand": list(brands) if brands is not None else [f"b{i}" for i in range(n)],
        "price": np.asarray(prices if prices is not None else np.ones(n), dtype=np.float64),
        "created_at": np.asarray(created if created is not None else np.zeros(n), dtype=np.int64),
        **{k: list(v) for k, v in extra.items()},
    })


def make_pool(items: Sequence[int], scores: Sequence[float] | None = None, found: np.ndarray | None = None) -> CandidateSet:
    """A pool; default scores fall with position (first item best), found by both channels."""
    ids = np.asarray(items, dtype=np.int64)
    m = ids.shape[0]
    s = np.asarray(scores if scores is not None else -np.arange(m, dtype=np.float64), dtype=np.float32)
    f = found if found is not None else np.ones((m, len(CHANNELS)), dtype=bool)
    rank = np.where(f, np.arange(m)[:, None], -1).astype(np.int32)
    cscore = np.where(f, 1.0, np.nan).astype(np.float32)
    return CandidateSet(ids, s, CHANNELS, f, rank, cscore)


def one_batch(history: Sequence[int] = (), now: int = NOW, rows: int = 1) -> RequestBatch:
    hist = [np.asarray(history, dtype=np.int64)] * rows
    return RequestBatch.from_sequences(list(range(rows)), hist, now=[now] * rows)


def run(
    reranker: RuleDiversityReRanker, pool: CandidateSet, k: int, history: Sequence[int] = (), now: int = NOW
) -> RerankResult:
    return reranker.rerank_explained(one_batch(history, now), [pool], k)[0]


def bound(items: pd.DataFrame, vectors: np.ndarray | None = None, **params: Any) -> RuleDiversityReRanker:
    return RuleDiversityReRanker(**params).bind(items, vectors)
