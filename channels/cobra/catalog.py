"""The channel's item state: codes, trie, features, dense vectors and the faiss index, kept
consistent when items are added. Items are dense ids 0..n-1; an id without content in the catalog
(not given at fit time) is inactive: it has no code, is in no leaf and is never retrieved."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from channels.cobra.features import ItemFeatures
from channels.cobra.model import CobraModel
from channels.cobra.trie import CodeTrie
from pipeline.core import device

INDEX_KINDS = ("flat", "hnsw")


@dataclass(frozen=True)
class IndexConfig:
    kind: str = "flat"  # faiss index: 'flat' (exact) or 'hnsw'
    hnsw_m: int = 32  # hnsw: links per node
    ef_search: int = 128  # hnsw: search beam

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise ValueError(f"index must be one of {INDEX_KINDS}, got {self.kind!r}")


def build_index(vectors: np.ndarray, ids: np.ndarray, cfg: IndexConfig) -> faiss.Index:
    """Inner-product index over the rows `ids` of `vectors` (faiss ids = item ids)."""
    d = vectors.shape[1]
    base = faiss.IndexFlatIP(d) if cfg.kind == "flat" else faiss.IndexHNSWFlat(d, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    if cfg.kind == "hnsw":
        base.hnsw.efSearch = cfg.ef_search
    index = faiss.IndexIDMap2(base)
    if len(ids):
        index.add_with_ids(np.ascontiguousarray(vectors[ids], np.float32), np.asarray(ids, np.int64))
    return index


def leaf_log_prior(trie: CodeTrie, popularity: np.ndarray, active: np.ndarray) -> np.ndarray:
    """log P(item | its ID) from smoothed training counts; -inf for inactive items."""
    n = len(active)
    weight = np.where(active, popularity + 1.0, 0.0)
    leaf = np.maximum(trie.item_leaf, 0)
    total = np.bincount(leaf[active], weights=weight[active], minlength=trie.n_leaves)
    out = np.full(n, -np.inf)
    out[active] = np.log(weight[active] / total[leaf[active]])
    return out.astype(np.float32)


@torch.no_grad()
def encode_items(model: CobraModel, features: ItemFeatures, rows: np.ndarray | None = None,
                 batch: int = 8192) -> np.ndarray:
    """Raw item-encoder vectors (float32 [len(rows), D]) in eval mode."""
    rows = np.arange(len(features)) if rows is None else np.asarray(rows, np.int64)
    was_training = model.training
    model.eval()
    out = []
    for lo in range(0, len(rows), batch):
        f = features.rows(rows[lo : lo + batch]).to_torch()
        out.append(device.numpy(model.item_encoder(f)))
    model.train(was_training)
    dim = model.cfg.dense_dim
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, dim), np.float32)


def normalize(x: np.ndarray) -> np.ndarray:
    return device.numpy(F.normalize(device.tensor(np.ascontiguousarray(x, np.float32)), dim=-1))


def save_index(index: faiss.Index, path: Path) -> None:
    faiss.write_index(index, str(path))


def load_index(path: Path, cfg: IndexConfig) -> faiss.Index:
    index = faiss.read_index(str(path))
    if cfg.kind == "hnsw":
        faiss.downcast_index(index.index).hnsw.efSearch = cfg.ef_search
    return index
