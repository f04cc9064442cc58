"""Cross features for the rankers: one dense row per (request, candidate), point-in-time correct.

`CrossFeatures.fit(data)` indexes the interactions a stage may learn from (FitData.train) and the
item attributes; `transform(batch, pools)` returns a `FeatureBlock` with one float32 row per pool
candidate, every pool of the batch concatenated. The same rows feed LightGBM (flat) and the MTGR
ranker (the candidate tokens). Families, in `names` order:

- request: history length, days since the last history item;
- user x candidate (from the request's history, which is all before `now`): for each attribute
  (category, brand, full category path) the number and share of history items with the
  candidate's value, how many items ago (capped at 49; 50 = none) and how many days ago the last
  one was;
- item: interactions in the windows [now - w, now) (strictly before the request time), in total
  before now, days since the item was first and last seen before now (-1: never seen), price bucket
  and log price, category code;
- provenance (per channel, by name): found, log rank, signed-log score, score / the channel's best
  score in the pool; then the number of channels that found it, the fused pool score, pool position.

Item age is measured from the first interaction in the fit data before `now`, not from the item
table's `created_at`: the loaders derive `created_at` from the whole log, test rows included.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.artifacts import atomic_write_json, read_json
from pipeline.core.protocols import FitData
from pipeline.core.types import DAY, PAD, CandidateSet, RequestBatch

ATTRIBUTES = ("category", "brand", "categories")  # item-table columns used for user x item counts
FAR_DAYS = float(np.log1p(10000.0))  # "no such item in the history"
NEVER_ITEMS = 50  # "items ago" of a value not in the history (the default 50-item window reaches 49)


@dataclass(frozen=True)
class FeatureConfig:
    windows_days: tuple[int, ...] = (7, 30, 365)  # item-count windows before the request time (days)
    price_buckets: int = 10  # price quantile buckets
    attributes: tuple[str, ...] = ATTRIBUTES  # item-table columns of the user x item counts


@dataclass(frozen=True)
class FeatureBlock:
    """values: float32 [N, F] (all pools of a batch, concatenated); offsets: int64 [B + 1], pool r
    is rows offsets[r]:offsets[r+1]; items / rows: int64 [N] candidate item and request row."""

    values: np.ndarray
    offsets: np.ndarray
    items: np.ndarray
    rows: np.ndarray
    names: tuple[str, ...]

    def split(self, flat: np.ndarray) -> list[np.ndarray]:
        """Cut an [N] array back into one array per pool."""
        return [flat[a:b] for a, b in zip(self.offsets[:-1], self.offsets[1:])]


@dataclass
class ItemAttributes:
    """Integer codes per item (0 = unknown) for each attribute, a price bucket (0 = unknown,
    1..buckets) and the log price (nan = unknown). `vocab` (each attribute's sorted values: code
    i + 1 is vocab[a][i]) and `price_edges` let `extend` code items added after fitting the same
    way; artifacts written before they existed load without them (new items: code 0)."""

    codes: dict[str, np.ndarray]
    sizes: dict[str, int]
    price_bucket: np.ndarray
    log_price: np.ndarray
    vocab: dict[str, list[str]] | None = None
    price_edges: np.ndarray | None = None

    @classmethod
    def from_items(cls, items: pd.DataFrame, n_items: int, attributes: tuple[str, ...], buckets: int) -> "ItemAttributes":
        ids = items["item_id"].to_numpy(np.int64)
        codes, sizes, vocab = {}, {}, {}
        for a in attributes:
            code = np.zeros(n_items, np.int64)
            vocab[a] = []
            if a in items.columns:
                values = _values(items[a])
                known = values != ""
                uniq, inv = np.unique(values[known], return_inverse=True)
                code[ids[known]] = inv + 1
                sizes[a], vocab[a] = len(uniq) + 1, [str(v) for v in uniq]
            else:
                sizes[a] = 1
            codes[a] = code
        price = np.full(n_items, np.nan)
        if "price" in items.columns:
            price[ids] = _prices(items)
        edges = np.zeros(0)
        ok = ~np.isnan(price)
        if ok.any():
            edges = np.unique(np.quantile(price[ok], np.linspace(0, 1, buckets + 1)[1:-1]))
        return cls(codes, sizes, _buckets(price, edges), np.log(price).astype(np.float32), vocab, edges)

    def extend(self, items: pd.DataFrame) -> "ItemAttributes":
        """These attributes plus rows for new items (dense ids n, n+1, ... in order): a value seen
        at fitting keeps its code, any other is 0 (unknown), as is every value without `vocab`."""
        n = len(self.price_bucket)
        ids = items["item_id"].to_numpy(np.int64)
        if not np.array_equal(ids, np.arange(n, n + len(ids))):
            raise ValueError(f"ranker features: new items need item_id {n}..{n + len(ids) - 1} in order")
        codes = {}
        for a, code in self.codes.items():
            new = np.zeros(len(ids), np.int64)
            known = np.asarray((self.vocab or {}).get(a, []), dtype=object)
            if a in items.columns and len(known):
                values = _values(items[a])
                at = np.minimum(np.searchsorted(known, values), len(known) - 1)
                hit = (values != "") & (known[at] == values)
                new[hit] = at[hit] + 1
            codes[a] = np.concatenate([code, new])
        price = _prices(items) if "price" in items.columns else np.full(len(ids), np.nan)
        edges = self.price_edges if self.price_edges is not None else np.zeros(0)
        bucket = _buckets(price, edges) if self.price_edges is not None else np.zeros(len(ids), np.int64)
        return ItemAttributes(codes, dict(self.sizes), np.concatenate([self.price_bucket, bucket]),
                              np.concatenate([self.log_price, np.log(price).astype(np.float32)]), self.vocab, self.price_edges)


def _values(column: pd.Series) -> np.ndarray:
    """An attribute column as strings, '' for a missing value."""
    values = column.astype(str).fillna("").to_numpy(dtype=object)
    values[values == "nan"] = ""
    return values


def _prices(items: pd.DataFrame) -> np.ndarray:
    price = pd.to_numeric(items["price"], errors="coerce").to_numpy(np.float64)
    return np.where(price > 0, price, np.nan)


def _buckets(price: np.ndarray, edges: np.ndarray) -> np.ndarray:
    bucket = np.zeros(len(price), np.int64)
    ok = ~np.isnan(price)
    if ok.any():
        bucket[ok] = np.searchsorted(edges, price[ok], side="right") + 1
    return bucket


class CrossFeatures:
    """Point-in-time cross features; see the module docstring for the columns."""

    def __init__(self, channels: tuple[str, ...], config: FeatureConfig = FeatureConfig()) -> None:
        self.channels = tuple(channels)
        self.config = config

    @property
    def names(self) -> tuple[str, ...]:
        n = ["req_log_len", "req_days_since_last"]
        for a in self.config.attributes:
            n += [f"u_{a}_count", f"u_{a}_share", f"u_{a}_items_ago", f"u_{a}_days_ago"]
        n += [f"pop_{w}d" for w in self.config.windows_days]
        n += ["pop_all", "item_age_days", "item_last_days", "price_bucket", "log_price", "category_code"]
        for c in self.channels:
            n += [f"ch_{c}_found", f"ch_{c}_log_rank", f"ch_{c}_score", f"ch_{c}_rel_score"]
        n += ["n_channels", "pool_score", "pool_log_pos"]
        return tuple(n)

    def fit(self, data: FitData) -> "CrossFeatures":
        cfg = self.config
        self.attrs_ = ItemAttributes.from_items(data.items, data.n_items, cfg.attributes, cfg.price_buckets)
        items = data.train["item_id"].to_numpy(np.int64)
        ts = data.train["timestamp"].to_numpy(np.int64)
        self.t0_ = int(ts.min()) if len(ts) else 0
        self.span_ = int(ts.max() - self.t0_ + 2) if len(ts) else 2
        self.keys_ = np.sort(items * self.span_ + (ts - self.t0_))  # (item, time) sorted
        return self

    # -- transform -------------------------------------------------------------------------
    def transform(self, batch: RequestBatch, pools: list[CandidateSet]) -> FeatureBlock:
        if not hasattr(self, "keys_"):
            raise RuntimeError("CrossFeatures: call fit() or load() before transform()")
        sizes = np.array([len(p) for p in pools], np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        rows = np.repeat(np.arange(len(pools), dtype=np.int64), sizes)
        items = np.concatenate([p.items for p in pools]) if pools else np.zeros(0, np.int64)
        now = batch.now[rows].astype(np.int64)
        cols = [self._request(batch, rows, now), self._user_item(batch, rows, items, now),
                self._item(items, now), self._provenance(pools, sizes)]
        values = np.concatenate(cols, axis=1).astype(np.float32)
        return FeatureBlock(values, offsets, items, rows, self.names)

    def _request(self, batch: RequestBatch, rows: np.ndarray, now: np.ndarray) -> np.ndarray:
        lens = batch.lengths[rows]
        last_t = batch.history_times[rows, -1]
        since = np.where(lens > 0, np.log1p(np.maximum(now - last_t, 0) / DAY), FAR_DAYS)
        return np.stack([np.log1p(lens), since], axis=1)

    def _user_item(self, batch: RequestBatch, rows: np.ndarray, items: np.ndarray, now: np.ndarray) -> np.ndarray:
        hist = batch.history
        width = hist.shape[1]
        valid = hist != PAD
        lens = np.maximum(batch.lengths[rows], 1)
        out = []
        for a in self.config.attributes:
            code = self.attrs_.codes[a]
            h_code = np.where(valid, code[np.where(valid, hist, 0)], -1)  # (B, L), -1 = padding
            h_code[h_code == 0] = -1  # unknown values never match
            match = h_code[rows] == code[items][:, None]  # (N, L)
            count = match.sum(axis=1)
            ago = match[:, ::-1].argmax(axis=1)  # 0 = the most recent history item
            has = count > 0
            t_last = batch.history_times[rows, width - 1 - ago]
            days = np.where(has, np.log1p(np.maximum(now - t_last, 0) / DAY), FAR_DAYS)
            # none in the history: NEVER_ITEMS, a constant (it was the batch's padded width, so a row's
            # features changed with the longest history batched beside it)
            out += [np.log1p(count), count / lens, np.where(has, np.minimum(ago, NEVER_ITEMS - 1), NEVER_ITEMS), days]
        return np.stack(out, axis=1)

    def _item(self, items: np.ndarray, now: np.ndarray) -> np.ndarray:
        rel = np.clip(now - self.t0_, 0, self.span_ - 1)  # interactions at t < now have rel < this
        base = items * self.span_
        end = np.searchsorted(self.keys_, base + rel, side="left")  # first key at or after now
        start = np.searchsorted(self.keys_, base, side="left")
        out = []
        for w in self.config.windows_days:
            lo = np.searchsorted(self.keys_, base + np.clip(now - int(w * DAY) - self.t0_, 0, self.span_ - 1), side="left")
            out.append(np.log1p(end - lo))
        seen = end > start
        if len(self.keys_):  # absolute times of the item's first and last interaction before now
            first_t = self.keys_[np.minimum(start, len(self.keys_) - 1)] - base + self.t0_
            last_t = self.keys_[np.maximum(end - 1, 0)] - base + self.t0_
        else:
            first_t = last_t = now
        age = np.where(seen, np.log1p(np.maximum(now - first_t, 0) / DAY), -1.0)
        last = np.where(seen, np.log1p(np.maximum(now - last_t, 0) / DAY), -1.0)
        lp = self.attrs_.log_price[items]
        cat = self.attrs_.codes[self.config.attributes[0]][items] if self.config.attributes else np.zeros_like(items)
        out += [np.log1p(end - start), age, last, self.attrs_.price_bucket[items], np.where(np.isnan(lp), -1.0, lp), cat]
        return np.stack(out, axis=1)

    def _provenance(self, pools: list[CandidateSet], sizes: np.ndarray) -> np.ndarray:
        n, c = int(sizes.sum()), len(self.channels)
        found = np.zeros((n, c), bool)
        rank = np.full((n, c), -1.0)
        score = np.zeros((n, c))
        rel = np.zeros((n, c))
        pos = np.arange(n) - np.repeat(np.cumsum(sizes) - sizes, sizes)  # position in its pool
        fused = np.concatenate([p.scores for p in pools]) if pools else np.zeros(0)
        col = {name: i for i, name in enumerate(self.channels)}
        lo = 0
        # pools of one batch normally share their channel columns: one numpy pass per run of them
        for names, group in _runs_by_channels(pools):
            hi = lo + sum(len(p) for p in group)
            g_found = np.concatenate([p.found for p in group])
            g_rank = np.concatenate([p.channel_rank for p in group])
            g_score = np.concatenate([p.channel_score for p in group]).astype(np.float64)
            g_rows = np.repeat(np.arange(len(group)), [len(p) for p in group])
            for j, name in enumerate(names):
                if name not in col:
                    continue
                k, f = col[name], g_found[:, j]
                s = np.nan_to_num(np.where(f, g_score[:, j], 0.0), nan=0.0, posinf=0.0, neginf=0.0)
                best = np.zeros(len(group))
                np.maximum.at(best, g_rows, np.abs(s))
                found[lo:hi, k] = f
                rank[lo:hi, k] = np.where(f, np.log1p(np.maximum(g_rank[:, j], 0)), -1.0)
                score[lo:hi, k] = np.sign(s) * np.log1p(np.abs(s))
                rel[lo:hi, k] = s / np.maximum(best[g_rows], 1e-12)
            lo = hi
        per_channel = np.stack([found, rank, score, rel], axis=2).reshape(n, 4 * c)
        return np.concatenate([per_channel, found.sum(1, keepdims=True), fused[:, None], np.log1p(pos)[:, None]], axis=1)

    # -- persistence: JSON + .npy, no pickle ------------------------------------------------
    def save(self, path: Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        np.save(path / "keys.npy", self.keys_, allow_pickle=False)
        np.save(path / "price_bucket.npy", self.attrs_.price_bucket, allow_pickle=False)
        np.save(path / "log_price.npy", self.attrs_.log_price, allow_pickle=False)
        for a, code in self.attrs_.codes.items():
            np.save(path / f"code_{a}.npy", code, allow_pickle=False)
        meta = {"channels": list(self.channels), "config": asdict(self.config), "t0": self.t0_, "span": self.span_,
                "sizes": self.attrs_.sizes, "vocab": self.attrs_.vocab,
                "price_edges": None if self.attrs_.price_edges is None else self.attrs_.price_edges.tolist()}
        atomic_write_json(path / "features.json", meta)

    @classmethod
    def load(cls, path: Path) -> "CrossFeatures":
        path = Path(path)
        meta = read_json(path / "features.json")
        cfg = meta["config"]
        config = FeatureConfig(tuple(cfg["windows_days"]), int(cfg["price_buckets"]), tuple(cfg["attributes"]))
        out = cls(tuple(meta["channels"]), config)
        out.t0_, out.span_ = int(meta["t0"]), int(meta["span"])
        out.keys_ = np.load(path / "keys.npy", allow_pickle=False)
        codes = {a: np.load(path / f"code_{a}.npy", allow_pickle=False) for a in config.attributes}
        out.attrs_ = ItemAttributes(codes, {a: int(s) for a, s in meta["sizes"].items()},
                                    np.load(path / "price_bucket.npy", allow_pickle=False),
                                    np.load(path / "log_price.npy", allow_pickle=False), meta.get("vocab"),
                                    None if meta.get("price_edges") is None else np.asarray(meta["price_edges"], np.float64))
        return out

    def add_items(self, items: pd.DataFrame) -> None:
        """Attributes for items added after fitting (dense ids n, n+1, ...): they have no
        interactions, so their popularity and age features read 'never seen'."""
        if not hasattr(self, "attrs_"):
            raise RuntimeError("CrossFeatures: call fit() or load() before add_items()")
        self.attrs_ = self.attrs_.extend(items)

    @property
    def n_items(self) -> int:
        return len(self.attrs_.price_bucket)


def feature_config(windows_days=(7, 30, 365), price_buckets: int = 10, attributes=ATTRIBUTES) -> FeatureConfig:
    """A FeatureConfig from YAML-friendly values (lists become tuples)."""
    return FeatureConfig(tuple(int(w) for w in windows_days), int(price_buckets), tuple(attributes))


def _runs_by_channels(pools: list[CandidateSet]) -> list[tuple[tuple[str, ...], list[CandidateSet]]]:
    """Consecutive pools grouped by their channel columns (order kept)."""
    runs: list[tuple[tuple[str, ...], list[CandidateSet]]] = []
    for p in pools:
        if runs and runs[-1][0] == p.channels:
            runs[-1][1].append(p)
        else:
            runs.append((p.channels, [p]))
    return runs
