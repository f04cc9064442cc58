"""Item content features for the item tower: categorical codes, price buckets and hashed text.

`ItemFeatureEncoder.fit(items)` learns the vocabularies (category, brand, full category path) and
the price-bucket edges from the canonical item table; `transform(items)` turns any item frame,
including items that arrive after training, into `ItemFeatures` arrays. Code 0 of every field
means "unknown / missing", so a brand never seen in training maps to 0 instead of failing.
Text tokens (title words and category-path levels) are hashed with crc32 (stable across
processes, unlike Python's `hash`) into `text_buckets - 1` buckets; 0 is padding.
Persistence is JSON (vocabularies, edges) plus .npy arrays, never pickle.
"""
from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.artifacts import atomic_write_json, read_json

_TOKEN = re.compile(r"[a-z0-9]+")
CATEGORICAL = ("category", "brand", "path")  # 'path' is the full '|' category path
ARRAYS = ("category", "brand", "path", "price", "tokens")


@dataclass(frozen=True)
class ItemFeatures:
    """Columnar content features of n items (row i = the i-th item of the frame)."""

    category: np.ndarray  # int64 [n], 0 = unknown
    brand: np.ndarray  # int64 [n], 0 = unknown
    path: np.ndarray  # int64 [n], 0 = unknown
    price: np.ndarray  # int64 [n], 0 = unknown price, 1..price_buckets
    tokens: np.ndarray  # int64 [n, max_tokens], 0 = padding

    def __len__(self) -> int:
        return int(self.category.shape[0])

    def has_content(self) -> bool:
        """False when no item has any known category, brand, path, price or text token (a catalog
        without metadata): content embeddings would then add the same vector to every item."""
        return bool(any(getattr(self, a).any() for a in ARRAYS))

    def concat(self, other: "ItemFeatures") -> "ItemFeatures":
        return ItemFeatures(*(np.concatenate([getattr(self, a), getattr(other, a)]) for a in ARRAYS))

    def save(self, path: Path) -> None:
        for a in ARRAYS:
            np.save(Path(path) / f"features_{a}.npy", getattr(self, a), allow_pickle=False)

    @classmethod
    def load(cls, path: Path) -> "ItemFeatures":
        return cls(*(np.load(Path(path) / f"features_{a}.npy", allow_pickle=False) for a in ARRAYS))


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def hash_token(token: str, buckets: int) -> int:
    """A stable bucket in 1..buckets-1 (0 is padding)."""
    return zlib.crc32(token.encode("utf-8")) % (buckets - 1) + 1


def _column(items: pd.DataFrame, name: str) -> np.ndarray:
    if name not in items.columns:
        return np.full(len(items), "", dtype=object)
    col = items[name].astype(object)
    return col.where(col.notna(), "").map(str).to_numpy(dtype=object)


class ItemFeatureEncoder:
    def __init__(self, *, text_buckets: int = 32768, max_tokens: int = 32, price_buckets: int = 10,
                 min_count: int = 2) -> None:
        if text_buckets < 2:
            raise ValueError(f"text_buckets must be >= 2, got {text_buckets}")
        self.text_buckets = text_buckets
        self.max_tokens = max_tokens
        self.price_buckets = price_buckets
        self.min_count = min_count

    def fit(self, items: pd.DataFrame) -> "ItemFeatureEncoder":
        """Vocabularies keep values seen on at least `min_count` items (rarer ones -> unknown)."""
        self.vocab_ = {}
        for name in CATEGORICAL:
            values = pd.Series(self._raw(items, name))
            counts = values[values != ""].value_counts()
            keep = sorted(counts[counts >= self.min_count].index.tolist())
            self.vocab_[name] = {v: i + 1 for i, v in enumerate(keep)}
        price = items["price"].to_numpy(np.float64) if "price" in items else np.zeros(0)
        known = price[np.isfinite(price)]
        qs = np.linspace(0, 1, self.price_buckets + 1)[1:-1]
        self.price_edges_ = np.unique(np.quantile(known, qs)) if known.size else np.zeros(0)
        return self

    def _raw(self, items: pd.DataFrame, name: str) -> np.ndarray:
        return _column(items, "categories" if name == "path" else name)

    def cardinalities(self) -> dict[str, int]:
        """Embedding-table sizes (unknown row included) for each field."""
        sizes = {name: len(self.vocab_[name]) + 1 for name in CATEGORICAL}
        sizes["price"] = self.price_buckets + 1
        sizes["tokens"] = self.text_buckets
        return sizes

    def transform(self, items: pd.DataFrame) -> ItemFeatures:
        if not hasattr(self, "vocab_"):
            raise RuntimeError("ItemFeatureEncoder: call fit() or load() before transform()")
        codes = {name: np.array([self.vocab_[name].get(v, 0) for v in self._raw(items, name)], np.int64)
                 for name in CATEGORICAL}
        price = items["price"].to_numpy(np.float64) if "price" in items else np.full(len(items), np.nan)
        bucket = np.where(np.isfinite(price), np.searchsorted(self.price_edges_, np.nan_to_num(price), "right") + 1, 0)
        return ItemFeatures(codes["category"], codes["brand"], codes["path"], bucket.astype(np.int64),
                            self._tokens(items))

    def _tokens(self, items: pd.DataFrame) -> np.ndarray:
        out = np.zeros((len(items), self.max_tokens), np.int64)
        for row, (title, path) in enumerate(zip(_column(items, "title"), _column(items, "categories"))):
            words = tokenize(title) + ["cat:" + level.strip().lower() for level in path.split("|") if level.strip()]
            ids = list(dict.fromkeys(hash_token(w, self.text_buckets) for w in words))[: self.max_tokens]
            out[row, : len(ids)] = ids
        return out

    def save(self, path: Path) -> None:
        atomic_write_json(Path(path) / "features.json", {
            "text_buckets": self.text_buckets, "max_tokens": self.max_tokens,
            "price_buckets": self.price_buckets, "min_count": self.min_count,
            "vocab": {name: sorted(v, key=v.get) for name, v in self.vocab_.items()},
            "price_edges": self.price_edges_.tolist(),
        })

    @classmethod
    def load(cls, path: Path) -> "ItemFeatureEncoder":
        meta = read_json(Path(path) / "features.json")
        enc = cls(text_buckets=meta["text_buckets"], max_tokens=meta["max_tokens"],
                  price_buckets=meta["price_buckets"], min_count=meta["min_count"])
        enc.vocab_ = {name: {v: i + 1 for i, v in enumerate(values)} for name, values in meta["vocab"].items()}
        enc.price_edges_ = np.asarray(meta["price_edges"], np.float64)
        return enc
