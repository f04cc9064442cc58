"""What a trained ranker adds to the `Ranker` protocol, and the part both learned rankers share.

The workflow's ranker stage (pipeline.workflow.fit_ranker) builds `RankingData` from label folds
(rankers.training_data), calls `bind(stage_data, channels)` first, so that the cross features of
served requests come from the same interactions the channels were fitted on and the item tables a
model is built from are in place, then `fit(train, holdout)`, and finally `save(folder)`;
`load(folder)` gives back a ranker ready to `score`. The workflow asks for this capability with
`isinstance(ranker, pipeline.core.protocols.Trainable)`.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from pipeline.core.protocols import FitData
from pipeline.core.schema import Configured
from pipeline.core.types import CandidateSet, RequestBatch
from rankers.features import CrossFeatures, FeatureBlock, FeatureConfig


@dataclass(frozen=True)
class LabelParams:
    """How a learned ranker's training data is labelled (rankers.training_data.ranking_folds)."""

    train_folds: int = 1  # label folds to build, each one position further back
    holdout: float = 0.1  # share of fold-0 users held out for early stopping


class FeatureRankerMixin(Configured):
    """Feature settings, `bind`, and turning pools into feature rows for `score`; the ranker's
    one config (`config`) has the parts `labels` (LabelParams) and `features` (FeatureConfig)."""

    @property
    def feature_config(self) -> FeatureConfig:
        return self.config.features

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
