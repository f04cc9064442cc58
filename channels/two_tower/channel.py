"""TwoTowerChannel: a transformer user tower and a content-aware item tower, retrieved by faiss.

fit: learn the item-feature vocabularies, train the towers (early stopping on FitData.valid while
fitting on FitData.valid_history when validation data is given, else a fixed epoch count; with
`refit`, then a fresh model on the full history for the best epoch count), then
put every item's vector in the configured faiss index. At retrieval the user vector of each
request comes from its own (most recent `max_len`) history; the index is searched for k + the
history width and seen items are dropped.
New items: `add_items(frame)` computes their vectors from content (their id maps to the shared
'unknown' row) and adds them to the index without retraining; `item_vectors(frame)` computes
vectors without adding. Artifacts: params.json, model.pt (state_dict, loaded weights_only),
features.json + features_*.npy, item_raw.npy, index.faiss. No pickle.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from channels.two_tower.config import TwoTowerConfig, train_config
from channels.two_tower.features import ItemFeatureEncoder, ItemFeatures
from channels.two_tower.index import IndexConfig, ItemIndex
from channels.two_tower.model import ItemInputs, ItemTowerConfig, TwoTowerModel
from channels.sequence import build_windows
from channels.two_tower.train import build_requests, fit_model, trim
from pipeline.core import device as placement
from pipeline.core.artifacts import atomic_write_json, read_json
from pipeline.core.protocols import FitData
from pipeline.core.schema import Configured, runtime_setting
from pipeline.core.types import PAD, RequestBatch, Retrieved

log = logging.getLogger(__name__)

USER_CHUNK = 256  # requests encoded together (sorted by history length to cut padding)


def item_inputs(features: ItemFeatures, ids: np.ndarray | None = None) -> ItemInputs:
    ids = np.arange(len(features), dtype=np.int64) if ids is None else np.array(ids, np.int64)  # a writable copy
    return ItemInputs(placement.tensor(ids), *(placement.tensor(np.ascontiguousarray(getattr(features, f)))
                                                 for f in ("category", "brand", "path", "price", "tokens")))


class TwoTowerChannel(Configured):
    """The two-tower channel of one `TwoTowerConfig` (config.py), given whole or as its keys (flat
    or by part): `TwoTowerChannel(TwoTowerConfig(...), name=...)` or `TwoTowerChannel(lr=0.004)`."""

    data_parallel = True  # train.backend: ray fits it under Ray Train (pipeline/scale.py)
    config_class = TwoTowerConfig  # what a config's `params` are checked against (pipeline/params.py)
    default_name = "two_tower"


    # where and how it runs, read by pipeline.core.device and set on a worker's copy by pipeline/scale.py
    num_threads, progress, device = (runtime_setting(k) for k in ("num_threads", "progress", "device"))

    def item_config(self, n_items: int, sizes: dict[str, int]) -> ItemTowerConfig:
        item = self.config.item
        return ItemTowerConfig(n_items=n_items, d_model=self.config.user.d_model, use_content=item.use_content,
                               n_category=sizes["category"], n_brand=sizes["brand"], n_path=sizes["path"],
                               n_price=sizes["price"], text_buckets=sizes["tokens"], id_dropout=item.id_dropout)

    def _build_model(self, n_items: int, sizes: dict[str, int], seed: int) -> TwoTowerModel:
        torch.manual_seed(seed)
        return TwoTowerModel(self.item_config(n_items, sizes), self.config.user, normalize=self.config.item.normalize)

    # ---- fit / retrieve -------------------------------------------------------------------
    @placement.on_device
    def fit(self, data: FitData) -> "TwoTowerChannel":
        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        seed = data.seed if self.config.seed is None else self.config.seed
        cfg, max_len = train_config(self.config, seed), self.config.user.max_len
        self.encoder_ = ItemFeatureEncoder(**asdict(self.config.features)).fit(data.items)
        self.features_ = self.encoder_.transform(data.items)
        if len(self.features_) != data.n_items:
            raise ValueError(f"channel '{self.name}': items table has {len(self.features_)} rows, "
                             f"FitData.n_items is {data.n_items}")
        self.n_trained_ = data.n_items
        content_note = None
        if self.config.item.use_content and not self.features_.has_content():
            # a catalog without metadata (e.g. Amazon Toys here): the shared 'unknown' content vector
            # only blurs the id embeddings (Toys: valid R@10 .012 after 5 epochs with it, .040 after
            # 4 without), so the item tower is the id embedding alone; saved params say so
            log.warning("channel '%s': the items table has no content (no category, brand, price or text); "
                        "training without content features (use_content=False)", self.name)
            self.configure(use_content=False)
            content_note = "no item content in the data: use_content set to False"
        self.model_ = self._build_model(data.n_items, self.encoder_.cardinalities(), seed)
        with_valid = data.valid is not None and data.valid_history is not None
        frame = data.valid_history if with_valid else data.train
        valid = build_requests(data.valid_history, data.valid, max_len) if with_valid else None
        report = fit_model(self.model_, item_inputs(self.features_), build_windows(frame, max_len), cfg, valid)
        self.fit_report_ = {"best_epoch": report.best_epoch, "best": report.best, "epochs": report.epochs,
                            "seconds": report.seconds, "cpu_seconds": report.cpu_seconds, "early_stopping": with_valid,
                            "content": content_note or ("used" if self.config.item.use_content else "off")}
        if self.config.refit and with_valid:  # a fresh model on the full history, for the epoch count validation chose
            self.model_ = self._build_model(data.n_items, self.encoder_.cardinalities(), seed)
            again = fit_model(self.model_, item_inputs(self.features_), build_windows(data.train, max_len),
                              replace(cfg, epochs=max(report.best_epoch, 1)))
            self.fit_report_["refit"] = {"epochs": again.best_epoch, "seconds": again.seconds,
                                         "on": "train (validation targets included)"}
        self._index_all(self.config.ann)
        return self

    @torch.no_grad()
    def _index_all(self, index_cfg: IndexConfig) -> None:
        self.model_.eval()
        self.item_raw_ = placement.numpy(self.model_.item_tower(item_inputs(self.features_)))  # (N, d)
        self.index_ = ItemIndex.build(self._scored(self.item_raw_), index_cfg)

    def _scored(self, raw: np.ndarray) -> np.ndarray:
        return placement.numpy(self.model_.output(placement.tensor(raw))).astype(np.float32)

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise RuntimeError(f"channel '{self.name}': call fit() or load() before retrieve()")

    @placement.on_device
    @torch.no_grad()
    def user_vectors(self, batch: RequestBatch) -> np.ndarray:
        """The user tower's vector of every request (float32 [B, d]) from its last max_len items."""
        self._check_fitted()
        self.model_.eval()
        max_len = self.config.user.max_len
        history, times = batch.history[:, -max_len:], batch.history_times[:, -max_len:]
        raw = placement.tensor(self.item_raw_)  # (N, d)
        out = np.zeros((len(batch), self.config.user.d_model), np.float32)
        order = np.argsort((history != PAD).sum(1), kind="stable")  # similar lengths share a chunk
        for lo in range(0, len(order), USER_CHUNK):
            rows = order[lo : lo + USER_CHUNK]
            h, t = trim(history[rows], times[rows])  # drop columns that are padding in every row
            states = self.model_.user_states(raw, placement.tensor(h), placement.tensor(t))  # (b, L, d)
            out[rows] = placement.numpy(states[:, -1])  # (b, d)
        return out

    def retrieve(self, batch: RequestBatch, k: int) -> Retrieved:
        self._check_fitted()
        if len(batch) == 0 or k <= 0:
            return Retrieved.empty(len(batch), max(k, 0))
        scores, items = self.index_.search(self.user_vectors(batch), k + batch.max_seen())
        seen = batch.is_seen(np.arange(len(batch))[:, None], items) | (items == PAD)  # (B, K)
        order = np.argsort(seen, axis=1, kind="stable")[:, :k]  # unseen first, best first
        items = np.take_along_axis(items, order, 1)
        scores = np.take_along_axis(scores, order, 1).astype(np.float32)
        drop = np.take_along_axis(seen, order, 1)
        items[drop], scores[drop] = PAD, -np.inf
        if items.shape[1] < k:
            pad = k - items.shape[1]
            items = np.pad(items, ((0, 0), (0, pad)), constant_values=PAD)
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        return Retrieved(items, scores)

    # ---- new items ------------------------------------------------------------------------
    @placement.on_device
    @torch.no_grad()
    def item_vectors(self, items: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Scored vectors (float32 [n, d]): of known item ids (array), or computed by the item tower
        from an items frame (item_id, content columns); ids never trained use the unknown row."""
        self._check_fitted()
        if not isinstance(items, pd.DataFrame):
            ids = np.asarray(items, np.int64)
            if ids.size and (ids.min() < 0 or ids.max() >= len(self.item_raw_)):
                raise ValueError(f"channel '{self.name}': item ids must be in [0, {len(self.item_raw_)}); "
                                 "add new items with add_items()")
            return self._scored(self.item_raw_[ids])
        return self._scored(self._raw_from_frame(items))

    @torch.no_grad()
    def _raw_from_frame(self, items: pd.DataFrame) -> np.ndarray:
        if "item_id" not in items.columns:
            raise ValueError(f"channel '{self.name}': the items frame needs an 'item_id' column (dense index)")
        self.model_.eval()
        inputs = item_inputs(self.encoder_.transform(items), items["item_id"].to_numpy(np.int64))
        return placement.numpy(self.model_.item_tower(inputs))  # (n, d)

    @placement.on_device
    def add_items(self, items: pd.DataFrame) -> np.ndarray:
        """Add items with the next dense ids (n, n+1, ...) to the index; returns their vectors."""
        self._check_fitted()
        n = len(self.item_raw_)
        ids = items["item_id"].to_numpy(np.int64) if "item_id" in items.columns else None
        if ids is None or not np.array_equal(ids, np.arange(n, n + len(items))):
            raise ValueError(f"channel '{self.name}': new items need item_id {n}..{n + len(items) - 1} in order")
        raw = self._raw_from_frame(items)
        self.features_ = self.features_.concat(self.encoder_.transform(items))
        self.item_raw_ = np.concatenate([self.item_raw_, raw])
        vecs = self._scored(raw)
        self.index_.add(vecs)
        return vecs

    # ---- persistence ----------------------------------------------------------------------
    def save(self, path: Path) -> None:
        self._check_fitted()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        torch.save(self.model_.state_dict(), path / "model.pt")
        self.encoder_.save(path)
        self.features_.save(path)
        np.save(path / "item_raw.npy", self.item_raw_, allow_pickle=False)
        self.index_.save(path / "index.faiss")
        atomic_write_json(path / "params.json", {"params": self._params(), "n_trained": self.n_trained_,
                                                 "fit_report": self.fit_report_})

    @classmethod
    def load(cls, path: Path) -> "TwoTowerChannel":
        path = Path(path)
        meta = read_json(path / "params.json")
        ch = cls(**meta["params"])  # nested, or flat when saved before TwoTowerConfig: both are read
        if ch.num_threads:
            torch.set_num_threads(ch.num_threads)
        ch.n_trained_, ch.fit_report_ = int(meta["n_trained"]), meta["fit_report"]
        ch.encoder_ = ItemFeatureEncoder.load(path)
        ch.features_ = ItemFeatures.load(path)
        ch.model_ = ch._build_model(ch.n_trained_, ch.encoder_.cardinalities(), 0)
        ch.model_.load_state_dict(torch.load(path / "model.pt", map_location="cpu", weights_only=True))
        ch.model_.to(placement.resolve(ch.device))
        ch.model_.eval()
        ch.item_raw_ = np.load(path / "item_raw.npy", allow_pickle=False)
        ch.index_ = ItemIndex.load(path / "index.faiss", ch.config.ann)
        return ch
