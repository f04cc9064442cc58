"""What a COBRA channel mode is made of: an ID scheme and a retrieval head (issue 18: modes are
compositions of parts, not flags tested through the channel).

- `IdScheme`: shared semantic IDs (items in a collision group share an ID) or unique ones (TIGER:
  one extra disambiguation level, and a new item takes the next free token of its base code).
- `SparseHead`: the items inside the generated IDs, ranked by log P(ID) + log P(item | ID) from a
  popularity prior; the model has no dense branch, the channel no item vectors.
- `DenseHead`: sparse-then-dense. One dense vector per beam, conditioned on the beam's ID, searches
  the catalog (one faiss call for all beams, or the ID-free history vector when
  `catalog_query: history`), and BeamFusion scores the union; the channel keeps item vectors and a
  faiss index, saved with it and grown by `add_items`.

MODES maps each `mode` name to its parts. The parts hold no state: the fitted arrays live on the
channel, which every method receives.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from channels.cobra.beam import (
    history_neighbor_candidates, neighbor_candidates, sparse_scores, with_own_beams, with_similarity, fusion_scores,
)
from channels.cobra.catalog import build_index, encode_items, load_index, save_index
from channels.cobra.semantic_ids import next_free_tokens
from pipeline.core import device


@dataclass(frozen=True)
class IdScheme:
    unique: bool  # TIGER: an extra level makes every item's ID its own

    def new_codes(self, ch, base: np.ndarray) -> np.ndarray:
        """The full codes of new items from their base codes (add_items)."""
        if not self.unique:
            return base
        extra = next_free_tokens(ch.codes_[ch.active_], base, ch.sizes_[-1], ch.name)
        return np.concatenate([base, extra[:, None]], axis=1)

    def report(self, rep: dict, sizes: list[int]) -> dict:
        rep["unique_after_disambiguation"] = self.unique
        if self.unique:
            rep["disambiguation_size"] = sizes[-1]
        return rep


class SparseHead:
    """Items behind the beams, ranked by log P(ID) + log P(item | ID)."""

    dense = False  # the model is built without its dense branch

    def refresh(self, ch) -> None:
        """Rebuild what the head derives from the fitted model and the item state."""

    def history_inputs(self, ch, idx):
        """The dense inputs of the history tokens (None: codes only)."""
        return None

    def widen(self, ch, cands, beams, h, history, seen, k: int, cfg):
        """The candidates behind the beams, plus what the head adds (sparse: nothing)."""
        return cands

    def score(self, ch, cands, cfg) -> np.ndarray:
        return sparse_scores(cands, ch.log_prior_)

    def vectors(self, ch, ids: np.ndarray) -> np.ndarray | None:
        return None

    def grow(self, ch, extra: int) -> None:
        """Room for `extra` more item ids (add_items)."""

    def add(self, ch, ids: np.ndarray) -> None:
        """Make the new items `ids` (codes and features already set) retrievable by the head."""

    def save(self, ch, path: Path) -> None:
        pass

    def restore(self, ch, path: Path) -> None:
        pass


class DenseHead(SparseHead):
    """Sparse-then-dense: per-beam dense vectors conditioned on the generated ID, BeamFusion."""

    dense = True

    def refresh(self, ch) -> None:
        raw = encode_items(ch.model_, ch.features_)
        raw[~ch.active_] = 0.0
        ch.item_raw_, ch.item_vecs_ = raw, ch._scored(raw)
        ch.index_ = build_index(ch.item_vecs_, np.flatnonzero(ch.active_), ch.config.ann)

    def history_inputs(self, ch, idx):
        return device.tensor(ch.item_raw_)[idx]  # (B, T, D)

    def widen(self, ch, cands, beams, h, history, seen, k: int, cfg):
        v_hat = ch._dense_numpy(ch.model_.dense_vector(beams.dense_state))  # (B, W, D)
        n_seen = int(np.bincount(seen[0]).max()) if seen is not None and len(seen[0]) else history.shape[1]
        fill = k + n_seen if k > 0 else 0
        if cfg.catalog_neighbors > 0 and cfg.catalog_query == "history":
            cands = with_similarity(cands, v_hat, ch.item_vecs_)
            v_hist = ch._dense_numpy(ch.model_.dense_vector(h))  # (B, D): the ID-free vector
            cands = history_neighbor_candidates(cands, v_hist, ch.index_, ch.item_vecs_, cfg.catalog_neighbors, fill)
            return with_own_beams(cands, device.numpy(beams.leaf), ch.trie_.item_leaf)
        if cfg.catalog_neighbors > 0:
            groups = device.numpy(beams.codes[..., : ch.model_cfg_.dense_after])  # beams sharing v_hat
            cands = neighbor_candidates(cands, v_hat, ch.index_, cfg.catalog_neighbors, groups,
                                        fill=fill, search_beams=cfg.search_beams)
            cands = with_own_beams(cands, device.numpy(beams.leaf), ch.trie_.item_leaf)
        return with_similarity(cands, v_hat, ch.item_vecs_)

    def score(self, ch, cands, cfg) -> np.ndarray:
        return fusion_scores(cands, cfg)

    def vectors(self, ch, ids: np.ndarray) -> np.ndarray:
        if ids.size and (ids.min() < 0 or ids.max() >= len(ch.item_vecs_)):
            raise ValueError(f"channel '{ch.name}': item ids must be in [0, {len(ch.item_vecs_)}); add new items with add_items()")
        return ch.item_vecs_[ids]

    def grow(self, ch, extra: int) -> None:
        ch.item_raw_ = np.concatenate([ch.item_raw_, np.zeros((extra, ch.item_raw_.shape[1]), np.float32)])
        ch.item_vecs_ = np.concatenate([ch.item_vecs_, np.zeros((extra, ch.item_vecs_.shape[1]), np.float32)])

    def add(self, ch, ids: np.ndarray) -> None:
        raw = encode_items(ch.model_, ch.features_, ids)
        ch.item_raw_[ids], ch.item_vecs_[ids] = raw, ch._scored(raw)
        ch.index_.add_with_ids(np.ascontiguousarray(ch.item_vecs_[ids]), ids)

    def save(self, ch, path: Path) -> None:
        np.save(path / "item_raw.npy", ch.item_raw_, allow_pickle=False)
        save_index(ch.index_, path / "index.faiss")

    def restore(self, ch, path: Path) -> None:
        ch.item_raw_ = np.load(path / "item_raw.npy", allow_pickle=False)
        ch.item_vecs_ = ch._scored(ch.item_raw_)
        ch.index_ = load_index(path / "index.faiss", ch.config.ann)


@dataclass(frozen=True)
class Mode:
    ids: IdScheme
    head: SparseHead


MODES: dict[str, Mode] = {
    "cobra": Mode(IdScheme(unique=False), DenseHead()),
    "cobra_sparse": Mode(IdScheme(unique=False), SparseHead()),
    "tiger": Mode(IdScheme(unique=True), SparseHead()),
}
