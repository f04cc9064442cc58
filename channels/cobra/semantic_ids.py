"""Semantic IDs: residual k-means codes (faiss k-means per level), TIGER disambiguation, report.

A quantizer maps item vectors [N, D] to codes [N, L] (level l in 0..sizes[l]-1); both quantizers
(ResidualKMeans here, RQVAE in rqvae.py) expose fit / encode / save / load. `assign_codes`
adds the TIGER disambiguation level: the items sharing a full code get 0, 1, 2, ... in item order,
so every (code + extra token) is unique. `code_report` describes a code table: utilisation per
level, collision rate, items per prefix and how code frequency tracks item popularity.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

QUANTIZERS = ("rkmeans", "rqvae")


@dataclass(frozen=True)
class IdConfig:
    quantizer: str = "rkmeans"  # 'rkmeans' (residual k-means) or 'rqvae'
    levels: tuple[int, ...] = (256, 256, 256)  # codebook size per level
    kmeans_iter: int = 25  # k-means iterations per level
    disambiguate: bool = False  # TIGER: an extra level that makes every ID unique
    disambiguation_size: int | None = None  # extra-level size; None = 2 x the largest collision group
    seed: int = 0
    rqvae_epochs: int = 50  # RQ-VAE training epochs
    rqvae_hidden: int = 128  # RQ-VAE hidden width
    rqvae_beta: float = 0.25  # RQ-VAE commitment weight
    rqvae_lr: float = 1e-3  # RQ-VAE learning rate

    def __post_init__(self) -> None:
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer must be one of {QUANTIZERS}, got {self.quantizer!r}")
        if not self.levels or any(int(k) < 2 for k in self.levels):
            raise ValueError(f"levels must be a non-empty list of codebook sizes >= 2, got {list(self.levels)}")


class ResidualKMeans:
    """Level l runs faiss k-means on the residuals left by levels < l."""

    def __init__(self, levels: tuple[int, ...], n_iter: int = 25, seed: int = 0) -> None:
        self.levels = tuple(int(k) for k in levels)
        self.n_iter = n_iter
        self.seed = seed

    def fit(self, x: np.ndarray) -> "ResidualKMeans":
        residual = np.ascontiguousarray(x, dtype=np.float32).copy()
        self.centroids_: list[np.ndarray] = []
        for level, k in enumerate(self.levels):
            k_eff = min(k, residual.shape[0])
            km = faiss.Kmeans(residual.shape[1], k_eff, niter=self.n_iter, seed=self.seed + level,
                              verbose=False, min_points_per_centroid=1, max_points_per_centroid=1 << 20)
            km.train(residual)
            cent = np.zeros((k, residual.shape[1]), np.float32)
            cent[:k_eff] = km.centroids
            if k_eff < k:  # fewer points than codes: unused codes sit far away, never assigned
                cent[k_eff:] = 1e6
            self.centroids_.append(cent)
            residual -= cent[_nearest(residual, cent)]
        return self

    def encode(self, x: np.ndarray) -> np.ndarray:
        residual = np.ascontiguousarray(x, dtype=np.float32).copy()
        codes = np.zeros((residual.shape[0], len(self.levels)), np.int64)
        for level, cent in enumerate(self.centroids_):
            codes[:, level] = _nearest(residual, cent)
            residual -= cent[codes[:, level]]
        return codes

    def save(self, path: Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for level, cent in enumerate(self.centroids_):
            np.save(path / f"rkmeans_level{level}.npy", cent, allow_pickle=False)
        (path / "rkmeans.json").write_text(json.dumps({"levels": list(self.levels), "n_iter": self.n_iter, "seed": self.seed}))

    @classmethod
    def load(cls, path: Path) -> "ResidualKMeans":
        path = Path(path)
        meta = json.loads((path / "rkmeans.json").read_text())
        q = cls(tuple(meta["levels"]), meta["n_iter"], meta["seed"])
        q.centroids_ = [np.load(path / f"rkmeans_level{i}.npy", allow_pickle=False) for i in range(len(q.levels))]
        return q


def make_quantizer(cfg: IdConfig):
    """An unfitted quantizer of the configured kind (fit(x) / encode(x) / save / load)."""
    if cfg.quantizer == "rqvae":
        from channels.cobra.rqvae import RQVAE

        return RQVAE(cfg.levels, hidden=cfg.rqvae_hidden, epochs=cfg.rqvae_epochs, beta=cfg.rqvae_beta,
                     lr=cfg.rqvae_lr, kmeans_iter=cfg.kmeans_iter, seed=cfg.seed)
    return ResidualKMeans(cfg.levels, cfg.kmeans_iter, cfg.seed)


def load_quantizer(path: Path, kind: str):
    if kind == "rqvae":
        from channels.cobra.rqvae import RQVAE

        return RQVAE.load(path)
    return ResidualKMeans.load(path)


def _nearest(x: np.ndarray, cent: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid (L2) of every row; ties go to the lower index."""
    index = faiss.IndexFlatL2(cent.shape[1])
    index.add(np.ascontiguousarray(cent, dtype=np.float32))
    _, nn = index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    return nn[:, 0].astype(np.int64)


