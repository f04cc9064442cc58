"""LightGBM LambdaMART ranker on the flattened cross features (the traditional ranker, for A/B and
as a fallback). One group per request; early stopping on the held-out users' NDCG@eval_at.
Saved as a LightGBM text model plus the feature state (JSON + .npy); nothing is pickled."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import Field

from pipeline.core.artifacts import atomic_write_json, read_json
from pipeline.core.schema import PartsConfig
from pipeline.core.types import CandidateSet, RequestBatch
from rankers.base import FeatureRankerMixin, LabelParams
from rankers.features import CrossFeatures, FeatureConfig
from rankers.training_data import RankingData


def _has_eval_x() -> bool:
    import inspect

    import lightgbm as lgb

    return "eval_X" in inspect.signature(lgb.LGBMRanker.fit).parameters


_HAS_EVAL_X = _has_eval_x()


@dataclass(frozen=True)
class BoosterParams:
    """LambdaMART's settings (lightgbm.LGBMRanker)."""

    n_estimators: int = 600  # boosting rounds at most
    learning_rate: float = 0.05  # shrinkage
    num_leaves: int = 31  # leaves per tree
    min_child_samples: int = 100  # rows a leaf needs at least
    subsample: float = 0.8  # row share per tree (bagging every iteration)
    colsample_bytree: float = 0.8  # feature share per tree
    reg_lambda: float = 1.0  # L2 penalty on leaf values
    early_stopping_rounds: int = 50  # on the held-out users' NDCG@eval_at
    eval_at: int = 10  # k of the early-stopping NDCG
    truncation_level: int = 30  # lambdarank_truncation_level


class LightGBMConfig(PartsConfig):
    booster: BoosterParams = BoosterParams()
    labels: LabelParams = LabelParams()
    features: FeatureConfig = FeatureConfig()
    max_negatives: int | None = Field(100, description="seeded-random negatives kept per group (None: all)")
    n_jobs: int = Field(1, description="LightGBM threads")
    seed: int = Field(0, description="LightGBM and negative-sampling seed")


class LightGBMRanker(FeatureRankerMixin):
    """LambdaMART over the cross features, of one LightGBMConfig (given whole or as its keys)."""

    config_class = LightGBMConfig  # what a config's `params` are checked against (pipeline/params.py)
    default_name = "lgbm"

    def fit(self, train: RankingData, holdout: RankingData | None = None) -> "LightGBMRanker":
        import lightgbm as lgb

        b, cfg = self.config.booster, self.config
        model = lgb.LGBMRanker(
            objective="lambdarank", n_estimators=b.n_estimators, learning_rate=b.learning_rate,
            num_leaves=b.num_leaves, min_child_samples=b.min_child_samples, subsample=b.subsample,
            subsample_freq=1, colsample_bytree=b.colsample_bytree, reg_lambda=b.reg_lambda,
            lambdarank_truncation_level=b.truncation_level, n_jobs=cfg.n_jobs, random_state=cfg.seed, verbose=-1,
        )
        train = self._subsample(train)
        fit_args: dict = {"group": train.sizes, "feature_name": list(train.names)}
        if holdout is not None and len(holdout):
            evals = ({"eval_X": (holdout.features,), "eval_y": (holdout.labels(),)} if _HAS_EVAL_X
                     else {"eval_set": [(holdout.features, holdout.labels())]})
            fit_args.update(evals, eval_group=[holdout.sizes], eval_at=[b.eval_at],
                            callbacks=[lgb.early_stopping(b.early_stopping_rounds, verbose=False)])
        model.fit(train.features, train.labels(), **fit_args)
        self.booster_ = model.booster_
        self.best_iteration_ = int(model.best_iteration_ or model.n_estimators)
        self.feature_names_ = tuple(train.names)
        best = {name: {k: float(v) for k, v in scores.items()} for name, scores in (model.best_score_ or {}).items()}
        self.report_ = {"best_iteration": self.best_iteration_, "holdout": best, "train_rows": int(len(train.items))}
        return self

    def _subsample(self, data: RankingData) -> RankingData:
        """Keep every positive and at most `max_negatives` seeded-random negatives per group (the
        holdout used for early stopping is never subsampled)."""
        cap = self.config.max_negatives
        if cap is None or (data.sizes <= cap + 1).all():
            return data
        rng = np.random.default_rng(self.config.seed)
        y = data.labels()
        group = np.repeat(np.arange(len(data)), data.sizes)
        keys = rng.random(len(y)) + 2.0 * y  # positives first, then a random order of negatives
        order = np.lexsort((-keys, group))
        rank_in_group = np.arange(len(y)) - np.repeat(data.offsets[:-1], data.sizes)
        keep = np.sort(order[rank_in_group <= cap])
        sizes = np.bincount(group[keep], minlength=len(data))
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        positive = np.flatnonzero(y[keep]) - offsets[:-1]
        return RankingData(data.channels, data.names, data.features[keep], data.items[keep], offsets, positive,
                           data.users, data.history, data.history_times, data.lengths, data.now, data.fold, data.stats)

    def score(self, batch: RequestBatch, pools: list[CandidateSet]) -> list[np.ndarray]:
        self._check_fitted("booster_")
        block = self._block(batch, pools)
        if block.values.shape[0] == 0:
            return [np.zeros(0, np.float32) for _ in pools]
        if block.names != self.feature_names_:
            raise ValueError(f"ranker '{self.name}': features {block.names} differ from training {self.feature_names_}")
        flat = self.booster_.predict(block.values, num_iteration=self.best_iteration_).astype(np.float32)
        return block.split(flat)

    def feature_importance(self) -> dict[str, float]:
        gain = self.booster_.feature_importance(importance_type="gain", iteration=self.best_iteration_)
        return dict(sorted(zip(self.feature_names_, map(float, gain)), key=lambda kv: -kv[1]))

    # persistence: LightGBM text model + JSON + feature state, no pickle
    def save(self, path: Path) -> None:
        self._check_fitted("booster_")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.booster_.save_model(str(path / "model.txt"), num_iteration=self.best_iteration_)
        self.features_.save(path / "features")
        params = self._params()  # nested; a flat file (older saves) loads too
        atomic_write_json(path / "params.json", {"params": params, "best_iteration": self.best_iteration_,
                                                 "feature_names": list(self.feature_names_)})

    @classmethod
    def load(cls, path: Path) -> "LightGBMRanker":
        import lightgbm as lgb

        path = Path(path)
        meta = read_json(path / "params.json")
        ranker = cls(**meta["params"])
        ranker.booster_ = lgb.Booster(model_file=str(path / "model.txt"))
        ranker.best_iteration_ = int(meta["best_iteration"])
        ranker.feature_names_ = tuple(meta["feature_names"])
        ranker.features_ = CrossFeatures.load(path / "features")
        return ranker

