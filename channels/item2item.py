"""Item-to-item co-visitation (item-CF) over users' sequences, with distance and time decay.

Fit: for every pair of items within `window` positions of each other in a user's sequence, add
weight to C[a, b] (a earlier, b later: `forward_weight`; the reverse direction: `backward_weight`),
divided by distance**distance_power and decayed by the time gap between the two interactions.
Columns are then divided by popularity**pop_alpha (a damping of popular targets).
Retrieve: the last `history_len` items of a request, weighted by history_decay**age, are multiplied
into C; seen items are excluded. One sparse matrix product per batch.
The defaults are the best of a grid on Amazon Beauty's validation split (bench/classic_channels.py).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from pydantic import Field

from channels.topk import top_k_pairs
from pipeline.core.artifacts import atomic_write_json, atomic_write_parquet, read_json
from pipeline.core.protocols import FitData
from pipeline.core.schema import Configured, PartsConfig
from pipeline.core.types import DAY, PAD, RequestBatch, Retrieved


class ItemToItemConfig(PartsConfig):
    window: int = Field(5, description="positions apart a pair may be to count")
    forward_weight: float = Field(1.0, description="weight of a pair in sequence order (a before b)")
    backward_weight: float = Field(0.25, description="weight of the reverse direction")
    distance_power: float = Field(1.0, description="a pair's weight is divided by distance ** this")
    time_decay_days: float | None = Field(None, description="half-life of a pair's weight over the time gap (None: none)")
    pop_alpha: float = Field(0.0, description="columns divided by popularity ** this (damps popular targets)")
    history_len: int = Field(5, description="last history items a request is scored from")
    history_decay: float = Field(0.3, description="weight of a history item: history_decay ** its age")


class ItemToItemChannel(Configured):
    config_class = ItemToItemConfig  # what a config's `params` are checked against (pipeline/params.py)
    default_name = "item2item"

    def fit(self, data: FitData) -> "ItemToItemChannel":
        frame = data.train
        users = frame["user_id"].to_numpy(np.int64)
        items = frame["item_id"].to_numpy(np.int64)
        ts = frame["timestamp"].to_numpy(np.float64)
        rows, cols, vals = [], [], []
        for d in range(1, self.config.window + 1):
            same = users[d:] == users[:-d]
            a, b = items[:-d][same], items[d:][same]
            w = np.full(a.shape[0], 1.0 / d**self.config.distance_power)
            if data.has_time and self.config.time_decay_days:
                gap = (ts[d:][same] - ts[:-d][same]) / DAY
                w = w * 0.5 ** (gap / self.config.time_decay_days)
            rows += [a, b]
            cols += [b, a]
            vals += [w * self.config.forward_weight, w * self.config.backward_weight]
        n = data.n_items
        if rows:
            mat = sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
        else:
            mat = sp.coo_matrix((n, n))
        mat = mat.tocsr()
        mat.sum_duplicates()
        if self.config.pop_alpha:
            pop = np.bincount(items, minlength=n).astype(np.float64)
            mat = mat @ sp.diags(1.0 / np.maximum(pop, 1.0) ** self.config.pop_alpha)
        mat.eliminate_zeros()
        self.matrix_ = mat.astype(np.float32).tocsr()
        return self

    def _query_matrix(self, batch: RequestBatch) -> sp.csr_matrix:
        hist = batch.history[:, -self.config.history_len :]
        age = np.arange(hist.shape[1])[::-1]  # 0 for the most recent column
        weights = np.broadcast_to(self.config.history_decay ** age, hist.shape)
        r, c = np.nonzero((hist != PAD) & (hist < self.matrix_.shape[0]))  # items added after fitting: no neighbours
        return sp.csr_matrix((weights[r, c], (r, hist[r, c])), shape=(len(batch), self.matrix_.shape[0]))

    def _covisit_scores(self, batch: RequestBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, items, scores) of the query matrix times the co-visitation matrix, one entry per
        (row, item) with a nonzero product. The matrix rows of the history items are gathered and
        summed directly: the cost follows their neighbours, never the catalog (a sparse matrix
        product allocates a workspace as wide as the catalog on every call)."""
        query = self._query_matrix(batch).tocoo()
        mat = self.matrix_
        starts, sizes = mat.indptr[query.col], np.diff(mat.indptr)[query.col]
        total = int(sizes.sum())
        if total == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64)
        offsets = np.repeat(starts - (np.cumsum(sizes) - sizes), sizes) + np.arange(total)
        rows = np.repeat(query.row.astype(np.int64), sizes)
        cols = mat.indices[offsets].astype(np.int64)
        vals = mat.data[offsets].astype(np.float64) * np.repeat(query.data, sizes)
        keys, where = np.unique(rows * mat.shape[1] + cols, return_inverse=True)
        return keys // mat.shape[1], keys % mat.shape[1], np.bincount(where, weights=vals)

    def retrieve(self, batch: RequestBatch, k: int) -> Retrieved:
        if not hasattr(self, "matrix_"):
            raise RuntimeError(f"channel '{self.name}': call fit() or load() before retrieve()")
        rows, items, vals = self._covisit_scores(batch)
        keep = (vals > 0) & ~batch.is_seen(rows, items)  # only co-visited, unseen items are candidates
        return top_k_pairs(rows[keep], items[keep], vals[keep], len(batch), k)

    def neighbours(self, item: int, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The k items most co-visited with `item` (for inspection and the re-ranker's reasons)."""
        row = self.matrix_.getrow(item)
        order = np.argsort(-row.data, kind="stable")[:k]
        return row.indices[order].astype(np.int64), row.data[order]

    def save(self, path: Path) -> None:
        path = Path(path)
        coo = self.matrix_.tocoo()
        frame = pd.DataFrame({"row": coo.row.astype(np.int64), "col": coo.col.astype(np.int64), "value": coo.data})
        atomic_write_parquet(path / "matrix.parquet", frame)
        atomic_write_json(path / "params.json", self._params() | {"n_items": self.matrix_.shape[0]})

    @classmethod
    def load(cls, path: Path) -> "ItemToItemChannel":
        path = Path(path)
        meta = read_json(path / "params.json")
        n = meta.pop("n_items")
        ch = cls(**meta)
        f = pd.read_parquet(path / "matrix.parquet")
        ch.matrix_ = sp.csr_matrix((f["value"].to_numpy(np.float32), (f["row"], f["col"])), shape=(n, n))
        return ch
