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
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from channels.two_tower.features import ItemFeatureEncoder, ItemFeatures
from channels.two_tower.index import IndexConfig, ItemIndex
from channels.two_tower.model import ItemInputs, ItemTowerConfig, TwoTowerModel, UserTowerConfig
from channels.sequence import build_windows
from channels.two_tower.train import TrainConfig, build_requests, fit_model, trim
from pipeline.core import device
from pipeline.core.artifacts import atomic_write_json, read_json
from pipeline.core.protocols import FitData
from pipeline.core.types import PAD, RequestBatch, Retrieved

log = logging.getLogger(__name__)

USER_CHUNK = 256  # requests encoded together (sorted by history length to cut padding)


def item_inputs(features: ItemFeatures, ids: np.ndarray | None = None) -> ItemInputs:
    ids = np.arange(len(features), dtype=np.int64) if ids is None else np.array(ids, np.int64)  # a writable copy
    return ItemInputs(device.tensor(ids), *(device.tensor(np.ascontiguousarray(getattr(features, f)))
                                                 for f in ("category", "brand", "path", "price", "tokens")))


class TwoTowerChannel:
    data_parallel = True  # train.backend: ray fits it under Ray Train (pipeline/scale.py)

    def __init__(
        self, *, name: str = "two_tower",
        # user tower
        d_model: int = 64, n_layers: int = 2, n_heads: int = 2, d_ff: int = 256, max_len: int = 50,
        dropout: float = 0.4, time_buckets: int = 0,
        # item tower
        use_content: bool = True, text_buckets: int = 32768, max_tokens: int = 32, price_buckets: int = 10,
        min_count: int = 2, id_dropout: float = 0.0, normalize: bool = False,
        # training
        loss: str = "sampled", n_negatives: int = 2048, sampler: str = "popularity", sampler_power: float = 0.75,
        temperature: float = 1.0, weighting: str = "batch", lr: float = 4e-3, weight_decay: float = 0.0,
        batch_size: int = 256, max_epochs: int = 60, patience: int = 5, epochs: int = 20, refit: bool = False,
        # index
        index: str = "flat", nlist: int = 128, nprobe: int = 16, hnsw_m: int = 32, ef_search: int = 256,
        ef_construction: int = 200, use_gpu: bool = True,
        # runtime
        num_threads: int | None = 2, seed: int | None = None, progress: bool = True, eval_batch_size: int = 1024,
        device: str = "cpu",
    ) -> None:
        self.name = name
        self.d_model, self.n_layers, self.n_heads, self.d_ff, self.max_len = d_model, n_layers, n_heads, d_ff, max_len
        self.dropout, self.time_buckets = dropout, time_buckets
        self.use_content, self.text_buckets, self.max_tokens = use_content, text_buckets, max_tokens
        self.price_buckets, self.min_count = price_buckets, min_count
        self.id_dropout, self.normalize = id_dropout, normalize
        self.loss, self.n_negatives, self.sampler, self.sampler_power = loss, n_negatives, sampler, sampler_power
        self.temperature, self.weighting, self.lr = temperature, weighting, lr
        self.weight_decay, self.batch_size = weight_decay, batch_size
        self.max_epochs, self.patience, self.epochs, self.refit = max_epochs, patience, epochs, refit
        self.index, self.nlist, self.nprobe, self.hnsw_m = index, nlist, nprobe, hnsw_m
        self.ef_search, self.ef_construction, self.use_gpu = ef_search, ef_construction, use_gpu
        self.num_threads, self.seed, self.progress, self.eval_batch_size = num_threads, seed, progress, eval_batch_size
        self.device = device  # auto | cpu | cuda[:N] (pipeline/core/device.py)

    # ---- the small configs handed to each part -------------------------------------------
    def _params(self) -> dict:
        return {k: v for k, v in vars(self).items() if not k.endswith("_") and not k.startswith("_")}

    def item_config(self, n_items: int, sizes: dict[str, int]) -> ItemTowerConfig:
        return ItemTowerConfig(n_items=n_items, d_model=self.d_model, use_content=self.use_content,
                               n_category=sizes["category"], n_brand=sizes["brand"], n_path=sizes["path"],
                               n_price=sizes["price"], text_buckets=sizes["tokens"], id_dropout=self.id_dropout)

    def user_config(self) -> UserTowerConfig:
        return UserTowerConfig(d_model=self.d_model, n_layers=self.n_layers, n_heads=self.n_heads, d_ff=self.d_ff,
                               max_len=self.max_len, dropout=self.dropout, time_buckets=self.time_buckets)

    def train_config(self, seed: int) -> TrainConfig:
        return TrainConfig(loss=self.loss, n_negatives=self.n_negatives, sampler=self.sampler,
                           sampler_power=self.sampler_power, temperature=self.temperature,
                           weighting=self.weighting, lr=self.lr,
                           weight_decay=self.weight_decay, batch_size=self.batch_size, max_epochs=self.max_epochs,
                           patience=self.patience, epochs=self.epochs, max_len=self.max_len, seed=seed,
                           eval_batch_size=self.eval_batch_size, progress=self.progress)

    def index_config(self) -> IndexConfig:
        return IndexConfig(kind=self.index, nlist=self.nlist, nprobe=self.nprobe, hnsw_m=self.hnsw_m,
                           ef_search=self.ef_search, ef_construction=self.ef_construction, use_gpu=self.use_gpu)

    def _build_model(self, n_items: int, sizes: dict[str, int], seed: int) -> TwoTowerModel:
        torch.manual_seed(seed)
        return TwoTowerModel(self.item_config(n_items, sizes), self.user_config(), normalize=self.normalize)

    # ---- fit / retrieve -------------------------------------------------------------------
    @device.on_device
    def fit(self, data: FitData) -> "TwoTowerChannel":
        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        seed = data.seed if self.seed is None else self.seed
        cfg = self.train_config(seed)  # validates loss / sampler before any work
        index_cfg = self.index_config()
        self.encoder_ = ItemFeatureEncoder(text_buckets=self.text_buckets, max_tokens=self.max_tokens,
                                           price_buckets=self.price_buckets, min_count=self.min_count).fit(data.items)
        self.features_ = self.encoder_.transform(data.items)
        if len(self.features_) != data.n_items:
            raise ValueError(f"channel '{self.name}': items table has {len(self.features_)} rows, "
                             f"FitData.n_items is {data.n_items}")
        self.n_trained_ = data.n_items
        content_note = None
        if self.use_content and not self.features_.has_content():
            # a catalog without metadata (e.g. Amazon Toys here): the shared 'unknown' content vector
            # only blurs the id embeddings (Toys: valid R@10 .012 after 5 epochs with it, .040 after
            # 4 without), so the item tower is the id embedding alone; saved params say so
            log.warning("channel '%s': the items table has no content (no category, brand, price or text); "
                        "training without content features (use_content=False)", self.name)
            self.use_content, content_note = False, "no item content in the data: use_content set to False"
        self.model_ = self._build_model(data.n_items, self.encoder_.cardinalities(), seed)
        with_valid = data.valid is not None and data.valid_history is not None
        frame = data.valid_history if with_valid else data.train
        valid = build_requests(data.valid_history, data.valid, self.max_len) if with_valid else None
        report = fit_model(self.model_, item_inputs(self.features_), build_windows(frame, self.max_len), cfg, valid)
        self.fit_report_ = {"best_epoch": report.best_epoch, "best": report.best, "epochs": report.epochs,
                            "seconds": report.seconds, "cpu_seconds": report.cpu_seconds, "early_stopping": with_valid,
                            "content": content_note or ("used" if self.use_content else "off")}
        if self.refit and with_valid:  # a fresh model on the full history, for the epoch count validation chose
            self.model_ = self._build_model(data.n_items, self.encoder_.cardinalities(), seed)
            again = fit_model(self.model_, item_inputs(self.features_), build_windows(data.train, self.max_len),
                              replace(cfg, epochs=max(report.best_epoch, 1)))
            self.fit_report_["refit"] = {"epochs": again.best_epoch, "seconds": again.seconds,
                                         "on": "train (validation targets included)"}
        self._index_all(index_cfg)
        return self

    @torch.no_grad()
    def _index_all(self, index_cfg: IndexConfig) -> None:
        self.model_.eval()
        self.item_raw_ = device.numpy(self.model_.item_tower(item_inputs(self.features_)))  # (N, d)
        self.index_ = ItemIndex.build(self._scored(self.item_raw_), index_cfg)

    def _scored(self, raw: np.ndarray) -> np.ndarray:
        return device.numpy(self.model_.output(device.tensor(raw))).astype(np.float32)

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise RuntimeError(f"channel '{self.name}': call fit() or load() before retrieve()")

    @device.on_device
    @torch.no_grad()
    def user_vectors(self, batch: RequestBatch) -> np.ndarray:
        """The user tower's vector of every request (float32 [B, d]) from its last max_len items."""
        self._check_fitted()
        self.model_.eval()
        history, times = batch.history[:, -self.max_len :], batch.history_times[:, -self.max_len :]
        raw = device.tensor(self.item_raw_)  # (N, d)
        out = np.zeros((len(batch), self.d_model), np.float32)
        order = np.argsort((history != PAD).sum(1), kind="stable")  # similar lengths share a chunk
        for lo in range(0, len(order), USER_CHUNK):
            rows = order[lo : lo + USER_CHUNK]
            h, t = trim(history[rows], times[rows])  # drop columns that are padding in every row
            states = self.model_.user_states(raw, device.tensor(h), device.tensor(t))  # (b, L, d)
            out[rows] = device.numpy(states[:, -1])  # (b, d)
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
    @device.on_device
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
        return device.numpy(self.model_.item_tower(inputs))  # (n, d)

    @device.on_device
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
        ch = cls(**meta["params"])
        if ch.num_threads:
            torch.set_num_threads(ch.num_threads)
        ch.n_trained_, ch.fit_report_ = int(meta["n_trained"]), meta["fit_report"]
        ch.encoder_ = ItemFeatureEncoder.load(path)
        ch.features_ = ItemFeatures.load(path)
        ch.model_ = ch._build_model(ch.n_trained_, ch.encoder_.cardinalities(), 0)
        ch.model_.load_state_dict(torch.load(path / "model.pt", map_location="cpu", weights_only=True))
        ch.model_.to(device.resolve(ch.device))
        ch.model_.eval()
        ch.item_raw_ = np.load(path / "item_raw.npy", allow_pickle=False)
        ch.index_ = ItemIndex.load(path / "index.faiss", ch.index_config())
        return ch