def group_ids(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(group index of every row, size of every group) for rows with identical codes."""
    if codes.shape[0] == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    return inverse.reshape(-1).astype(np.int64), counts.astype(np.int64)


def disambiguate(codes: np.ndarray) -> np.ndarray:
    """The TIGER extra token of every row: its rank (0, 1, ...) among the rows sharing its code,
    in row order."""
    inverse, _ = group_ids(codes)
    order = np.argsort(inverse, kind="stable")
    sorted_groups = inverse[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_groups)) + 1]
    rank_sorted = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    extra = np.empty(len(order), np.int64)
    extra[order] = rank_sorted
    return extra


def _gini(values: np.ndarray) -> float:
    v = np.sort(np.asarray(values, np.float64))
    if v.size == 0 or v.sum() == 0:
        return 0.0
    cum = np.cumsum(v)
    return float((v.size + 1 - 2 * (cum / cum[-1]).sum()) / v.size)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 2:
        return 0.0
    ra = np.argsort(np.argsort(a, kind="stable"), kind="stable").astype(np.float64)
    rb = np.argsort(np.argsort(b, kind="stable"), kind="stable").astype(np.float64)
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def code_report(codes: np.ndarray, sizes: tuple[int, ...], popularity: np.ndarray | None = None) -> dict:
    """Statistics of a code table (rows = the items that have codes; columns = quantizer levels,
    without the disambiguation token). `popularity` = training interactions per row."""
    n, n_levels = codes.shape
    out: dict = {"items": int(n), "levels": []}
    pop = np.zeros(n) if popularity is None else np.asarray(popularity, np.float64)
    for level in range(n_levels):
        counts = np.bincount(codes[:, level], minlength=sizes[level])
        p = counts[counts > 0] / max(n, 1)
        prefix_groups, prefix_sizes = group_ids(codes[:, : level + 1])
        inter = np.bincount(prefix_groups, weights=pop, minlength=len(prefix_sizes))
        top = np.sort(inter)[::-1][: max(1, len(inter) // 10)]
        out["levels"].append({
            "size": int(sizes[level]), "used": int((counts > 0).sum()),
            "utilisation": float((counts > 0).mean()), "perplexity": float(np.exp(-(p * np.log(p)).sum())) if p.size else 0.0,
            "prefixes": int(len(prefix_sizes)), "items_per_prefix_mean": float(prefix_sizes.mean()) if n else 0.0,
            "items_per_prefix_max": int(prefix_sizes.max()) if n else 0,
            "items_per_prefix_p90": float(np.percentile(prefix_sizes, 90)) if n else 0.0,
            "gini_items_per_prefix": _gini(prefix_sizes), "gini_interactions_per_prefix": _gini(inter),
            "interaction_share_top10pct_prefixes": float(top.sum() / max(inter.sum(), 1e-12)),
            "spearman_items_vs_interactions_per_prefix": _spearman(prefix_sizes.astype(np.float64), inter),
        })
    groups, group_sizes = group_ids(codes)
    own = group_sizes[groups] if n else np.zeros(0, np.int64)
    hist = np.bincount(np.minimum(group_sizes, 10))[1:] if n else np.zeros(0, np.int64)
    out["full_code"] = {
        "distinct": int(len(group_sizes)),
        "collision_rate": float((own > 1).mean()) if n else 0.0,  # share of items sharing their code
        "duplicate_rate": float(1 - len(group_sizes) / n) if n else 0.0,  # 1 - distinct / items
        "items_per_code_mean": float(group_sizes.mean()) if n else 0.0,
        "items_per_code_max": int(group_sizes.max()) if n else 0,
        "codes_by_size_1..9_10plus": [int(h) for h in hist],
    }
    if popularity is not None and n:
        shared = own > 1
        out["popularity"] = {
            "spearman_item_popularity_vs_code_group_size": _spearman(pop, own.astype(np.float64)),
            "mean_popularity_unique_code": float(pop[~shared].mean()) if (~shared).any() else 0.0,
            "mean_popularity_shared_code": float(pop[shared].mean()) if shared.any() else 0.0,
            "interaction_share_of_shared_codes": float(pop[shared].sum() / max(pop.sum(), 1e-12)),
        }
    return out




def with_disambiguation(base: np.ndarray, cfg: IdConfig, name: str) -> tuple[np.ndarray, list[int]]:
    """The full codes and level sizes: `base` as is, or (TIGER, cfg.disambiguate) with the extra
    token that makes every code unique, its level sized 2 x the largest collision group unless set."""
    sizes = [int(s) for s in cfg.levels]
    if not cfg.disambiguate:
        return base, sizes
    _, group_sizes = group_ids(base)
    largest = int(group_sizes.max()) if group_sizes.size else 1
    size = cfg.disambiguation_size or max(2, 2 * largest)
    if size < largest:
        raise ValueError(f"channel '{name}': disambiguation_size {size} < the largest collision group {largest}")
    return np.concatenate([base, disambiguate(base)[:, None]], axis=1), sizes + [size]


def next_free_tokens(codes: np.ndarray, base: np.ndarray, size: int, name: str) -> np.ndarray:
    """TIGER, new items: the first free disambiguation token of each new base code, given the
    full codes already in use (rows of `codes`, extra token last) and the level's size."""
    used: dict[tuple, int] = {}
    for code in map(tuple, codes):
        used[code[:-1]] = max(used.get(code[:-1], -1), code[-1])
    out = np.zeros(len(base), np.int64)
    for i, code in enumerate(map(tuple, base)):
        used[code] = out[i] = used.get(code, -1) + 1
        if out[i] >= size:
            raise ValueError(f"channel '{name}': code {code} already holds {out[i]} items, the "
                             f"disambiguation level has {size}; refit with a larger disambiguation_size")
    return out
