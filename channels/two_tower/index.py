"""Inner-product faiss index over item vectors: 'flat' (exact), 'ivf' or 'hnsw' (approximate).

The GPU index is used when faiss was built with GPU support and a GPU is present (checked when
the index is built or loaded, never required); HNSW has no faiss GPU version and stays on CPU.
Saved with faiss.write_index (always the CPU form), never pickled.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

KINDS = ("flat", "ivf", "hnsw")


@dataclass(frozen=True)
class IndexConfig:
    kind: str = "flat"  # faiss index: 'flat', 'ivf' or 'hnsw'
    nlist: int = 128  # ivf: number of k-means cells
    nprobe: int = 16  # ivf: cells visited per query
    hnsw_m: int = 32  # hnsw: links per node
    ef_search: int = 256  # hnsw: search beam (faiss uses at least k)
    ef_construction: int = 200  # hnsw: build beam
    use_gpu: bool = True  # use a GPU when one is present

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"index must be one of {KINDS}, got {self.kind!r}")


def gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class ItemIndex:
    """Item vectors searchable by inner product; row i of the index is item i."""

    def __init__(self, cfg: IndexConfig, index: faiss.Index) -> None:
        self.cfg = cfg
        self.cpu_index = index
        self.index = index
        self._apply_search_params(index)
        if cfg.use_gpu and cfg.kind != "hnsw" and gpu_available():
            self._resources = faiss.StandardGpuResources()
            self.index = faiss.index_cpu_to_gpu(self._resources, 0, index)
            self.cpu_index = None  # the GPU copy is the one that is searched and added to

    @property
    def on_gpu(self) -> bool:
        return self.cpu_index is None

    @classmethod
    def build(cls, vectors: np.ndarray, cfg: IndexConfig) -> "ItemIndex":
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        n, d = vectors.shape
        if cfg.kind == "flat":
            index = faiss.IndexFlatIP(d)
        elif cfg.kind == "ivf":
            nlist = max(1, min(cfg.nlist, n // 39 if n >= 39 else 1))  # faiss wants ~39 points per cell
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(vectors)
        else:
            index = faiss.IndexHNSWFlat(d, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = cfg.ef_construction
        index.add(vectors)
        return cls(cfg, index)

    def _apply_search_params(self, index: faiss.Index) -> None:
        if self.cfg.kind == "ivf":
            index.nprobe = self.cfg.nprobe
        elif self.cfg.kind == "hnsw":
            index.hnsw.efSearch = self.cfg.ef_search

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def add(self, vectors: np.ndarray) -> None:
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores float32 [B, k], items int64 [B, k]); item -1 where fewer than k exist."""
        k = max(1, min(k, len(self)))
        scores, items = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return scores, items.astype(np.int64)

    def _cpu(self) -> faiss.Index:
        return self.cpu_index if self.cpu_index is not None else faiss.index_gpu_to_cpu(self.index)

    def save(self, path: Path) -> None:
        faiss.write_index(self._cpu(), str(path))

    @classmethod
    def load(cls, path: Path, cfg: IndexConfig) -> "ItemIndex":
        return cls(cfg, faiss.read_index(str(path)))
