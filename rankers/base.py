"""What a trained ranker adds to the `Ranker` protocol, and the part both learned rankers share.

The workflow's ranker stage (pipeline.workflow.fit_ranker) builds `RankingData` from label folds
(rankers.training_data), calls `bind(stage_data, channels)` first, so that the cross features of
served requests come from the same interactions the channels were fitted on and the item tables a
model is built from are in place, then `fit(train, holdout)`, and finally `save(folder)`;
`load(folder)` gives back a ranker ready to `score`. The workflow asks for this capability with
`isinstance(ranker, pipeline.core.protocols.Trainable)`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd

from pipeline.core.protocols import FitData
from pipeline.core.types import CandidateSet, RequestBatch
from rankers.features import CrossFeatures, FeatureBlock, FeatureConfig, feature_config
from rankers.training_data import RankingData


@runtime_checkable
class TrainableRanker(Protocol):
    name: str
    train_folds: int  # label folds to build (rankers.training_data.ranking_folds)
    holdout: float  # share of fold-0 users held out for early stopping

    @property
    def feature_config(self) -> FeatureConfig: ...

    def fit(self, train: RankingData, holdout: RankingData) -> "TrainableRanker": ...

    def bind(self, data: FitData, channels: tuple[str, ...]) -> "TrainableRanker": ...

    def score(self, batch: RequestBatch, pools: list[CandidateSet]) -> list[np.ndarray]: ...

    def save(self, path: Path) -> None: ...


class FeatureRankerMixin:
    """Feature settings, `bind`, and turning pools into feature rows for `score`."""

    train_folds: int
    holdout: float
    windows_days: tuple[int, ...]
    price_buckets: int

    @property
    def feature_config(self) -> FeatureConfig:
        return feature_config(self.windows_days, self.price_buckets)

    def bind(self, data: FitData, channels: tuple[str, ...]):
        """Fit the serving-time cross features on the stage's interactions (point-in-time)."""
        self.features_ = CrossFeatures(tuple(channels), self.feature_config).fit(data)
        return self

    def add_items(self, items: pd.DataFrame) -> None:
        """Score items added to the catalog after training (an items frame with dense ids n, n+1,
        ...): their attribute features come from the content, their interaction features are those
        of an item never seen."""
        if not hasattr(self, "features_"):
            raise RuntimeError(f"ranker '{self.name}': call bind() (or load()) before add_items()")  # type: ignore[attr-defined]
        self.features_.add_items(items)

    def _block(self, batch: RequestBatch, pools: list[CandidateSet]) -> FeatureBlock:
        if not hasattr(self, "features_"):
            raise RuntimeError(f"ranker '{self.name}': call bind() (or load()) before score()")  # type: ignore[attr-defined]
        return self.features_.transform(batch, pools)

    def _check_fitted(self, attr: str) -> None:
        if not hasattr(self, attr):
            raise RuntimeError(f"ranker '{self.name}': call fit() or load() before score()")  # type: ignore[attr-defined]
