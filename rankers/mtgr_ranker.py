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

from pipeline.core import device
from pipeline.core.artifacts import atomic_write_json, read_json
from pipeline.core.types import CandidateSet, RequestBatch
from rankers.base import FeatureRankerMixin
from rankers.features import CrossFeatures
from rankers.mtgr import MTGR, MTGRConfig
from rankers.mtgr_inputs import make_inputs
from rankers.training_data import RankingData

_MODEL = ("d_model", "n_layers", "n_heads", "dropout", "id_dropout", "group_norm", "cross_features", "mask")
_TRAIN = ("lr", "weight_decay", "batch_size", "max_epochs", "patience", "pointwise_weight", "max_train_candidates", "seed")
_OTHER = ("name", "train_folds", "holdout", "windows_days", "price_buckets", "num_threads", "score_batch", "progress",
          "device")


class MTGRRanker(FeatureRankerMixin):
    data_parallel = True  # train.backend: ray trains it under Ray Train (pipeline/scale.py)

    def __init__(
        self, *, name: str = "mtgr", d_model: int = 64, n_layers: int = 2, n_heads: int = 2, dropout: float = 0.2,
        id_dropout: float = 0.1, group_norm: bool = True, cross_features: bool = True, mask: str = "dynamic",
        lr: float = 1e-3, weight_decay: float = 0.0, batch_size: int = 32, max_epochs: int = 20, patience: int = 3,
        pointwise_weight: float = 0.2, max_train_candidates: int | None = None, seed: int = 0,
        train_folds: int = 1, holdout: float = 0.1, windows_days: tuple[int, ...] = (7, 30, 365),
        price_buckets: int = 10, num_threads: int | None = None, score_batch: int = 64, progress: bool = False,
        device: str = "cpu",
    ) -> None:
        self.name = name
        self.d_model, self.n_layers, self.n_heads, self.dropout = d_model, n_layers, n_heads, dropout
        self.id_dropout, self.group_norm, self.cross_features, self.mask = id_dropout, group_norm, cross_features, mask
        self.lr, self.weight_decay, self.batch_size, self.max_epochs = lr, weight_decay, batch_size, max_epochs
        self.patience, self.pointwise_weight, self.max_train_candidates = patience, pointwise_weight, max_train_candidates
        self.seed, self.train_folds, self.holdout = seed, train_folds, holdout
        self.windows_days, self.price_buckets = tuple(windows_days), price_buckets
        self.num_threads, self.score_batch, self.progress = num_threads, score_batch, progress
        self.device = device  # auto | cpu | cuda[:N] (pipeline/core/device.py)

    def model_config(self, n_cross: int) -> MTGRConfig:
        attrs = self.features_.attrs_
        names = self.features_.config.attributes
        return MTGRConfig(
            n_items=len(attrs.price_bucket), attr_sizes=tuple(attrs.sizes[a] for a in names),
            n_price_buckets=self.price_buckets + 1, n_cross=n_cross, **{k: getattr(self, k) for k in _MODEL})

    def _new_model(self, cfg: MTGRConfig) -> MTGR:
        attrs = self.features_.attrs_
        table = np.stack([attrs.codes[a] for a in self.features_.config.attributes], axis=1)
        return MTGR(cfg, device.tensor(table), device.tensor(attrs.price_bucket))

    @device.on_device
    def fit(self, train: RankingData, holdout: RankingData | None = None) -> "MTGRRanker":
        if not hasattr(self, "features_"):
            raise RuntimeError(f"ranker '{self.name}': call bind() before fit() (the model needs the item tables)")
        self._threads()
        torch.manual_seed(self.seed)
        self.config_ = self.model_config(train.features.shape[1])
        model = self._new_model(self.config_)
        mean = train.features.mean(axis=0)
        std = np.maximum(train.features.std(axis=0), 1e-3)
        model.cross_mean.copy_(device.tensor(mean.astype(np.float32)))
        model.cross_std.copy_(device.tensor(std.astype(np.float32)))
        from rankers.mtgr_train import TrainConfig, train_model  # training only: serving never imports it

        tcfg = TrainConfig(**{k: getattr(self, k) for k in _TRAIN})
        report = train_model(model, train, holdout if holdout is not None else train.take(np.arange(0)), tcfg, self.progress)
        self.model_, self.feature_names_ = model, tuple(train.names)
        self.report_ = asdict(report)
        return self

    @device.on_device
    @torch.no_grad()
    def score(self, batch: RequestBatch, pools: list[CandidateSet]) -> list[np.ndarray]:
        self._check_fitted("model_")
        self._threads()
        block = self._block(batch, pools)
        if block.names != self.feature_names_:
            raise ValueError(f"ranker '{self.name}': features {block.names} differ from training {self.feature_names_}")
        self.model_.eval()
        out = np.zeros(block.values.shape[0], np.float32)
        for lo in range(0, len(pools), self.score_batch):
            hi = min(lo + self.score_batch, len(pools))
            a, b = block.offsets[lo], block.offsets[hi]
            if a == b:
                continue
            offs = block.offsets[lo : hi + 1] - a
            inp = make_inputs(batch.take(np.arange(lo, hi)), block.items[a:b], block.values[a:b], offs)
            scores, _ = self.model_(inp)  # (G, M)
            sizes = np.diff(offs)
            mask = np.arange(scores.shape[1])[None, :] < sizes[:, None]
            out[a:b] = device.numpy(scores)[mask]
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
        params = {k: getattr(self, k) for k in _MODEL + _TRAIN + _OTHER}
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
        ranker.model_.to(device.resolve(ranker.device))
        ranker.model_.eval()
        ranker.feature_names_ = tuple(meta["feature_names"])
        ranker.report_ = meta.get("report")
        return ranker
