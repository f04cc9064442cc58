"""MTGRRanker: the `Ranker` around the MTGR model (rankers.mtgr), trained by rankers.mtgr_train.

`bind(data, channels)` fits the point-in-time cross features on the stage's interactions (and gives
the model its item attribute tables); `fit(train, holdout)` trains; `score` computes the features
of the pools and runs one pass per request batch. Artifacts: params.json, model.pt (state_dict,
loaded with weights_only=True), features/ (JSON + .npy). No pickle.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from pipeline.core import device as placement
from pipeline.core.artifacts import atomic_write_json, read_json
from pipeline.core.schema import runtime_setting
from pipeline.core.types import CandidateSet, RequestBatch
from rankers.base import FeatureRankerMixin
from rankers.features import CrossFeatures
from rankers.mtgr import MTGR, MTGRConfig
from rankers.mtgr_config import MTGRRankerConfig
from rankers.mtgr_inputs import make_inputs
from rankers.training_data import RankingData

class MTGRRanker(FeatureRankerMixin):
    """The MTGR ranker of one MTGRRankerConfig (given whole or as its keys, flat or by part)."""

    data_parallel = True  # train.backend: ray trains it under Ray Train (pipeline/scale.py)
    config_class = MTGRRankerConfig  # what a config's `params` are checked against (pipeline/params.py)
    default_name = "mtgr"


    # where and how it runs, read by pipeline.core.device and set on a worker's copy by pipeline/scale.py
    num_threads, progress, device = (runtime_setting(k) for k in ("num_threads", "progress", "device"))

    def model_config(self, n_cross: int) -> MTGRConfig:
        attrs = self.features_.attrs_
        names = self.features_.config.attributes
        return MTGRConfig(
            n_items=len(attrs.price_bucket), attr_sizes=tuple(attrs.sizes[a] for a in names),
            n_price_buckets=self.config.features.price_buckets + 1, n_cross=n_cross, **asdict(self.config.model))

    def _new_model(self, cfg: MTGRConfig) -> MTGR:
        attrs = self.features_.attrs_
        table = np.stack([attrs.codes[a] for a in self.features_.config.attributes], axis=1)
        return MTGR(cfg, placement.tensor(table), placement.tensor(attrs.price_bucket))

    @placement.on_device
    def fit(self, train: RankingData, holdout: RankingData | None = None) -> "MTGRRanker":
        if not hasattr(self, "features_"):
            raise RuntimeError(f"ranker '{self.name}': call bind() before fit() (the model needs the item tables)")
        self._threads()
        torch.manual_seed(self.config.train.seed)
        self.config_ = self.model_config(train.features.shape[1])
        model = self._new_model(self.config_)
        mean = train.features.mean(axis=0)
        std = np.maximum(train.features.std(axis=0), 1e-3)
        model.cross_mean.copy_(placement.tensor(mean.astype(np.float32)))
        model.cross_std.copy_(placement.tensor(std.astype(np.float32)))
        from rankers.mtgr_train import train_model  # training only: serving never imports it

        report = train_model(model, train, holdout if holdout is not None else train.take(np.arange(0)),
                             self.config.train, self.progress)
        self.model_, self.feature_names_ = model, tuple(train.names)
        self.report_ = asdict(report)
        return self

    @placement.on_device
    @torch.no_grad()
    def score(self, batch: RequestBatch, pools: list[CandidateSet]) -> list[np.ndarray]:
        self._check_fitted("model_")
        self._threads()
        block = self._block(batch, pools)
        if block.names != self.feature_names_:
            raise ValueError(f"ranker '{self.name}': features {block.names} differ from training {self.feature_names_}")
        self.model_.eval()
        out = np.zeros(block.values.shape[0], np.float32)
        step = self.config.score_batch
        for lo in range(0, len(pools), step):
            hi = min(lo + step, len(pools))
            a, b = block.offsets[lo], block.offsets[hi]
            if a == b:
                continue
            offs = block.offsets[lo : hi + 1] - a
            inp = make_inputs(batch.take(np.arange(lo, hi)), block.items[a:b], block.values[a:b], offs)
            scores, _ = self.model_(inp)  # (G, M)
            sizes = np.diff(offs)
            mask = np.arange(scores.shape[1])[None, :] < sizes[:, None]
            out[a:b] = placement.numpy(scores)[mask]
        return block.split(out)

    def add_items(self, items) -> None:
        """As `FeatureRankerMixin.add_items`, and the model's item tables grow to match."""
        n = self.features_.n_items
        super().add_items(items)
        attrs = self.features_.attrs_
        names = self.features_.config.attributes
        m = len(attrs.price_bucket) - n
        table = np.stack([attrs.codes[a][n:] for a in names], axis=1) if names else np.zeros((m, 0), np.int64)
        self.model_.add_items(torch.from_numpy(table), torch.from_numpy(attrs.price_bucket[n:]))

    def _threads(self) -> None:
        if self.num_threads:
            torch.set_num_threads(int(self.num_threads))

    # persistence: JSON + torch state_dict (weights_only) + feature state, no pickle
    def save(self, path: Path) -> None:
        self._check_fitted("model_")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        torch.save(self.model_.state_dict(), path / "model.pt")
        self.features_.save(path / "features")
        params = self._params()  # nested; a flat file (older saves) loads too
        atomic_write_json(path / "params.json", {"params": params, "config": asdict(self.config_),
                                                 "feature_names": list(self.feature_names_), "report": self.report_})

    @classmethod
    def load(cls, path: Path) -> "MTGRRanker":
        path = Path(path)
        meta = read_json(path / "params.json")
        ranker = cls(**meta["params"])
        ranker.features_ = CrossFeatures.load(path / "features")
        cfg = meta["config"]
        ranker.config_ = MTGRConfig(**{**cfg, "attr_sizes": tuple(cfg["attr_sizes"])})
        ranker.model_ = ranker._new_model(ranker.config_)
        ranker.model_.load_state_dict(torch.load(path / "model.pt", map_location="cpu", weights_only=True))
        ranker.model_.to(placement.resolve(ranker.device))
        ranker.model_.eval()
        ranker.feature_names_ = tuple(meta["feature_names"])
        ranker.report_ = meta.get("report")
        return ranker
