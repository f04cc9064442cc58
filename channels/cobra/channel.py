"""CobraChannel: generative retrieval with semantic IDs (sparse) and dense item vectors.

Modes (`mode`), each an ID scheme plus a retrieval head (parts.py):
- 'cobra': shared IDs + the dense head: the model reads codes + dense vectors, predicts the ID
  level by level and then a dense vector; retrieval = constrained beam search + BeamFusion (beam.py);
- 'cobra_sparse': shared IDs + the sparse head: a sparse-only model, items inside an ID ranked by a
  popularity prior;
- 'tiger': unique IDs (an extra disambiguation level) + the sparse head.
fit: content vectors (encoder.py) -> semantic IDs (semantic_ids.py / rqvae.py) and their report
-> model training (train.py; early stopping on FitData.valid while fitting on valid_history when
given; the dense head conditioned on the generated ID, trained on true and drawn IDs:
`dense_condition`; `refit` retrains on the full history for the best epoch count) -> item vectors
and the faiss index. Every beam carries its own dense vector: one faiss search for all beams of a
batch. `add_items(frame)` gives new items a code and a dense vector from content and makes them
retrievable at once. Artifacts: params.json, model.pt
(state_dict, loaded weights_only), codes/active/popularity .npy, features_*.npy, encoder/ and
quantizer/ folders (JSON + .npy), item_raw.npy, index.faiss, semantic_ids_report.json. No pickle.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from channels.cobra.beam import BeamConfig, Candidates, beam_search, drop_seen, leaf_candidates, top_unique, with_cold_quota
from channels.cobra.catalog import leaf_log_prior, normalize
from channels.cobra.config import CobraConfig, derived
from channels.cobra.encoder import ContentEncoder
from channels.cobra.features import build_features, price_edges
from channels.cobra import new_items
from channels.cobra.model import CobraModel
from channels.cobra.parts import MODES
from channels.cobra.persist import read_meta, restore_channel, save_channel
from channels.cobra.requests import valid_callback
from channels.cobra.semantic_ids import code_report, make_quantizer, with_disambiguation
from channels.cobra.train import TrainConfig, fit_model
from channels.cobra.trie import CodeTrie
from channels.sequence import build_windows
from pipeline.core import device as placement
from pipeline.core.protocols import FitData
from pipeline.core.schema import Configured, runtime_setting
from pipeline.core.types import PAD, RequestBatch, Retrieved



class CobraChannel(Configured):
    """The COBRA channel of one `CobraConfig` (config.py), given whole or as its keys (flat or by
    part): `CobraChannel(CobraConfig(...), name=...)` or `CobraChannel(name=..., beam_size=50)`."""

    data_parallel = True  # train.backend: ray fits it under Ray Train (pipeline/scale.py)
    config_class = CobraConfig  # what a config's `params` are checked against (pipeline/params.py)

    default_name = "cobra"

    def __init__(self, config: CobraConfig | None = None, /, *, name: str = "cobra", **params: Any) -> None:
        super().__init__(config, name=name, **params)
        self.parts = MODES[self.config.mode]  # the ID scheme and the retrieval head this mode is made of

    def configure(self, **params: Any) -> "CobraChannel":
        """Change parameters (flat or by part) in place: the retrieval-time ones (beam, fusion,
        cold quota) apply to a fitted channel at once; the mode cannot change after fitting."""
        config = self.config.with_(**params)
        if config.mode != self.config.mode and hasattr(self, "model_"):
            raise ValueError(f"channel '{self.name}': the mode of a fitted channel cannot change")
        self.config, self.parts = config, MODES[config.mode]
        return self

    # where and how it runs, read by pipeline.core.device and set on a worker's copy by pipeline/scale.py
    num_threads, progress, device = (runtime_setting(k) for k in ("num_threads", "progress", "device"))

    @property
    def dense(self) -> bool:
        """Whether the mode's head is the dense one (the model has a dense branch, items have vectors)."""
        return self.parts.head.dense

    def beam_config(self, beam_size: int | None = None) -> BeamConfig:
        return replace(self.config.beam, beam_size=beam_size) if beam_size else self.config.beam

    # ---- fit ------------------------------------------------------------------------------
    @placement.on_device
    def fit(self, data: FitData) -> "CobraChannel":
        """Train on `data.train`, or (validation data given) on `data.valid_history` with early
        stopping on `data.valid`; with `refit`, then train a fresh model on `data.train` for the
        best epoch count (the validation targets are then learned from too)."""
        cfg = self.config
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        seed = data.seed if cfg.seed is None else cfg.seed
        tcfg = derived(cfg, seed, self.parts.ids.unique)[2]
        with_valid = data.valid is not None and data.valid_history is not None
        frame = data.valid_history if with_valid else data.train
        report = self._train(data, frame, seed, tcfg, with_valid)
        self.fit_report_ = {"best_epoch": report.best_epoch, "best": report.best, "epochs": report.epochs,
                            "seconds": round(report.seconds, 1), "early_stopping": with_valid}
        if cfg.refit and with_valid:
            again = self._train(data, data.train, seed, replace(tcfg, epochs=max(report.best_epoch, 1)), False)
            self.fit_report_["refit"] = {"epochs": again.best_epoch, "seconds": round(again.seconds, 1),
                                         "on": "train (validation targets included)"}
        self._refresh()
        return self

    def _train(self, data: FitData, frame: pd.DataFrame, seed: int, tcfg: TrainConfig, with_valid: bool):
        """Items, IDs and a fresh model fitted on `frame` (early stopping on data.valid when asked)."""
        content_dim = self._fit_items(data, frame, seed)
        self.model_cfg_ = self.config.model.build(
            code_sizes=tuple(self.sizes_), n_tokens=len(getattr(self.encoder_, "vocabulary_", {}) or {}) + 1,
            content_dim=content_dim, n_price=len(self.price_edges_) + 2, n_items=data.n_items, dense=self.dense)
        torch.manual_seed(seed)
        self.model_ = CobraModel(self.model_cfg_)
        self._refresh()
        evaluate = valid_callback(self, data.valid_history, data.valid, self.config.valid_users, seed) if with_valid else None
        return fit_model(self.model_, placement.tensor(self.codes_), self.features_.to_torch(),
                         build_windows(frame, self.config.model.max_len), self.popularity_, tcfg,
                         evaluate=(lambda: (self._refresh(), evaluate())[1]) if evaluate else None,
                         child=list(self.trie_.child))

    def _fit_items(self, data: FitData, frame: pd.DataFrame, seed: int) -> int:
        """Content encoder, semantic IDs and their report, item features; returns the content width."""
        enc_cfg, id_cfg, _ = derived(self.config, seed, self.parts.ids.unique)
        items = self.config.items
        catalog = data.items.sort_values("item_id", kind="stable").reset_index(drop=True)
        ids, n = catalog["item_id"].to_numpy(np.int64), data.n_items
        if ids.size and (ids.min() < 0 or ids.max() >= n or np.unique(ids).size != ids.size):
            raise ValueError(f"channel '{self.name}': items need distinct item_id in [0, {n})")
        collab_vectors = np.load(items.collab_vectors_path, allow_pickle=False) if items.collab_vectors_path else None
        self.encoder_ = ContentEncoder(enc_cfg).fit(catalog, frame, n, collab_vectors)
        content = self.encoder_.transform(catalog)
        self.quantizer_ = make_quantizer(id_cfg).fit(content)
        base = self.quantizer_.encode(content)  # (C, Lq)
        self.popularity_ = np.bincount(frame["item_id"].to_numpy(np.int64), minlength=n).astype(np.float64)[:n]
        self.active_ = np.zeros(n, bool)
        self.active_[ids] = True
        codes, self.sizes_ = with_disambiguation(base, id_cfg, self.name)
        self.codes_ = np.zeros((n, len(self.sizes_)), np.int64)
        self.codes_[ids] = codes
        self.report_ = self._report(base, ids)
        self.price_edges_ = price_edges(catalog["price"], items.price_buckets) if "price" in catalog else np.zeros(0)
        feats = build_features(self.encoder_.tfidf(catalog), content, catalog.get("price"), self.price_edges_, ids,
                               self.popularity_[ids] > 0, items.max_tokens)
        self.features_ = feats.zeros(n).set_rows(ids, feats)
        return content.shape[1]

    def _report(self, base: np.ndarray, ids: np.ndarray) -> dict:
        rep = code_report(base, tuple(self.config.ids.levels), self.popularity_[ids])
        rep |= {"mode": self.mode, "quantizer": self.config.ids.quantizer}
        rep["collision_rate_before_disambiguation"] = rep["full_code"]["collision_rate"]
        return self.parts.ids.report(rep, self.sizes_)

    def _refresh(self) -> None:
        """Rebuild the trie, the in-ID prior and what the head derives (dense: item vectors, index)."""
        self.trie_ = CodeTrie.build(self.codes_, tuple(self.sizes_), self.active_)
        self.log_prior_ = leaf_log_prior(self.trie_, self.popularity_, self.active_)
        self.parts.head.refresh(self)
        self.cold_ = self.cold_items()

    def _scored(self, raw: np.ndarray) -> np.ndarray:
        """The item vectors the dense similarity reads: L2-normalised (cosine) or raw (dot)."""
        return normalize(raw) if self.config.train.similarity == "cosine" else np.ascontiguousarray(raw, np.float32)

    # ---- retrieve -------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise RuntimeError(f"channel '{self.name}': call fit() or load() before retrieve()")

    @placement.on_device
    @torch.no_grad()
    def history_states(self, history: np.ndarray) -> torch.Tensor:
        """The model's state after the last history item of every row (B, d)."""
        hist = history[:, -self.config.model.max_len :]
        real = (hist != PAD) & self.active_[np.maximum(hist, 0)]  # items without a code are skipped
        used = real.any(axis=0)
        start = int(np.argmax(used)) if used.any() else hist.shape[1] - 1
        hist, real = hist[:, start:], real[:, start:]  # drop columns that are padding in every row
        real_t = placement.tensor(real)
        idx = placement.tensor(np.where(real, hist, 0))
        codes = placement.tensor(self.codes_)[idx]  # (B, T, L)
        dense = self.parts.head.history_inputs(self, idx)  # (B, T, D), or None
        if self.model_.training:  # eval() walks every module: a cost per request worth skipping
            self.model_.eval()
        return self.model_.encode(codes, dense, real_t)[:, -1]  # (B, d)

    @placement.on_device
    def retrieve(self, batch: RequestBatch, k: int, beam_size: int | None = None) -> Retrieved:
        self._check_fitted()
        if len(batch) == 0 or k <= 0:
            return Retrieved.empty(len(batch), max(k, 0))
        step = self.config.eval_batch_size
        parts = [self._retrieve_rows(batch.take(slice(lo, lo + step)), k, beam_size) for lo in range(0, len(batch), step)]
        return Retrieved(np.concatenate([p.items for p in parts]), np.concatenate([p.scores for p in parts]))

    @placement.on_device
    @torch.no_grad()
    def candidates(self, history: np.ndarray, beam_size: int | None = None,
                   seen: tuple[np.ndarray, np.ndarray] | None = None, k: int = 0,
                   states: torch.Tensor | None = None) -> Candidates:
        """Beam search for a block of histories (B, L) and the unseen items behind the beams
        (with their dense cosine in COBRA mode); independent of the BeamFusion weights. `seen`:
        (rows, items) of every seen item when the block's history matrix is cut (None: the matrix).
        `k`: with catalog neighbours, the best beam's search is deep enough to answer k items.
        `states`: `history_states(history)` when the caller has it already."""
        cfg = self.beam_config(beam_size)
        h = self.history_states(history) if states is None else states
        beams = beam_search(self.model_, h, self.trie_, cfg.beam_size)
        cands = leaf_candidates(beams, self.trie_, cfg.max_leaf_items)
        cands = self.parts.head.widen(self, cands, beams, h, history, seen, k, cfg)
        return drop_seen(cands, history, seen)

    def _dense_numpy(self, v: torch.Tensor) -> np.ndarray:
        return placement.numpy(F.normalize(v, dim=-1) if self.config.train.similarity == "cosine" else v)

    def score(self, cands: Candidates, k: int) -> Retrieved:
        """The top k of the candidates: BeamFusion (COBRA) or log P(ID) + log P(item | ID)."""
        cfg = self.beam_config()
        return top_unique(cands, self.parts.head.score(self, cands, cfg), k)

    def _retrieve_rows(self, block: RequestBatch, k: int, beam_size: int | None) -> Retrieved:
        h, seen = self.history_states(block.history), block.seen_pairs()
        out = self.score(self.candidates(block.history, beam_size, seen, k, states=h), k)
        quota = self.config.cold_quota
        if quota > 0 and self.cold_.size:
            with torch.no_grad():
                v_hist = self._dense_numpy(self.model_.dense_vector(h))
            out = with_cold_quota(out, v_hist, self.cold_, self.item_vecs_, quota, block.history, seen)
        return out

    def cold_items(self) -> np.ndarray:
        """Active items without an interaction in the fit data (added with add_items, or never
        seen in training): the ones `cold_quota` keeps places for. Sorted dense ids."""
        return np.flatnonzero(self.active_ & (self.popularity_ == 0))

    def item_vectors(self, items: np.ndarray) -> np.ndarray | None:
        """The dense vectors the channel scores with (float32 [n, D]) of item ids; None in the
        sparse-only modes, which have none. Inactive ids give zero rows."""
        self._check_fitted()
        return self.parts.head.vectors(self, np.asarray(items, np.int64))

    # ---- new items ------------------------------------------------------------------------
    @placement.on_device
    def add_items(self, items: pd.DataFrame) -> np.ndarray:
        """Give items with content but no interactions a code and a dense vector, from content
        alone, and make them retrievable. item_id: inactive ids < n, or n, n+1, ... in order.
        Returns their codes (int64 [m, L])."""
        self._check_fitted()
        return new_items.add_items(self, items)

    # ---- persistence ----------------------------------------------------------------------
    def tokenizer_report(self) -> dict:
        self._check_fitted()
        return self.report_

    def save(self, path: Path) -> None:
        self._check_fitted()
        save_channel(self, Path(path))

    @classmethod
    def load(cls, path: Path) -> "CobraChannel":
        meta = read_meta(Path(path))
        ch = cls(**meta["params"])  # nested, or flat when saved before CobraConfig: both are read
        if ch.num_threads:
            torch.set_num_threads(ch.num_threads)
        return ch._restore(Path(path), meta)

    @placement.on_device
    def _restore(self, path: Path, meta: dict) -> "CobraChannel":
        """The fitted state from a saved folder, its torch parts made on this channel's device."""
        return restore_channel(self, path, meta)
