"""The live catalog: items added to the served catalog after training (`POST /items`).

The history store keeps every accepted item record (original id and content fields), in arrival
order, under a version (how many records it holds). A run gives each id it did not train the dense
id n, n+1, ... in the order of that id's first record, so every stage computes the same mapping
from the same ordered list without asking any other: the ingress extends its id maps, a channel
that can embed items from content (`add_items`: COBRA, the two-tower) indexes them, the rankers
code their attributes, the re-ranker rebinds its item table. A record for an id the run trained,
or a second record for a live id, is kept in the store for the next training and changes nothing
served (those items keep their trained vectors and attributes).

Stage calls carry the catalog as the ingress knows it (`StageKey`: the run's data fingerprint and
`LiveItems`); a stage that is behind applies the records it lacks before it answers. Live items
enter a user's model sequence only after the next training: until then an event on one puts it in
the user's seen set (never recommended to them again) but not in the history the models read.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from pipeline.data.dataset import category_of

@dataclass(frozen=True)
class LiveItems:
    """The first `version` item records of the store. Between Ray replicas the records travel as
    one object reference (`ref`, put once per version); in process as the tuple itself."""

    version: int
    records: tuple[dict[str, Any], ...] | None = None
    ref: Any = None

    async def load(self) -> tuple[dict[str, Any], ...]:
        if self.records is not None:
            return self.records
        return tuple(await self.ref)


@dataclass(frozen=True)
class StageKey:
    """What the ingress sends with a stage call: the data fingerprint of its run (a stage built
    from other data answers None or raises StaleRun) and the live items it serves."""

    fingerprint: str
    live: LiveItems | None = None


def split_key(run: StageKey | str | None) -> tuple[str | None, LiveItems | None]:
    """(fingerprint, live items) of a stage call's `run` argument (a plain fingerprint: no live items)."""
    if isinstance(run, StageKey):
        return run.fingerprint, run.live
    return run, None


def record_of(item_id: str, fields: dict[str, Any], now: int | None = None) -> dict[str, Any]:
    """A stored item record: every content field present (missing text '', missing price None)
    and the creation time fixed when the record is accepted, so every stage reads the same."""
    categories = fields.get("categories") or ""
    if isinstance(categories, (list, tuple)):
        categories = "|".join(str(c) for c in categories)
    price = fields.get("price")
    created = fields.get("created_at")
    return {
        "item_id": str(item_id), "title": str(fields.get("title") or ""), "categories": str(categories),
        "category": str(fields.get("category") or category_of(str(categories))), "brand": str(fields.get("brand") or ""),
        "price": None if price is None else float(price),
        "created_at": int(created) if created is not None else int(now if now is not None else time.time()),
    }


def first_records(trained: dict[str, int] | set[str], records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first record of every id not in `trained`, in order: the live items of a run (their
    dense ids are n, n+1, ... in this order)."""
    seen: set[str] = set()
    out = []
    for r in records:
        item = r["item_id"]
        if item not in trained and item not in seen:
            seen.add(item)
            out.append(r)
    return out


def items_frame(records: Sequence[dict[str, Any]], first_id: int) -> pd.DataFrame:
    """Records as rows of the canonical items table (pipeline.data.dataset), dense ids from `first_id`."""
    n = len(records)
    return pd.DataFrame({
        "item_id": np.arange(first_id, first_id + n, dtype=np.int64),
        "title": pd.array([r["title"] for r in records], dtype="str"),
        "categories": pd.array([r["categories"] for r in records], dtype="str"),
        "category": pd.array([r["category"] for r in records], dtype="str"),
        "brand": pd.array([r["brand"] for r in records], dtype="str"),
        "price": np.array([np.nan if r["price"] is None else r["price"] for r in records], np.float64),
        "created_at": np.array([r["created_at"] for r in records], np.int64),
    })


class LiveSync:
    """Applies a run's live items to one stage, once each and in order: `apply(frame, ids)` gets the
    canonical rows of the items it has not seen yet (dense ids n_trained + applied, ...) and their
    original ids."""

    def __init__(self, trained_ids: np.ndarray, apply: Any) -> None:
        self.trained = set(str(i) for i in trained_ids)
        self.n_trained = len(trained_ids)
        self.apply = apply
        self.version = 0  # records read so far
        self.items: list[dict[str, Any]] = []  # the live items applied, in dense-id order

    @property
    def n_items(self) -> int:
        return self.n_trained + len(self.items)

    def behind(self, live: LiveItems | None) -> bool:
        return live is not None and live.version > self.version

    def catch_up(self, records: Sequence[dict[str, Any]]) -> int:
        """Apply the records past the ones already read; returns how many items were added."""
        if len(records) <= self.version:
            return 0
        known = self.trained | {r["item_id"] for r in self.items}
        fresh = first_records(known, records[self.version:])
        if fresh:
            self.apply(items_frame(fresh, self.n_items), [r["item_id"] for r in fresh])
            self.items += fresh
        self.version = len(records)
        return len(fresh)

    async def sync(self, live: LiveItems | None) -> None:
        if self.behind(live):
            self.catch_up(await live.load())
