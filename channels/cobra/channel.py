"""CobraChannel: generative retrieval with semantic IDs (sparse) and dense item vectors.

Modes (`mode`):
- 'cobra': the model reads codes + dense vectors, predicts the ID level by level and then a dense
  vector; retrieval = constrained beam search + BeamFusion (see beam.py);
- 'cobra_sparse': the same tokenizer, a sparse-only model; items inside an ID ranked by a
  popularity prior;
- 'tiger': sparse only with unique IDs (an extra disambiguation level).
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

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from channels.cobra.beam import (
    CATALOG_QUERIES, NEIGHBOR_ID_SCORES, BeamConfig, Candidates, beam_search, drop_seen, fusion_scores,
    history_neighbor_candidates, leaf_candidates, neighbor_candidates, sparse_scores, top_unique, with_cold_quota,
    with_own_beams, with_similarity,
)
from channels.cobra.catalog import IndexConfig, build_index, encode_items, leaf_log_prior, normalize
from channels.cobra.encoder import ContentEncoder, EncoderConfig
from channels.cobra.features import build_features, price_edges
from channels.cobra import new_items
from channels.cobra.model import CobraModel, ModelConfig
from channels.cobra.persist import read_meta, restore_channel, save_channel
from channels.cobra.requests import valid_callback
from channels.cobra.semantic_ids import (
    IdConfig, code_report, make_quantizer, with_disambiguation,
)
from channels.cobra.train import TrainConfig, fit_model
from channels.cobra.trie import CodeTrie
from channels.sequence import build_windows
from pipeline.core import device
from pipeline.core.protocols import FitData
from pipeline.core.types import PAD, RequestBatch, Retrieved

MODES = ("cobra", "cobra_sparse", "tiger")


class CobraChannel:
    data_parallel = True  # train.backend: ray fits it under Ray Train (pipeline/scale.py)

    def __init__(
        self, *, name: str = "cobra", mode: str = "cobra",
        text: str = "tfidf", svd_dim: int = 64, min_df: int = 1, sentence_model: str | None = None,
        collab: str = "covisit", collab_dim: int = 32, collab_window: int = 3, text_weight: float = 1.0,
        collab_weight: float = 1.0, collab_vectors_path: str | None = None,
        quantizer: str = "rkmeans", levels: list[int] | tuple[int, ...] = (256, 256, 256), kmeans_iter: int = 25,
        disambiguation_size: int | None = None, rqvae_epochs: int = 50, rqvae_hidden: int = 128,
        rqvae_beta: float = 0.25, rqvae_lr: float = 1e-3,
        d_model: int = 64, n_layers: int = 2, n_heads: int = 2, d_ff: int = 256, max_len: int = 50,
        dropout: float = 0.2, dense_dim: int = 64, max_tokens: int = 32, price_buckets: int = 10,
        id_embedding: bool = False, dense_levels: int | None = None, dense_head: str = "identity",
        item_head: str = "linear", embed_std: float | None = None, similarity: str = "dot", tied_input: bool = False,
        dense_cond: str = "shared", uncond_weight: float = 0.0,
        lr: float = 1e-3, weight_decay: float = 0.0, batch_size: int = 128, max_epochs: int = 40, patience: int = 4,
        epochs: int = 15, dense_loss_weight: float = 1.0, sparse_loss_weight: float = 1.0, temperature: float = 1.0,
        negatives: str = "full", n_negatives: int = 2048,
        logq: bool = True, id_dropout: float = 0.1, max_train_seconds: float | None = None, valid_users: int | None = 5000,
        clip_norm: float | None = None, dense_condition: str = "sampled", teacher_prob: float = 0.5, refit: bool = False,
        beam_size: int = 20, catalog_neighbors: int = 0, search_beams: int | None = None, fusion_tau: float = 1.0, fusion_psi: float = 20.0,
        fusion_sparse_weight: float = 1.0, fusion_dense_weight: float = 1.0, max_leaf_items: int | None = None,
        neighbor_id_score: str = "search", catalog_query: str = "beams", cold_quota: int = 0,
        index: str = "flat", hnsw_m: int = 32, ef_search: int = 128,
        num_threads: int | None = 2, seed: int | None = None, progress: bool = True, eval_batch_size: int = 1024,
        device: str = "cpu",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if neighbor_id_score not in NEIGHBOR_ID_SCORES:
            raise ValueError(f"neighbor_id_score must be one of {NEIGHBOR_ID_SCORES}, got {neighbor_id_score!r}")
        if catalog_query not in CATALOG_QUERIES:
            raise ValueError(f"catalog_query must be one of {CATALOG_QUERIES}, got {catalog_query!r}")
        if cold_quota < 0 or (cold_quota > 0 and mode != "cobra"):
            raise ValueError(f"cold_quota must be >= 0, and 0 in mode {mode!r} (it needs the dense vectors), got {cold_quota}")
        self.name, self.mode = name, mode
        self.text, self.svd_dim, self.min_df, self.sentence_model = text, svd_dim, min_df, sentence_model
        self.collab, self.collab_dim, self.collab_window = collab, collab_dim, collab_window
        self.text_weight, self.collab_weight, self.collab_vectors_path = text_weight, collab_weight, collab_vectors_path
        self.quantizer, self.levels, self.kmeans_iter = quantizer, [int(x) for x in levels], kmeans_iter
        self.disambiguation_size, self.rqvae_epochs, self.rqvae_hidden = disambiguation_size, rqvae_epochs, rqvae_hidden
        self.rqvae_beta, self.rqvae_lr = rqvae_beta, rqvae_lr
        self.d_model, self.n_layers, self.n_heads, self.d_ff, self.max_len = d_model, n_layers, n_heads, d_ff, max_len
        self.dropout, self.dense_dim, self.max_tokens, self.price_buckets = dropout, dense_dim, max_tokens, price_buckets
        self.id_embedding, self.dense_levels = id_embedding, dense_levels
        self.dense_head, self.item_head, self.embed_std, self.similarity = dense_head, item_head, embed_std, similarity
        self.tied_input, self.dense_cond, self.uncond_weight = tied_input, dense_cond, uncond_weight
        self.sparse_loss_weight = sparse_loss_weight
        self.lr, self.weight_decay, self.batch_size, self.max_epochs = lr, weight_decay, batch_size, max_epochs
        self.patience, self.epochs, self.dense_loss_weight, self.temperature = patience, epochs, dense_loss_weight, temperature
        self.negatives, self.logq, self.id_dropout, self.max_train_seconds = negatives, logq, id_dropout, max_train_seconds
        self.valid_users, self.clip_norm = valid_users, clip_norm
        self.dense_condition, self.teacher_prob, self.refit = dense_condition, teacher_prob, refit
        self.n_negatives = n_negatives
        self.beam_size, self.catalog_neighbors, self.fusion_tau, self.fusion_psi = beam_size, catalog_neighbors, fusion_tau, fusion_psi
        self.fusion_sparse_weight, self.fusion_dense_weight, self.max_leaf_items = fusion_sparse_weight, fusion_dense_weight, max_leaf_items
        self.neighbor_id_score, self.search_beams, self.catalog_query = neighbor_id_score, search_beams, catalog_query
        self.cold_quota = cold_quota  # last places of an answer kept for items without interactions (with_cold_quota)
        self.index, self.hnsw_m, self.ef_search = index, hnsw_m, ef_search
        self.num_threads, self.seed, self.progress, self.eval_batch_size = num_threads, seed, progress, eval_batch_size
        self.device = device  # auto | cpu | cuda[:N] (pipeline/core/device.py)

    # ---- the small configs handed to each part --------------------------------------------
    def _params(self) -> dict:
        return {k: v for k, v in vars(self).items() if not k.endswith("_") and not k.startswith("_")}

    @property
    def dense(self) -> bool:
        return self.mode == "cobra"

    def encoder_config(self, seed: int) -> EncoderConfig:
        return EncoderConfig(text=self.text, svd_dim=self.svd_dim, min_df=self.min_df, sentence_model=self.sentence_model,
                             collab=self.collab, collab_dim=self.collab_dim, collab_window=self.collab_window,
                             text_weight=self.text_weight, collab_weight=self.collab_weight, seed=seed)

    def id_config(self, seed: int) -> IdConfig:
        return IdConfig(quantizer=self.quantizer, levels=tuple(self.levels), kmeans_iter=self.kmeans_iter,
                        disambiguate=self.mode == "tiger", disambiguation_size=self.disambiguation_size, seed=seed,
                        rqvae_epochs=self.rqvae_epochs, rqvae_hidden=self.rqvae_hidden, rqvae_beta=self.rqvae_beta,
                        rqvae_lr=self.rqvae_lr)

    def train_config(self, seed: int) -> TrainConfig:
        return TrainConfig(lr=self.lr, weight_decay=self.weight_decay, batch_size=self.batch_size,
                           max_epochs=self.max_epochs, patience=self.patience, epochs=self.epochs,
                           dense_weight=self.dense_loss_weight, temperature=self.temperature, negatives=self.negatives,
                           logq=self.logq, id_dropout=self.id_dropout, max_len=self.max_len, seed=seed,
                           progress=self.progress, max_seconds=self.max_train_seconds, clip_norm=self.clip_norm,
                           similarity=self.similarity, sparse_weight=self.sparse_loss_weight,
                           dense_condition=self.dense_condition, teacher_prob=self.teacher_prob,
                           n_negatives=self.n_negatives, uncond_weight=self.uncond_weight)

    def beam_config(self, beam_size: int | None = None) -> BeamConfig:
        return BeamConfig(beam_size=beam_size or self.beam_size, catalog_neighbors=self.catalog_neighbors,
                          tau=self.fusion_tau, psi=self.fusion_psi, sparse_weight=self.fusion_sparse_weight,
                          dense_weight=self.fusion_dense_weight, max_leaf_items=self.max_leaf_items,
                          neighbor_id_score=self.neighbor_id_score, search_beams=self.search_beams,
                          catalog_query=self.catalog_query)

    def index_config(self) -> IndexConfig:
        return IndexConfig(kind=self.index, hnsw_m=self.hnsw_m, ef_search=self.ef_search)

    # ---- fit ------------------------------------------------------------------------------
    @device.on_device
    def fit(self, data: FitData) -> "CobraChannel":
        """Train on `data.train`, or (validation data given) on `data.valid_history` with early
        stopping on `data.valid`; with `refit`, then train a fresh model on `data.train` for the
        best epoch count (the validation targets are then learned from too)."""
        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        seed = data.seed if self.seed is None else self.seed
        tcfg = self.train_config(seed)  # validates the training options before any work
        with_valid = data.valid is not None and data.valid_history is not None
        frame = data.valid_history if with_valid else data.train
        report = self._train(data, frame, seed, tcfg, with_valid)
        self.fit_report_ = {"best_epoch": report.best_epoch, "best": report.best, "epochs": report.epochs,
                            "seconds": round(report.seconds, 1), "early_stopping": with_valid}
        if self.refit and with_valid:
            again = self._train(data, data.train, seed, replace(tcfg, epochs=max(report.best_epoch, 1)), False)
            self.fit_report_["refit"] = {"epochs": again.best_epoch, "seconds": round(again.seconds, 1),
                                         "on": "train (validation targets included)"}
        self._refresh()
        return self

    def _train(self, data: FitData, frame: pd.DataFrame, seed: int, tcfg: TrainConfig, with_valid: bool):
        """Items, IDs and a fresh model fitted on `frame` (early stopping on data.valid when asked)."""
        content_dim = self._fit_items(data, frame, seed)
        self.model_cfg_ = ModelConfig(
            code_sizes=tuple(self.sizes_), n_tokens=len(getattr(self.encoder_, "vocabulary_", {}) or {}) + 1,
            content_dim=content_dim, n_price=len(self.price_edges_) + 2, n_items=data.n_items if self.id_embedding else 0,
            d_model=self.d_model, n_layers=self.n_layers, n_heads=self.n_heads, d_ff=self.d_ff, max_len=self.max_len,
            dropout=self.dropout, dense=self.dense, dense_dim=self.dense_dim, dense_levels=self.dense_levels,
            dense_head=self.dense_head, item_head=self.item_head, embed_std=self.embed_std, tied_input=self.tied_input,
            dense_cond=self.dense_cond)
        torch.manual_seed(seed)
        self.model_ = CobraModel(self.model_cfg_)
        self._refresh()
        evaluate = valid_callback(self, data.valid_history, data.valid, self.valid_users, seed) if with_valid else None
        return fit_model(self.model_, device.tensor(self.codes_), self.features_.to_torch(),
                         build_windows(frame, self.max_len), self.popularity_, tcfg,
                         evaluate=(lambda: (self._refresh(), evaluate())[1]) if evaluate else None,
                         child=list(self.trie_.child))

    def _fit_items(self, data: FitData, frame: pd.DataFrame, seed: int) -> int:
        """Content encoder, semantic IDs and their report, item features; returns the content width."""
        id_cfg = self.id_config(seed)
        catalog = data.items.sort_values("item_id", kind="stable").reset_index(drop=True)
        ids, n = catalog["item_id"].to_numpy(np.int64), data.n_items
        if ids.size and (ids.min() < 0 or ids.max() >= n or np.unique(ids).size != ids.size):
            raise ValueError(f"channel '{self.name}': items need distinct item_id in [0, {n})")
        collab_vectors = np.load(self.collab_vectors_path, allow_pickle=False) if self.collab_vectors_path else None
        self.encoder_ = ContentEncoder(self.encoder_config(seed)).fit(catalog, frame, n, collab_vectors)
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
        self.price_edges_ = price_edges(catalog["price"], self.price_buckets) if "price" in catalog else np.zeros(0)
        feats = build_features(self.encoder_.tfidf(catalog), content, catalog.get("price"), self.price_edges_, ids,
                               self.popularity_[ids] > 0, self.max_tokens)
        self.features_ = feats.zeros(n).set_rows(ids, feats)
        return content.shape[1]

    def _report(self, base: np.ndarray, ids: np.ndarray) -> dict:
        rep = code_report(base, tuple(self.levels), self.popularity_[ids])
        rep |= {"mode": self.mode, "quantizer": self.quantizer}
        rep["collision_rate_before_disambiguation"] = rep["full_code"]["collision_rate"]
        rep["unique_after_disambiguation"] = self.mode == "tiger"
        if self.mode == "tiger":
            rep["disambiguation_size"] = self.sizes_[-1]
        return rep

    def _refresh(self) -> None:
        """Rebuild the trie, the in-ID prior and (COBRA) the item vectors and the index."""
        self.trie_ = CodeTrie.build(self.codes_, tuple(self.sizes_), self.active_)
        self.log_prior_ = leaf_log_prior(self.trie_, self.popularity_, self.active_)
        if self.dense:
            raw = encode_items(self.model_, self.features_)
            raw[~self.active_] = 0.0
            self.item_raw_, self.item_vecs_ = raw, self._scored(raw)
            self.index_ = build_index(self.item_vecs_, np.flatnonzero(self.active_), self.index_config())
        self.cold_ = self.cold_items()

    def _scored(self, raw: np.ndarray) -> np.ndarray:
        """The item vectors the dense similarity reads: L2-normalised (cosine) or raw (dot)."""
        return normalize(raw) if self.similarity == "cosine" else np.ascontiguousarray(raw, np.float32)

    # ---- retrieve -------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise RuntimeError(f"channel '{self.name}': call fit() or load() before retrieve()")

    @device.on_device
    @torch.no_grad()
    def history_states(self, history: np.ndarray) -> torch.Tensor:
        """The model's state after the last history item of every row (B, d)."""
        hist = history[:, -self.max_len :]
        real = (hist != PAD) & self.active_[np.maximum(hist, 0)]  # items without a code are skipped
        used = real.any(axis=0)
        start = int(np.argmax(used)) if used.any() else hist.shape[1] - 1
        hist, real = hist[:, start:], real[:, start:]  # drop columns that are padding in every row
        real_t = device.tensor(real)
        idx = device.tensor(np.where(real, hist, 0))
        codes = device.tensor(self.codes_)[idx]  # (B, T, L)
        dense = device.tensor(self.item_raw_)[idx] if self.dense else None  # (B, T, D)
        if self.model_.training:  # eval() walks every module: a cost per request worth skipping
            self.model_.eval()
        return self.model_.encode(codes, dense, real_t)[:, -1]  # (B, d)

    @device.on_device
    def retrieve(self, batch: RequestBatch, k: int, beam_size: int | None = None) -> Retrieved:
        self._check_fitted()
        if len(batch) == 0 or k <= 0:
            return Retrieved.empty(len(batch), max(k, 0))
        parts = [self._retrieve_rows(batch.take(slice(lo, lo + self.eval_batch_size)), k, beam_size)
                 for lo in range(0, len(batch), self.eval_batch_size)]
        return Retrieved(np.concatenate([p.items for p in parts]), np.concatenate([p.scores for p in parts]))

    @device.on_device
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
        if self.dense:
            v_hat = self._dense_numpy(self.model_.dense_vector(beams.dense_state))  # (B, W, D)
            n_seen = int(np.bincount(seen[0]).max()) if seen is not None and len(seen[0]) else history.shape[1]
            fill = k + n_seen if k > 0 else 0
            if cfg.catalog_neighbors > 0 and cfg.catalog_query == "history":
                cands = with_similarity(cands, v_hat, self.item_vecs_)
                v_hist = self._dense_numpy(self.model_.dense_vector(h))  # (B, D): the ID-free vector
                cands = history_neighbor_candidates(cands, v_hist, self.index_, self.item_vecs_, cfg.catalog_neighbors, fill)
                cands = with_own_beams(cands, device.numpy(beams.leaf), self.trie_.item_leaf)
            else:
                if cfg.catalog_neighbors > 0:
                    groups = device.numpy(beams.codes[..., : self.model_cfg_.dense_after])  # beams sharing v_hat
                    cands = neighbor_candidates(cands, v_hat, self.index_, cfg.catalog_neighbors, groups,
                                                fill=fill, search_beams=cfg.search_beams)
                    cands = with_own_beams(cands, device.numpy(beams.leaf), self.trie_.item_leaf)
                cands = with_similarity(cands, v_hat, self.item_vecs_)
        return drop_seen(cands, history, seen)

    def _dense_numpy(self, v: torch.Tensor) -> np.ndarray:
        return device.numpy(F.normalize(v, dim=-1) if self.similarity == "cosine" else v)

    def score(self, cands: Candidates, k: int) -> Retrieved:
        """The top k of the candidates: BeamFusion (COBRA) or log P(ID) + log P(item | ID)."""
        cfg = self.beam_config()
        scores = fusion_scores(cands, cfg) if self.dense else sparse_scores(cands, self.log_prior_)
        return top_unique(cands, scores, k)

    def _retrieve_rows(self, block: RequestBatch, k: int, beam_size: int | None) -> Retrieved:
        h, seen = self.history_states(block.history), block.seen_pairs()
        out = self.score(self.candidates(block.history, beam_size, seen, k, states=h), k)
        if self.cold_quota > 0 and self.cold_.size:
            with torch.no_grad():
                v_hist = self._dense_numpy(self.model_.dense_vector(h))
            out = with_cold_quota(out, v_hist, self.cold_, self.item_vecs_, self.cold_quota, block.history, seen)
        return out

    def cold_items(self) -> np.ndarray:
        """Active items without an interaction in the fit data (added with add_items, or never
        seen in training): the ones `cold_quota` keeps places for. Sorted dense ids."""
        return np.flatnonzero(self.active_ & (self.popularity_ == 0))

    def item_vectors(self, items: np.ndarray) -> np.ndarray | None:
        """The dense vectors the channel scores with (float32 [n, D]) of item ids; None in the
        sparse-only modes, which have none. Inactive ids give zero rows."""
        self._check_fitted()
        if not self.dense:
            return None
        ids = np.asarray(items, np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self.item_vecs_)):
            raise ValueError(f"channel '{self.name}': item ids must be in [0, {len(self.item_vecs_)}); add new items with add_items()")
        return self.item_vecs_[ids]

    # ---- new items ------------------------------------------------------------------------
    @device.on_device
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
        ch = cls(**meta["params"])
        if ch.num_threads:
            torch.set_num_threads(ch.num_threads)
        return ch._restore(Path(path), meta)

    @device.on_device
    def _restore(self, path: Path, meta: dict) -> "CobraChannel":
        """The fitted state from a saved folder, its torch parts made on this channel's device."""
        return restore_channel(self, path, meta)
