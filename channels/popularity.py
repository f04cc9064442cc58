"""Time-decayed popularity, point-in-time: a request at time t sees only interactions before t.

Interactions are bucketed in time (bucket_days); the decayed count of every item is kept at the
start of each bucket, so a request in bucket b is answered from the state before b starts and never
sees an interaction from its own future. Without timestamps (has_time False) it is plain counts.
Optionally restricted to the category named in the request context (`context['category']`).

A request costs O(k + seen), not O(catalog): every bucket keeps its `head` best items in order, a
row walks that list past its seen items, and only a row that runs off the end (it has seen most of
the head) is scored over the whole catalog. A category request scores that category's items only.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from channels.topk import mask_seen, top_k, top_k_pairs
from pipeline.core.artifacts import atomic_write_json, read_json
from pipeline.core.protocols import FALLBACK, FitData
from pipeline.core.schema import Configured, PartsConfig
from pipeline.core.types import DAY, RequestBatch, Retrieved


class PopularityConfig(PartsConfig):
    half_life_days: float | None = Field(7.0, description="decay half-life of a count (None: no decay)")
    bucket_days: float = Field(7.0, description="width of the time buckets the state is kept at")
    point_in_time: bool = Field(True, description="a request sees only interactions before its time")
    by_context_category: bool = Field(True, description="restrict to context['category'] when a request names one")
    head: int = Field(2048, description="best items kept in order per bucket (requests walk this list)")

    @field_validator("head")
    @classmethod
    def _head(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"popularity: head must be >= 1, got {v}")
        return v


class PopularityChannel(Configured):
    roles: ClassVar[tuple[str, ...]] = (FALLBACK,)  # needs no history: it can answer when the others fail
    config_class = PopularityConfig  # what a config's `params` are checked against (pipeline/params.py)
    default_name = "popularity"

    def fit(self, data: FitData) -> "PopularityChannel":
        items = data.train["item_id"].to_numpy(np.int64)
        use_time = data.has_time and self.config.point_in_time
        ts = data.train["timestamp"].to_numpy(np.float64) if data.has_time else np.zeros(len(items))
        self.t0_ = float(ts.min()) if len(ts) else 0.0
        width = self.config.bucket_days * DAY
        n_buckets = int((ts.max() - self.t0_) // width) + 1 if (use_time and len(ts)) else 1
        bucket = ((ts - self.t0_) // width).astype(np.int64) if use_time else np.zeros(len(items), np.int64)
        counts = np.zeros((n_buckets, data.n_items), np.float64)
        np.add.at(counts, (bucket, items), 1.0)
        decay = 1.0
        if data.has_time and self.config.half_life_days:
            decay = 0.5 ** (self.config.bucket_days / self.config.half_life_days)
        # state_[b] = decayed counts of everything strictly before bucket b; the last row is "now"
        state = np.zeros((n_buckets + 1, data.n_items), np.float32)
        acc = np.zeros(data.n_items, np.float64)
        for b in range(n_buckets):
            state[b] = acc
            acc = acc * decay + counts[b]
        state[n_buckets] = acc
        self.state_ = state
        # tiny deterministic tie-break by overall count, so cold buckets still rank sensibly
        self.tiebreak_ = (np.bincount(items, minlength=data.n_items) * 1e-6).astype(np.float32)
        self.categories_ = data.items["category"].astype(str).to_numpy() if "category" in data.items else None
        self.use_time_ = use_time
        self._index()
        return self

    def _index(self) -> None:
        """Per bucket, the `head` best items in answer order; per category, its items."""
        n = self.state_.shape[1]
        h = min(self.config.head, n)
        order = np.empty((self.state_.shape[0], h), np.int64)
        for b, row in enumerate(self.state_):
            scores = row + self.tiebreak_  # float32, exactly what the dense path ranks
            part = np.argpartition(-scores, h - 1)[:h] if h < n else np.arange(n)
            order[b] = part[np.lexsort((part, -scores[part]))]
        self.head_ = order
        self.category_items_ = {}
        if self.categories_ is not None:
            codes, uniq = pd.factorize(self.categories_, sort=True)
            by = np.argsort(codes, kind="stable")
            bounds = np.searchsorted(codes[by], np.arange(len(uniq) + 1))
            self.category_items_ = {str(c): by[bounds[i]:bounds[i + 1]] for i, c in enumerate(uniq)}

    def _rows(self, batch: RequestBatch) -> np.ndarray:
        if not self.use_time_:
            return np.full(len(batch), self.state_.shape[0] - 1)
        width = self.config.bucket_days * DAY
        b = np.floor((batch.now.astype(np.float64) - self.t0_) / width).astype(np.int64)
        return np.clip(b, 0, self.state_.shape[0] - 1)

    def retrieve(self, batch: RequestBatch, k: int) -> Retrieved:
        if not hasattr(self, "state_"):
            raise RuntimeError(f"channel '{self.name}': call fit() or load() before retrieve()")
        rows = self._rows(batch)
        out = Retrieved.empty(len(batch), k)
        wanted = self._wanted(batch)
        plain = np.array([w is None for w in wanted], bool)
        for r in np.flatnonzero(~plain):  # a category: score its items only
            items = self.category_items_.get(str(wanted[r]), np.zeros(0, np.int64))
            self._fill(out, batch, np.array([r]), rows[r:r + 1], items[None, :], k)
        where = np.flatnonzero(plain)
        if len(where):
            # a row has at most max_seen seen items, so the first k + max_seen of the head hold k unseen
            width = min(self.head_.shape[1], k + batch.max_seen())
            fresh = self._fill(out, batch, where, rows[where], self.head_[rows[where], :width], k)
            short = where[(fresh < k) & (width < self.state_.shape[1])]
            if len(short):  # ran off the stored head: the whole catalog for those rows
                sub = batch.take(short)
                dense = top_k(mask_seen(self.state_[rows[short]] + self.tiebreak_, sub), k)
                out.items[short], out.scores[short] = dense.items, dense.scores
        return out

    def _fill(self, out: Retrieved, batch: RequestBatch, where: np.ndarray, buckets: np.ndarray,
              cand: np.ndarray, k: int) -> np.ndarray:
        """Answer rows `where` of `out` from candidate items cand [len(where), C] of their buckets;
        returns how many unseen candidates each row had."""
        fresh = ~batch.is_seen(where[:, None], cand)
        r, c = np.nonzero(fresh)
        items = cand[r, c]
        found = top_k_pairs(r, items, self.state_[buckets[r], items] + self.tiebreak_[items], len(where), k)
        out.items[where], out.scores[where] = found.items, found.scores
        return fresh.sum(axis=1)

    def _wanted(self, batch: RequestBatch) -> list:
        if not self.config.by_context_category or self.categories_ is None or not batch.contexts:
            return [None] * len(batch)
        return [c.get("category") if c else None for c in batch.contexts]

    def retrieve_dense(self, batch: RequestBatch, k: int) -> Retrieved:
        """The same answer scored over the whole catalog (the reference the fast path is tested on)."""
        scores = self.state_[self._rows(batch)] + self.tiebreak_
        mask_seen(scores, batch)
        return top_k(scores, k, self._category_mask(batch))

    def _category_mask(self, batch: RequestBatch) -> np.ndarray | None:
        wanted = self._wanted(batch)
        if all(w is None for w in wanted):
            return None
        mask = np.ones((len(batch), self.categories_.shape[0]), bool)
        for r, w in enumerate(wanted):
            if w is not None:
                mask[r] = self.categories_ == str(w)
        return mask

    # persistence: JSON parameters + .npy arrays (no pickle)
    def save(self, path: Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        np.save(path / "state.npy", self.state_, allow_pickle=False)
        np.save(path / "tiebreak.npy", self.tiebreak_, allow_pickle=False)
        if self.categories_ is not None:
            (path / "categories.json").write_text(json.dumps(self.categories_.tolist()))
        atomic_write_json(path / "params.json", self._params() | {"t0": self.t0_, "use_time": self.use_time_})

    @classmethod
    def load(cls, path: Path) -> "PopularityChannel":
        path = Path(path)
        meta = read_json(path / "params.json")
        t0, use_time = meta.pop("t0"), meta.pop("use_time")
        ch = cls(**meta)
        ch.t0_, ch.use_time_ = float(t0), bool(use_time)
        ch.state_ = np.load(path / "state.npy", allow_pickle=False)
        ch.tiebreak_ = np.load(path / "tiebreak.npy", allow_pickle=False)
        cat = path / "categories.json"
        ch.categories_ = np.array(json.loads(cat.read_text()), dtype=object) if cat.exists() else None
        ch._index()
        return ch
