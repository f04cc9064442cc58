"""Offline ranking, coverage, long-tail, novelty, diversity and per-channel metrics.

Conventions (shared with the rest of `pipeline`):
- items are dense int64 indices; a top-k matrix is int64 [B, K], best first, -1 (PAD) as padding;
- every evaluated user has exactly one held-out target (leave-one-out), so Recall@K == HR@K;
- ranking metrics start from `target_ranks`, the 0-based position of the target in each list
  (-1 when absent), so every @k metric of a run is computed from one [B] array.

Everything is vectorised over users; the only Python loops run over channels, buckets or chunks.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

PAD = -1
_DIVERSITY_CHUNK = 4096  # lists per einsum batch: bounds memory at chunk * K * D floats


# ----------------------------------------------------------------------------- validation


def _as_topk(topk: np.ndarray, k: int | None = None) -> np.ndarray:
    """Return `topk` as an int64 [B, K] array, truncated to its first k columns when k is given."""
    arr = np.asarray(topk)
    if arr.ndim != 2:
        raise ValueError(f"top-k matrix must be 2-D [B, K], got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"top-k matrix must hold integer item indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if k is not None:
        _check_k(k)
        arr = arr[:, :k]
    return arr


def _check_k(k: int) -> None:
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def _check_item_range(items: np.ndarray, n_items: int, what: str) -> None:
    valid = items[items >= 0]
    if valid.size and int(valid.max()) >= n_items:
        raise ValueError(f"{what} holds item index {int(valid.max())} >= n_items={n_items}")


# ----------------------------------------------------------------------------- ranking


def target_ranks(topk: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """int64 [B]: 0-based position of targets[b] in topk[b] (first occurrence), -1 when absent.

    Padding never matches, even when a target is itself -1.
    """
    lists = _as_topk(topk)                                      # [B, K]
    tgt = np.asarray(targets, dtype=np.int64).reshape(-1)       # [B]
    if tgt.shape[0] != lists.shape[0]:
        raise ValueError(f"topk has {lists.shape[0]} rows but targets has {tgt.shape[0]} entries")
    if lists.shape[1] == 0:
        return np.full(tgt.shape[0], -1, dtype=np.int64)
    match = (lists == tgt[:, None]) & (lists >= 0)              # [B, K]
    found = match.any(axis=1)                                   # [B]
    first = match.argmax(axis=1)                                # [B], 0 when nothing matches
    return np.where(found, first, -1).astype(np.int64)


def _hit_within(ranks: np.ndarray, k: int | None) -> np.ndarray:
    r = np.asarray(ranks, dtype=np.int64)
    if k is None:
        return r >= 0
    _check_k(k)
    return (r >= 0) & (r < k)


def recall_at(ranks: np.ndarray, k: int) -> np.ndarray:
    """float64 [B]: 1.0 where 0 <= rank < k (one target per user, so this is also HR@k)."""
    return _hit_within(ranks, k).astype(np.float64)


def ndcg_at(ranks: np.ndarray, k: int) -> np.ndarray:
    """float64 [B]: 1/log2(rank+2) where 0 <= rank < k, else 0 (ideal DCG is 1 for one target)."""
    r = np.asarray(ranks, dtype=np.int64)
    hit = _hit_within(r, k)
    return np.where(hit, 1.0 / np.log2(np.maximum(r, 0) + 2.0), 0.0)


def mrr_at(ranks: np.ndarray, k: int | None = None) -> np.ndarray:
    """float64 [B]: 1/(rank+1) where the target is found (within the first k positions when given)."""
    r = np.asarray(ranks, dtype=np.int64)
    hit = _hit_within(r, k)
    return np.where(hit, 1.0 / (np.maximum(r, 0) + 1.0), 0.0)


_PER_USER: dict[str, Callable[[np.ndarray, int | None], np.ndarray]] = {
    "R": lambda r, k: recall_at(r, _need_k(k)),
    "HR": lambda r, k: recall_at(r, _need_k(k)),
    "N": lambda r, k: ndcg_at(r, _need_k(k)),
    "MRR": mrr_at,
}


def _need_k(k: int | None) -> int:
    if k is None:
        raise ValueError("metric needs a cutoff, e.g. 'R@10' or 'N@10'")
    return k


def per_user_metric(ranks: np.ndarray, name: str) -> np.ndarray:
    """Per-user float64 [B] values of a named metric: 'R@k' (alias 'HR@k'), 'N@k', 'MRR' or 'MRR@k'."""
    head, sep, tail = name.partition("@")
    if head not in _PER_USER or (sep and not tail.isdigit()):
        raise ValueError(f"unknown metric {name!r}; expected 'R@k', 'HR@k', 'N@k', 'MRR' or 'MRR@k'")
    return _PER_USER[head](np.asarray(ranks, dtype=np.int64), int(tail) if sep else None)


def summarize(ranks: np.ndarray, ks: Sequence[int] = (5, 10, 20)) -> dict[str, float]:
    """Mean R@k and N@k for each k, MRR within max(ks), and the number of users.

    Keys: 'R@5', 'N@5', 'R@10', ..., 'MRR', 'users'. With no users every mean is NaN.
    """
    if not ks:
        raise ValueError("ks must hold at least one cutoff")
    r = np.asarray(ranks, dtype=np.int64).reshape(-1)
    n = int(r.shape[0])

    def mean(values: np.ndarray) -> float:
        return float(values.mean()) if n else float("nan")

    out: dict[str, float] = {}
    for k in ks:
        out[f"R@{k}"] = mean(recall_at(r, k))
        out[f"N@{k}"] = mean(ndcg_at(r, k))
    out["MRR"] = mean(mrr_at(r, max(ks)))
    out["users"] = n
    return out


# ----------------------------------------------------------------------------- catalog


def catalog_coverage(topk: np.ndarray, n_items: int, k: int | None = None) -> float:
    """Share of the catalog that appears in at least one list: distinct items in top-k / n_items."""
    if n_items <= 0:
        raise ValueError(f"n_items must be positive, got {n_items}")
    lists = _as_topk(topk, k)
    _check_item_range(lists, n_items, "topk")
    seen = np.zeros(n_items, dtype=bool)
    seen[lists[lists >= 0]] = True
    return float(seen.sum()) / n_items


def item_popularity(item_ids: np.ndarray, n_items: int) -> np.ndarray:
    """int64 [n_items]: number of interactions per item (a bincount of `item_ids`)."""
    ids = np.asarray(item_ids, dtype=np.int64).reshape(-1)
    if ids.size and int(ids.min()) < 0:
        raise ValueError(f"item_ids holds a negative index {int(ids.min())}")
    _check_item_range(ids, n_items, "item_ids")
    return np.bincount(ids, minlength=n_items).astype(np.int64)


def popularity_buckets(popularity: np.ndarray, n_buckets: int = 5) -> np.ndarray:
    """int64 [n_items]: popularity bucket per item, 0 = head ... n_buckets-1 = long tail.

    Rule (equal shares of interactions): let `before(i)` be the interactions held by items strictly
    more popular than i, and T the total. Then bucket(i) = floor(n_buckets * before(i) / T), capped
    at n_buckets-1. So bucket 0 holds the most popular items, which together start within the first
    1/n_buckets of all interactions; each later bucket starts in the next 1/n_buckets. Items with equal
    popularity always share a bucket (a very popular item may leave a bucket empty); items with no
    interactions are in the last bucket; with T == 0 every item is.
    """
    if n_buckets < 1:
        raise ValueError(f"n_buckets must be >= 1, got {n_buckets}")
    pop = np.asarray(popularity, dtype=np.float64).reshape(-1)
    if pop.size and pop.min() < 0:
        raise ValueError("popularity must be non-negative")
    total = pop.sum()
    if total <= 0:
        return np.full(pop.shape[0], n_buckets - 1, dtype=np.int64)
    ascending = np.sort(pop)                                          # [N]
    upto = np.cumsum(ascending)                                       # mass of items with pop <= value
    n_le = np.searchsorted(ascending, pop, side="right")              # [N], >= 1
    before = total - upto[n_le - 1]                                   # mass strictly more popular
    bucket = np.floor(n_buckets * before / total + 1e-12).astype(np.int64)
    return np.minimum(bucket, n_buckets - 1)


def long_tail_mask(popularity: np.ndarray, head_share: float = 0.2) -> np.ndarray:
    """bool [n_items]: True for long-tail items, i.e. items outside the Pareto head.

    Head = the floor(head_share * n_items) most popular items (ties broken by the lower item index),
    among items with at least one interaction; everything else, including every item never seen, is
    tail. With the default 0.2 the head is the top 20% of the catalog by popularity rank.
    """
    if not 0.0 <= head_share <= 1.0:
        raise ValueError(f"head_share must be in [0, 1], got {head_share}")
    pop = np.asarray(popularity).reshape(-1)
    n_head = int(np.floor(head_share * pop.shape[0] + 1e-9))
    order = np.argsort(-pop, kind="stable")                           # most popular first
    head = np.zeros(pop.shape[0], dtype=bool)
    head[order[:n_head]] = True
    return ~(head & (pop > 0))


def recall_by_bucket(
    ranks: np.ndarray, targets: np.ndarray, buckets: np.ndarray, k: int
) -> dict[int, dict[str, float]]:
    """Recall@k of the users whose target falls in each popularity bucket.

    Returns {bucket: {'R@{k}': mean recall, 'hits': n hit, 'users': n}} for every bucket
    0..max(buckets); 'R@{k}' is NaN for a bucket with no users.
    """
    tgt = np.asarray(targets, dtype=np.int64).reshape(-1)
    bk = np.asarray(buckets, dtype=np.int64).reshape(-1)
    hit = recall_at(ranks, k)
    if hit.shape[0] != tgt.shape[0]:
        raise ValueError(f"ranks has {hit.shape[0]} entries but targets has {tgt.shape[0]}")
    if tgt.size and (tgt.min() < 0 or tgt.max() >= bk.shape[0]):
        raise ValueError(f"targets must be item indices in [0, {bk.shape[0]}) to look up a bucket")
    n_buckets = int(bk.max()) + 1 if bk.size else 0
    tb = bk[tgt]                                                      # [B] bucket per user
    users = np.bincount(tb, minlength=n_buckets)
    hits = np.bincount(tb, weights=hit, minlength=n_buckets)
    key = f"R@{k}"
    return {
        b: {key: float(hits[b] / users[b]) if users[b] else float("nan"),
            "hits": int(round(hits[b])), "users": int(users[b])}
        for b in range(n_buckets)
    }


# ----------------------------------------------------------------------------- list quality


def novelty(
    topk: np.ndarray, popularity: np.ndarray, n_interactions: int, k: int | None = None
) -> float:
    """Mean self-information of recommended items, in bits.

    Each item scores -log2(p_i) with p_i = max(pop_i, 1) / n_interactions (an item never seen counts
    as seen once). Pass interaction counts with the number of interactions, or per-item user counts
    with the number of users for the "share of users" variant. The score is averaged within each list
    (padding ignored), then over lists with at least one item; NaN when there are none.
    """
    if n_interactions <= 0:
        raise ValueError(f"n_interactions must be positive, got {n_interactions}")
    pop = np.asarray(popularity, dtype=np.float64).reshape(-1)
    lists = _as_topk(topk, k)
    _check_item_range(lists, pop.shape[0], "topk")
    info = -np.log2(np.maximum(pop, 1.0) / n_interactions)            # [N]
    valid = lists >= 0                                                # [B, K]
    per_item = np.where(valid, info[np.where(valid, lists, 0)], 0.0)  # [B, K]
    n_valid = valid.sum(axis=1)                                       # [B]
    keep = n_valid > 0
    if not keep.any():
        return float("nan")
    return float((per_item.sum(axis=1)[keep] / n_valid[keep]).mean())


def _pair_dissimilarity(
    items: np.ndarray, vectors: np.ndarray | None, categories: np.ndarray | None
) -> np.ndarray:
    """float64 [b, K, K] dissimilarity between every pair of positions (items already non-negative)."""
    if vectors is not None:
        v = vectors[items]                                            # [b, K, D]
        return 1.0 - np.einsum("bkd,bld->bkl", v, v)                  # [b, K, K]
    c = categories[items]                                             # [b, K]
    return (c[:, :, None] != c[:, None, :]).astype(np.float64)        # [b, K, K]


def intra_list_diversity(
    topk: np.ndarray,
    item_vectors: np.ndarray | None = None,
    categories: np.ndarray | None = None,
    k: int | None = None,
) -> float:
    """Mean over lists of the mean pairwise dissimilarity of their items (ILD).

    Give exactly one of `item_vectors` [N, D] (dissimilarity = 1 - cosine; a zero vector has cosine
    0 with everything) or `categories` [N] int codes (dissimilarity = 1 for a pair in different
    categories). Pairs are unordered pairs of positions; padding is ignored; lists with fewer than
    two items are skipped; NaN when no list has two items.
    """
    if (item_vectors is None) == (categories is None):
        raise ValueError("give exactly one of item_vectors or categories")
    lists = _as_topk(topk, k)
    vectors = cats = None
    if item_vectors is not None:
        vec = np.asarray(item_vectors, dtype=np.float64)
        norms = np.linalg.norm(vec, axis=1, keepdims=True)
        vectors = vec / np.where(norms > 0, norms, 1.0)               # [N, D] unit rows
        _check_item_range(lists, vectors.shape[0], "topk")
    else:
        cats = np.asarray(categories).reshape(-1)
        _check_item_range(lists, cats.shape[0], "topk")
    kk = lists.shape[1]
    upper = np.triu(np.ones((kk, kk), dtype=bool), 1)                 # [K, K], pairs i < j
    sums, counts = [], []
    for start in range(0, lists.shape[0], _DIVERSITY_CHUNK):
        chunk = lists[start:start + _DIVERSITY_CHUNK]                 # [b, K]
        valid = chunk >= 0
        pairs = valid[:, :, None] & valid[:, None, :] & upper         # [b, K, K]
        dis = _pair_dissimilarity(np.where(valid, chunk, 0), vectors, cats)
        sums.append((dis * pairs).sum(axis=(1, 2)))
        counts.append(pairs.sum(axis=(1, 2)))
    total = np.concatenate(sums) if sums else np.zeros(0)
    n_pairs = np.concatenate(counts) if counts else np.zeros(0, dtype=np.int64)
    keep = n_pairs > 0
    if not keep.any():
        return float("nan")
    return float((total[keep] / n_pairs[keep]).mean())


# ----------------------------------------------------------------------------- channels


def _hit_matrix(
    topk_by_channel: Mapping[str, np.ndarray], targets: np.ndarray
) -> tuple[list[str], np.ndarray]:
    """Channel names and bool [C, B]: whether channel c's list holds user b's target."""
    if not topk_by_channel:
        raise ValueError("topk_by_channel is empty: give at least one channel")
    names = list(topk_by_channel)
    hits = np.stack([target_ranks(topk_by_channel[n], targets) >= 0 for n in names])  # [C, B]
    return names, hits


def channel_hits(
    topk_by_channel: Mapping[str, np.ndarray], targets: np.ndarray
) -> dict[str, dict[str, float]]:
    """Per channel: how many users' targets its list holds, and how many only it found.

    Returns {channel: {'hits', 'recall', 'unique_hits', 'unique_recall', 'users'}}, where recall is
    hits / users at the channel's own list length (its budget) and unique_hits counts users whose
    target this channel found and no other channel did.
    """
    names, hits = _hit_matrix(topk_by_channel, targets)
    n_users = hits.shape[1]
    only = hits & (hits.sum(axis=0) == 1)                             # [C, B]
    n_hit, n_only = hits.sum(axis=1), only.sum(axis=1)                # [C]
    out: dict[str, dict[str, float]] = {}
    for c, name in enumerate(names):
        out[name] = {
            "hits": int(n_hit[c]),
            "recall": float(n_hit[c] / n_users) if n_users else float("nan"),
            "unique_hits": int(n_only[c]),
            "unique_recall": float(n_only[c] / n_users) if n_users else float("nan"),
            "users": n_users,
        }
    return out


def overlap_matrix(
    topk_by_channel: Mapping[str, np.ndarray], targets: np.ndarray
) -> tuple[list[str], np.ndarray]:
    """Channel names and int64 [C, C]: users whose target both channel i and j found (diag = hits)."""
    names, hits = _hit_matrix(topk_by_channel, targets)
    h = hits.astype(np.int64)                                         # [C, B]
    return names, h @ h.T                                             # [C, C]
