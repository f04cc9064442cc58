"""LightGBM LambdaMART ranker on the flattened cross features (the traditional ranker, for A/B and
as a fallback). One group per request; early stopping on the held-out users' NDCG@eval_at.
Saved as a LightGBM text model plus the feature state (JSON + .npy); nothing is pickled."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.core.artifacts import atomic_write_json, read_json
from pipeline.core.types import CandidateSet, RequestBatch
from rankers.base import FeatureRankerMixin
from rankers.features import CrossFeatures
from rankers.training_data import RankingData


def _has_eval_x() -> bool:
    import inspect

    import lightgbm as lgb

    return "eval_X" in inspect.signature(lgb.LGBMRanker.fit).parameters


_HAS_EVAL_X = _has_eval_x()


class LightGBMRanker(FeatureRankerMixin):
    def __init__(
        self, *, name: str = "lgbm", n_estimators: int = 600, learning_rate: float = 0.05, num_leaves: int = 31,
        min_child_samples: int = 100, subsample: float = 0.8, colsample_bytree: float = 0.8, reg_lambda: float = 1.0,
        early_stopping_rounds: int = 50, eval_at: int = 10, truncation_level: int = 30, max_negatives: int | None = 100,
        train_folds: int = 1, holdout: float = 0.1, windows_days: tuple[int, ...] = (7, 30, 365),
        price_buckets: int = 10, n_jobs: int = 1, seed: int = 0,
    ) -> None:
        self.name = name
        self.n_estimators, self.learning_rate, self.num_leaves = n_estimators, learning_rate, num_leaves
        self.min_child_samples, self.subsample, self.colsample_bytree = min_child_samples, subsample, colsample_bytree
        self.reg_lambda, self.early_stopping_rounds, self.eval_at = reg_lambda, early_stopping_rounds, eval_at
        self.truncation_level, self.max_negatives = truncation_level, max_negatives
        self.train_folds, self.holdout = train_folds, holdout
        self.windows_days, self.price_buckets = tuple(windows_days), price_buckets
        self.n_jobs, self.seed = n_jobs, seed

    def fit(self, train: RankingData, holdout: RankingData | None = None) -> "LightGBMRanker":
        import lightgbm as lgb

        model = lgb.LGBMRanker(
            objective="lambdarank", n_estimators=self.n_estimators, learning_rate=self.learning_rate,
            num_leaves=self.num_leaves, min_child_samples=self.min_child_samples, subsample=self.subsample,
            subsample_freq=1, colsample_bytree=self.colsample_bytree, reg_lambda=self.reg_lambda,
            lambdarank_truncation_level=self.truncation_level, n_jobs=self.n_jobs, random_state=self.seed, verbose=-1,
        )
        train = self._subsample(train)
        fit_args: dict = {"group": train.sizes, "feature_name": list(train.names)}
        if holdout is not None and len(holdout):
            evals = ({"eval_X": (holdout.features,), "eval_y": (holdout.labels(),)} if _HAS_EVAL_X
                     else {"eval_set": [(holdout.features, holdout.labels())]})
            fit_args.update(evals, eval_group=[holdout.sizes], eval_at=[self.eval_at],
                            callbacks=[lgb.early_stopping(self.early_stopping_rounds, verbose=False)])
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
        if self.max_negatives is None or (data.sizes <= self.max_negatives + 1).all():
            return data
        rng = np.random.default_rng(self.seed)
        y = data.labels()
        group = np.repeat(np.arange(len(data)), data.sizes)
        keys = rng.random(len(y)) + 2.0 * y  # positives first, then a random order of negatives
        order = np.lexsort((-keys, group))
        rank_in_group = np.arange(len(y)) - np.repeat(data.offsets[:-1], data.sizes)
        keep = np.sort(order[rank_in_group <= self.max_negatives])
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
        params = {k: getattr(self, k) for k in _PARAMS}
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


_PARAMS = ("name", "n_estimators", "learning_rate", "num_leaves", "min_child_samples", "subsample", "colsample_bytree",
           "reg_lambda", "early_stopping_rounds", "eval_at", "truncation_level", "max_negatives", "train_folds", "holdout",
           "windows_days", "price_buckets", "n_jobs", "seed")
