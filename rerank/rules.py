"""Rules bound to an item table: filters, boosts, freshness and pinned slots.

`BoundRules.build` turns the validated params plus the item table into per-item numpy arrays once
(at `bind` time), so that a request only gathers rows: a 500-item pool costs a few array lookups.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from rerank.params import ItemId, Match, Pin, RerankParams

DAY_S = 86400.0
OK, BLOCKED, UNAVAILABLE = 0, 1, 2
FILTER_NAMES = {BLOCKED: "blocked", UNAVAILABLE: "unavailable"}


def relevance(scores: np.ndarray) -> np.ndarray:
    """float64 [M] in (0, 1] from the order of `scores` alone: the j-th smallest distinct score
    maps to (j + 1) / n_distinct, so the best item gets 1 and ties share a value. -inf and nan
    map to 0; the re-ranker drops those items (a ranker's -inf means 'never show')."""
    s = np.asarray(scores, dtype=np.float64)
    out = np.zeros(s.shape[0], dtype=np.float64)
    valid = ~(np.isnan(s) | (s == -np.inf))
    v = s[valid]
    if v.size:
        order = np.argsort(v, kind="stable")
        ascending = v[order]
        distinct = np.empty(v.size, dtype=np.int64)
        distinct[0] = 1
        distinct[1:] = ascending[1:] != ascending[:-1]
        dense = np.cumsum(distinct)  # 1..n_distinct along the ascending order
        ranked = np.empty(v.size, dtype=np.float64)
        ranked[order] = dense / dense[-1]
        out[valid] = ranked
    return out


@dataclass(frozen=True)
class BoundPin:
    slot: int
    label: str
    item: int | None  # a fixed item, or None for a rule pin
    order: np.ndarray | None  # rule pin: matching items, newest first (ties: lower id first)
    neg_created: np.ndarray | None  # -created_at along `order` (ascending, for searchsorted)
    max_age_s: float | None


@dataclass(frozen=True)
class PinChoice:
    slot: int
    item: int
    label: str  # the pin as configured, e.g. 'item=5' or 'newest category=Makeup'
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class BoundRules:
    """Per-item arrays (length n_items, indexed by dense item id) derived from the rules."""

    n_items: int
    filtered: np.ndarray  # int8: OK, BLOCKED or UNAVAILABLE
    factor: np.ndarray  # float64 product of matching boost factors
    add: np.ndarray  # float64 sum of matching boost adds
    boost_hits: np.ndarray  # bool [n_boosts, n_items]
    boost_labels: tuple[tuple[str, ...], ...]  # per boost: its reason strings
    created_at: np.ndarray | None  # int64 seconds, when freshness or a rule pin needs it
    codes: dict[str, np.ndarray]  # attribute -> int64 codes, -1 where missing
    n_codes: dict[str, int]  # attribute -> number of distinct codes
    pins: tuple[BoundPin, ...]

    @classmethod
    def build(cls, params: RerankParams, items: pd.DataFrame, item_ids: np.ndarray | None) -> "BoundRules":
        table = aligned_table(items, params.attributes())
        n = len(table)
        resolve = IdResolver(n, params.id_space, item_ids)
        filtered = np.zeros(n, dtype=np.int8)
        if params.filters.available_column:
            flag = table[params.filters.available_column].fillna(True).to_numpy()
            filtered[~flag.astype(bool)] = UNAVAILABLE
        filtered[resolve.many(params.filters.unavailable, "filters.unavailable")] = UNAVAILABLE
        filtered[resolve.many(params.filters.blocked, "filters.blocked")] = BLOCKED
        hits = np.stack([match_mask(table, b) for b in params.boosts]) if params.boosts else np.zeros((0, n), bool)
        factors = np.array([b.factor for b in params.boosts], dtype=np.float64)
        adds = np.array([b.add for b in params.boosts], dtype=np.float64)
        codes = {c: attribute_codes(table[c]) for c in params.grouping_attributes()}
        needs_time = params.freshness is not None or any(p.newest is not None for p in params.pins)
        created = created_at(table) if needs_time else None
        return cls(
            n_items=n, filtered=filtered,
            factor=np.prod(np.where(hits, factors[:, None], 1.0), axis=0) if len(factors) else np.ones(n),
            add=(hits * adds[:, None]).sum(axis=0) if len(adds) else np.zeros(n),
            boost_hits=hits, boost_labels=tuple(boost_reasons(b.label(), b.factor, b.add) for b in params.boosts),
            created_at=created, codes=codes, n_codes={c: int(v.max(initial=-1)) + 1 for c, v in codes.items()},
            pins=tuple(bind_pin(p, table, created, resolve) for p in params.pins),
        )

    def adjusted(self, items: np.ndarray, rel: np.ndarray, now: int, fresh: tuple[float, float] | None) -> np.ndarray:
        """relevance * factors + adds + freshness bonus, float64 [M]."""
        out = rel * self.factor[items] + self.add[items]
        if fresh is not None:
            out += freshness_bonus(self.created_at[items], now, *fresh)  # type: ignore[index]
        return out

    def resolve_pins(self, k: int, now: int, seen: set[int]) -> tuple[dict[int, PinChoice], list[str]]:
        """The pins that apply to this request (slot -> choice) and a note for each dropped pin.
        Fixed pins are resolved first, so a rule pin never picks an item pinned elsewhere."""
        chosen: dict[int, PinChoice] = {}
        notes: list[str] = []
        taken: set[int] = set()
        for pin in sorted(self.pins, key=lambda p: (p.item is None, p.slot)):
            if pin.slot >= k:
                notes.append(f"pin slot={pin.slot} ({pin.label}) dropped: slot beyond k={k}")
                continue
            if pin.item is not None:
                why = "seen" if pin.item in seen else FILTER_NAMES.get(int(self.filtered[pin.item]))
                if why:
                    notes.append(f"pin slot={pin.slot} ({pin.label}) dropped: item {pin.item} is {why}")
                    continue
                item, reasons = pin.item, (f"pinned:slot={pin.slot}",)
            else:
                found = self._newest(pin, now, seen, taken)
                if found is None:
                    notes.append(f"pin slot={pin.slot} ({pin.label}) dropped: no eligible item matches")
                    continue
                item, reasons = found, (f"pinned:slot={pin.slot}", f"pinned:rule={pin.label}")
            chosen[pin.slot] = PinChoice(pin.slot, item, pin.label, reasons)
            taken.add(item)
        return chosen, notes

    def _newest(self, pin: BoundPin, now: int, seen: set[int], taken: set[int]) -> int | None:
        assert pin.order is not None and pin.neg_created is not None and self.created_at is not None
        start = int(np.searchsorted(pin.neg_created, -now, side="left"))  # skip items created after now
        for at in range(start, pin.order.shape[0]):  # newest first; usually ends at the first item
            item = int(pin.order[at])
            if pin.max_age_s is not None and now - self.created_at[item] > pin.max_age_s:
                return None
            if self.filtered[item] == OK and item not in seen and item not in taken:
                return item
        return None

    def score_reasons(self, item: int, now: int, fresh: tuple[float, float] | None) -> list[str]:
        """Why an item's score moved: its boosts/demotions and freshness bonus."""
        out = [s for b, labels in enumerate(self.boost_labels) if self.boost_hits[b, item] for s in labels]
        if fresh is not None and self.created_at is not None:
            max_age_days, bonus = fresh
            age = max(now - int(self.created_at[item]), 0) / DAY_S
            if age < max_age_days:
                out.append(f"fresh:age={age:.0f}d +{bonus * (1.0 - age / max_age_days):.3g}")
        return out


def freshness_bonus(created: np.ndarray, now: int, max_age_days: float, bonus: float) -> np.ndarray:
    age_days = np.maximum(now - created, 0) / DAY_S
    return bonus * np.clip(1.0 - age_days / max_age_days, 0.0, 1.0)


def boost_reasons(label: str, factor: float, add: float) -> tuple[str, ...]:
    out = []
    if factor != 1.0:
        out.append(f"{'boost' if factor > 1 else 'demote'}:{label} x{factor:g}")
    if add != 0.0:
        out.append(f"{'boost' if add > 0 else 'demote'}:{label} {add:+g}")
    return tuple(out)


class IdResolver:
    """Config item ids -> dense indices, with a clear error for ids the catalog lacks."""

    def __init__(self, n_items: int, space: str, item_ids: np.ndarray | None) -> None:
        self.n_items = n_items
        self.space = space
        self.lookup: dict[str, int] | None = None
        if space == "original":
            if item_ids is None:
                raise ValueError("rerank: id_space 'original' needs bind(..., item_ids=dataset.item_ids)")
            self.lookup = {str(x): i for i, x in enumerate(np.asarray(item_ids).tolist())}

    def one(self, item: ItemId, where: str) -> int:
        if self.lookup is not None:
            if str(item) not in self.lookup:
                raise ValueError(f"rerank {where}: item id {item!r} is not in the catalog")
            return self.lookup[str(item)]
        if isinstance(item, str) or not 0 <= item < self.n_items:
            raise ValueError(
                f"rerank {where}: item {item!r} is not a dense index in [0, {self.n_items}) "
                "(set id_space: original to use the dataset's own ids)"
            )
        return int(item)

    def many(self, items: tuple[ItemId, ...], where: str) -> np.ndarray:
        return np.array([self.one(i, where) for i in items], dtype=np.int64)


def aligned_table(items: pd.DataFrame, columns: set[str]) -> pd.DataFrame:
    """The item table sorted so that row i describes item i; checks the columns the rules read."""
    if "item_id" not in items.columns:
        raise ValueError("rerank: the item table needs an item_id column (dense indices)")
    missing = sorted(columns - set(items.columns))
    if missing:
        raise ValueError(f"rerank: the item table has no column(s) {missing}; it has {sorted(items.columns)}")
    table = items.sort_values("item_id", kind="stable").reset_index(drop=True)
    if not np.array_equal(table["item_id"].to_numpy(), np.arange(len(table))):
        raise ValueError("rerank: item_id must hold each dense index 0..n_items-1 exactly once")
    return table


def attribute_codes(column: pd.Series) -> np.ndarray:
    """int64 codes per item (sorted distinct values, so stable across runs); -1 for nan or ''."""
    values = column.astype(object).where(column.notna(), None).to_numpy()
    codes, _ = pd.factorize(values, sort=True, use_na_sentinel=True)
    codes = codes.astype(np.int64)
    codes[np.array([v == "" for v in values], dtype=bool)] = -1
    return codes


def match_mask(table: pd.DataFrame, match: Match) -> np.ndarray:
    column = table[match.attribute]
    if match.values is not None:
        return column.isin(list(match.values)).to_numpy(dtype=bool)
    if not pd.api.types.is_numeric_dtype(column):
        raise ValueError(f"rerank: a min/max match needs a numeric column, '{match.attribute}' is {column.dtype}")
    x = column.to_numpy(dtype=np.float64, na_value=np.nan)
    low = -np.inf if match.min is None else match.min
    high = np.inf if match.max is None else match.max
    return (x >= low) & (x < high)


def created_at(table: pd.DataFrame) -> np.ndarray:
    if "created_at" not in table.columns:
        raise ValueError("rerank: freshness and newest-item pins need a created_at column in the item table")
    return table["created_at"].to_numpy(dtype=np.int64)


def bind_pin(pin: Pin, table: pd.DataFrame, created: np.ndarray | None, resolve: IdResolver) -> BoundPin:
    if pin.newest is None:
        assert pin.item is not None
        return BoundPin(pin.slot, pin.label(), resolve.one(pin.item, f"pin slot={pin.slot}"), None, None, None)
    assert created is not None
    ids = np.flatnonzero(match_mask(table, pin.newest))
    order = ids[np.lexsort((ids, -created[ids]))]
    max_age = None if pin.max_age_days is None else pin.max_age_days * DAY_S
    return BoundPin(pin.slot, pin.label(), None, order, -created[order], max_age)
