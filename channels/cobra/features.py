"""Per-item inputs of the trainable dense item encoder, computed from content alone.

tokens / weights: the item's `max_tokens` strongest TF-IDF terms (id + 1; 0 pads) and their
  TF-IDF weights, so the encoder learns one vector per word, category level and brand;
content: the fused content vector of encoder.py (frozen input);
price: a quantile bucket (0 = unknown);
id: item id + 1 for items that had interactions at fit time, 0 ("unknown") otherwise; only used
  when the model has an item-id embedding (`id_embedding`), new items always get 0.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from pipeline.core import device


@dataclass(frozen=True)
class ItemFeatures:
    tokens: np.ndarray  # int64 [N, T]
    weights: np.ndarray  # float32 [N, T]
    content: np.ndarray  # float32 [N, Dc]
    price: np.ndarray  # int64 [N]
    ids: np.ndarray  # int64 [N]

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def rows(self, idx: np.ndarray) -> "ItemFeatures":
        return ItemFeatures(*(getattr(self, f.name)[idx] for f in fields(self)))

    def zeros(self, n: int) -> "ItemFeatures":
        """`n` all-zero rows of the same widths and dtypes."""
        return ItemFeatures(*(np.zeros((n, *getattr(self, f.name).shape[1:]), getattr(self, f.name).dtype)
                              for f in fields(self)))

    def set_rows(self, idx: np.ndarray, other: "ItemFeatures") -> "ItemFeatures":
        """A copy with rows `idx` replaced by `other` (grown to max(idx)+1 rows if needed)."""
        n = max(len(self), int(idx.max()) + 1 if idx.size else 0)
        out = {}
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if mine.ndim == 2 and theirs.shape[1] != mine.shape[1]:  # token width differs: pad both
                width = max(mine.shape[1], theirs.shape[1])
                mine, theirs = _pad_cols(mine, width), _pad_cols(theirs, width)
            grown = np.zeros((n, *mine.shape[1:]), mine.dtype)
            grown[: len(mine)] = mine
            grown[idx] = theirs
            out[f.name] = grown
        return ItemFeatures(**out)

    def to_torch(self) -> dict[str, torch.Tensor]:
        return {f.name: device.tensor(np.ascontiguousarray(getattr(self, f.name))) for f in fields(self)}

    def save(self, path: Path) -> None:
        for f in fields(self):
            np.save(Path(path) / f"features_{f.name}.npy", getattr(self, f.name), allow_pickle=False)

    @classmethod
    def load(cls, path: Path) -> "ItemFeatures":
        return cls(**{f.name: np.load(Path(path) / f"features_{f.name}.npy", allow_pickle=False) for f in fields(cls)})


def _pad_cols(a: np.ndarray, width: int) -> np.ndarray:
    return np.pad(a, ((0, 0), (0, width - a.shape[1])))


def top_tokens(tfidf: sp.csr_matrix, max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """The strongest `max_tokens` terms of every row: (ids + 1, 0 padded) and their weights."""
    n = tfidf.shape[0]
    width = max(1, min(max_tokens, int(np.diff(tfidf.indptr).max()) if n and tfidf.nnz else 1))
    tokens = np.zeros((n, width), np.int64)
    weights = np.zeros((n, width), np.float32)
    for r in range(n):
        lo, hi = tfidf.indptr[r], tfidf.indptr[r + 1]
        if hi == lo:
            continue
        cols, vals = tfidf.indices[lo:hi], tfidf.data[lo:hi]
        keep = np.argsort(-vals, kind="stable")[:width]
        tokens[r, : keep.size] = cols[keep] + 1
        weights[r, : keep.size] = vals[keep]
    return tokens, weights


def price_edges(prices: pd.Series, n_buckets: int) -> np.ndarray:
    p = pd.to_numeric(prices, errors="coerce").to_numpy(np.float64)
    p = p[np.isfinite(p) & (p > 0)]
    if p.size == 0 or n_buckets < 2:
        return np.zeros(0)
    return np.unique(np.quantile(np.log1p(p), np.linspace(0, 1, n_buckets + 1)[1:-1]))


def price_buckets(prices: pd.Series | None, edges: np.ndarray, n: int) -> np.ndarray:
    """1 + the quantile bucket of log price; 0 for a missing or non-positive price."""
    if prices is None:
        return np.zeros(n, np.int64)
    p = pd.to_numeric(prices, errors="coerce").to_numpy(np.float64)
    ok = np.isfinite(p) & (p > 0)
    out = np.zeros(n, np.int64)
    out[ok] = 1 + np.searchsorted(edges, np.log1p(p[ok]), side="right")
    return out


def build_features(tfidf: sp.csr_matrix, content: np.ndarray, prices: pd.Series | None, edges: np.ndarray,
                   ids: np.ndarray, known: np.ndarray, max_tokens: int) -> ItemFeatures:
    """Features of the rows of one items frame (all arrays in frame order)."""
    tokens, weights = top_tokens(tfidf, max_tokens)
    id_input = np.where(known, np.asarray(ids, np.int64) + 1, 0)
    return ItemFeatures(tokens, weights, np.ascontiguousarray(content, np.float32),
                        price_buckets(prices, edges, len(ids)), id_input)
