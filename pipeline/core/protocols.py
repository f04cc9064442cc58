"""The three small protocols of the cascade: a channel retrieves, a ranker scores, a re-ranker
re-ranks. All are batch-first and work on dense integer item indices."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd

from pipeline.core.types import CandidateSet, RequestBatch, Retrieved


@dataclass(frozen=True)
class FitData:
    """What a stage may learn from: only interactions before the evaluated targets.

    train: canonical interactions (user_id, item_id, timestamp, seq), dense indices, sorted by
    user then time then seq. items: the canonical item table (item_id dense index first).
    valid / valid_history: when fitting for the test stage, the validation targets and the history
    before them (train minus the validation rows), so a trained model can early-stop on `valid`
    while fitting on `valid_history`; None when fitting for the validation stage itself (there the
    validation targets are the evaluation targets and must not be seen).
    """

    train: pd.DataFrame
    items: pd.DataFrame
    n_users: int
    n_items: int
    has_time: bool = True
    valid: pd.DataFrame | None = None
    valid_history: pd.DataFrame | None = None
    seed: int = 0
    user_ids: np.ndarray | None = None  # original ids by dense index (to map user-supplied tables)
    item_ids: np.ndarray | None = None


@runtime_checkable
class Channel(Protocol):
    """Retrieval channel: up to k candidates per request, seen items excluded, best first."""

    name: str

    def fit(self, data: FitData) -> "Channel": ...

    def retrieve(self, batch: RequestBatch, k: int) -> Retrieved: ...


# -- roles a channel class declares in `roles` (a tuple of these names) ------------------------
FALLBACK = "fallback"  # answers any request, the empty history included, from the stage's data alone


def declares_role(component: object, role: str) -> bool:
    """Whether a channel (class or instance) declares `role` in its `roles` attribute. The serving
    fallback is the first served channel declaring FALLBACK, never a kind picked by its name."""
    return role in getattr(component, "roles", ())


# -- capabilities a stage may have; callers ask `isinstance(stage, Capability)` -----------------
@runtime_checkable
class Persistent(Protocol):
    """Written to a run folder with `save` and read back with the class's `load`."""

    def save(self, path: Path) -> None: ...

    @classmethod
    def load(cls, path: Path) -> "Persistent": ...


@runtime_checkable
class SavableChannel(Channel, Persistent, Protocol):
    """A channel a run folder holds (the others are refitted when the run loads)."""


@runtime_checkable
class Trainable(Persistent, Protocol):
    """A stage the workflow trains (`fit`), binds to the stage's interactions (`bind`) and saves."""

    def fit(self, *args, **kwargs) -> "Trainable": ...

    def bind(self, *args, **kwargs) -> "Trainable": ...


@runtime_checkable
class SupportsAddItems(Protocol):
    """Takes live catalog rows (the items table's columns) and makes them retrievable or scorable."""

    def add_items(self, items: pd.DataFrame) -> object: ...


@runtime_checkable
class SupportsAddItemIds(Protocol):
    """Takes live item ids only (a channel whose items are answered by another service)."""

    def add_item_ids(self, item_ids: list[str]) -> None: ...


@runtime_checkable
class HasItemVectors(Protocol):
    """Gives the dense vectors it scores with for item ids (None when it has none, e.g. COBRA in a
    sparse mode): the re-ranker's diversity term reads them."""

    def item_vectors(self, items: np.ndarray) -> np.ndarray | None: ...


@runtime_checkable
class BindsItems(Protocol):
    """Reads the item table (and item vectors) before it serves: the rule-and-diversity re-ranker."""

    def bind(self, items: pd.DataFrame, vectors: np.ndarray | None, item_ids: np.ndarray) -> object: ...


@runtime_checkable
class Ranker(Protocol):
    """Scores every candidate of each request's pool; returns one float32 array per pool."""

    name: str

    def score(self, batch: RequestBatch, pools: list[CandidateSet]) -> list[np.ndarray]: ...


@runtime_checkable
class ReRanker(Protocol):
    """Shapes each scored pool into the final list of at most k items, with reasons."""

    name: str

    def rerank(self, batch: RequestBatch, pools: list[CandidateSet], k: int) -> list[CandidateSet]: ...
