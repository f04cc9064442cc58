"""The re-ranker's configuration: one pydantic model per rule, unknown keys rejected.

One surface/arm is one `RerankParams` block (the YAML `rerank: {kind: rules, params: {...}}`):

    filters:   {seen: true, blocked: [12, 40], unavailable: [7], available_column: in_stock}
    boosts:    - {attribute: category, values: [Makeup], factor: 1.2}      # multiplicative
               - {attribute: price, min: 0, max: 10, add: -0.1}            # additive (a demotion)
    freshness: {max_age_days: 30, bonus: 0.2}
    pins:      - {slot: 0, item: 123}
               - {slot: 3, newest: {attribute: category, values: [Makeup]}, max_age_days: 90}
    dedup:     {attribute: brand}
    caps:      - {attribute: category, max_items: 2, window: 5}
    lambda: 0.7
    coverage:  {attribute: category, bonus: 0.05}
    on_unmet_caps: shorten

Scores: the ranker's scores are first mapped to a relevance in (0, 1] by their rank (only their
order matters; ties share a value); boosts then act on that relevance:
`adjusted = relevance * product(factors) + sum(adds) + freshness bonus`.
Item ids in `blocked`, `unavailable` and pins are dense indices unless `id_space: original`, in
which case they are the dataset's original ids, resolved at `bind` time.
"""
from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from pipeline.core.schema import Strict

ItemId = int | str
Value = str | int | float | bool


class Filters(Strict):
    """Items removed before anything else; no other rule (not even a pin) can bring them back."""

    seen: bool = True  # the request's history
    blocked: tuple[ItemId, ...] = ()
    unavailable: tuple[ItemId, ...] = ()
    available_column: str | None = None  # a boolean item-table column; False (or 0) = unavailable


class Match(Strict):
    """Items whose `attribute` is one of `values`, or (numbers) lies in [min, max)."""

    attribute: str
    values: tuple[Value, ...] | None = None
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _one_selector(self) -> "Match":
        ranged = self.min is not None or self.max is not None
        if (self.values is None) == (not ranged):
            raise ValueError(f"match on '{self.attribute}': give either values or min/max, not both or neither")
        if self.min is not None and self.max is not None and self.min >= self.max:
            raise ValueError(f"match on '{self.attribute}': min ({self.min}) must be below max ({self.max})")
        if self.values is not None and not self.values:
            raise ValueError(f"match on '{self.attribute}': values is empty")
        return self

    def label(self) -> str:
        if self.values is not None:
            shown = ",".join(str(v) for v in self.values)
            return f"{self.attribute}={shown}"
        low = "-inf" if self.min is None else f"{self.min:g}"
        high = "inf" if self.max is None else f"{self.max:g}"
        return f"{self.attribute}=[{low},{high})"


class Boost(Match):
    """Multiplies the relevance of matching items by `factor` and/or adds `add` (negative: demote)."""

    factor: float = Field(1.0, gt=0)
    add: float = 0.0

    @model_validator(mode="after")
    def _does_something(self) -> "Boost":
        if self.factor == 1.0 and self.add == 0.0:
            raise ValueError(f"boost on '{self.attribute}': set factor (!= 1) or add (!= 0)")
        return self


class Freshness(Strict):
    """Additive bonus for new items: `bonus` at age 0, falling linearly to 0 at `max_age_days`.

    Age is `batch.now - created_at`; items created after `now` count as age 0."""

    max_age_days: float = Field(gt=0)
    bonus: float = Field(gt=0)


class Pin(Strict):
    """An operational slot: a fixed `item`, or the most recent item matching `newest`, at `slot`."""

    slot: int = Field(ge=0)  # 0-based position in the final list
    item: ItemId | None = None
    newest: Match | None = None
    max_age_days: float | None = Field(None, gt=0)  # only with `newest`: ignore older items

    @model_validator(mode="after")
    def _one_source(self) -> "Pin":
        if (self.item is None) == (self.newest is None):
            raise ValueError(f"pin at slot {self.slot}: give exactly one of item or newest")
        if self.max_age_days is not None and self.newest is None:
            raise ValueError(f"pin at slot {self.slot}: max_age_days only applies to newest")
        return self

    def label(self) -> str:
        return f"item={self.item}" if self.newest is None else f"newest {self.newest.label()}"


class Dedup(Strict):
    """At most one item per value of `attribute` (missing values are never deduplicated)."""

    attribute: str


class Cap(Strict):
    """At most `max_items` items sharing a value of `attribute` in any `window` consecutive slots."""

    attribute: str = "category"
    max_items: int = Field(ge=1)
    window: int = Field(ge=1)


class Coverage(Strict):
    """Additive bonus during selection for items whose `attribute` value is not yet in the list."""

    attribute: str = "category"
    bonus: float = Field(gt=0)


class RerankParams(Strict):
    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True)

    filters: Filters = Filters()
    boosts: tuple[Boost, ...] = ()
    freshness: Freshness | None = None
    pins: tuple[Pin, ...] = ()
    dedup: Dedup | None = None
    caps: tuple[Cap, ...] = ()
    lambda_: float = Field(1.0, ge=0.0, le=1.0, alias="lambda")  # MMR: 1 = relevance only
    coverage: Coverage | None = None
    on_unmet_caps: Literal["shorten", "relax"] = "shorten"
    id_space: Literal["index", "original"] = "index"

    @model_validator(mode="after")
    def _pins_consistent(self) -> "RerankParams":
        slots = [p.slot for p in self.pins]
        twice = sorted({s for s in slots if slots.count(s) > 1})
        if twice:
            raise ValueError(f"two pins on one slot: {twice}")
        fixed = [str(p.item) for p in self.pins if p.item is not None]
        repeated = sorted({i for i in fixed if fixed.count(i) > 1})
        if repeated:
            raise ValueError(f"an item is pinned to two slots: {repeated}")
        return self

    def grouping_attributes(self) -> set[str]:
        """The columns that dedup, caps and coverage group items by."""
        cols = {c.attribute for c in self.caps}
        cols |= {rule.attribute for rule in (self.dedup, self.coverage) if rule is not None}
        return cols

    def attributes(self) -> set[str]:
        """Every item-table column the rules read."""
        cols = self.grouping_attributes() | {b.attribute for b in self.boosts}
        cols |= {p.newest.attribute for p in self.pins if p.newest is not None}
        if self.filters.available_column:
            cols.add(self.filters.available_column)
        return cols


def format_errors(err: Exception) -> str:
    """pydantic's errors, one '  key.path: message' line each (unknown keys named as such)."""
    errors = getattr(err, "errors", None)
    if not callable(errors):
        return str(err)
    lines = []
    for e in errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)
