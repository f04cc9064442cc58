"""Offline metrics: hand-computed cases and brute-force loop references on random data."""
from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.core import metrics as M

SEEDS = [0, 1, 2, 3]


# ----------------------------------------------------------------------------- references


def random_case(seed: int, n_users: int = 60, k: int = 12, n_items: int = 40):
    """Top-k lists with padding tails, duplicate-free rows, and ~1/3 absent targets."""
    rng = np.random.default_rng(seed)
    topk = np.stack([rng.permutation(n_items)[:k] for _ in range(n_users)]).astype(np.int64)
    lengths = rng.integers(0, k + 1, size=n_users)
    topk[np.arange(k)[None, :] >= lengths[:, None]] = -1
    targets = rng.integers(0, n_items, size=n_users)
    return topk, targets, n_items


def ref_rank(row, target) -> int:
    for pos, item in enumerate(row):
        if item >= 0 and item == target:
            return pos
    return -1


def ref_ranks(topk, targets) -> list[int]:
    return [ref_rank(list(row), int(t)) for row, t in zip(topk, targets)]


# ----------------------------------------------------------------------------- ranking


def test_hand_computed_ranks_and_metrics():
    topk = np.array([[7, 3, 5], [3, 7, -1], [1, 2, 3], [-1, -1, -1]])
    targets = np.array([7, 7, 9, -1])
    ranks = M.target_ranks(topk, targets)
    assert ranks.dtype == np.int64
    assert ranks.tolist() == [0, 1, -1, -1]
    np.testing.assert_allclose(M.recall_at(ranks, 1), [1, 0, 0, 0])
    np.testing.assert_allclose(M.recall_at(ranks, 2), [1, 1, 0, 0])
    np.testing.assert_allclose(M.ndcg_at(ranks, 10), [1.0, 1 / math.log2(3), 0, 0])
    np.testing.assert_allclose(M.ndcg_at(ranks, 1), [1.0, 0, 0, 0])
    np.testing.assert_allclose(M.mrr_at(ranks), [1.0, 0.5, 0, 0])
    np.testing.assert_allclose(M.mrr_at(ranks, 1), [1.0, 0, 0, 0])


def test_padding_never_matches_and_duplicates_take_first():
    assert M.target_ranks(np.array([[-1, 4, 4]]), np.array([-1])).tolist() == [-1]
    assert M.target_ranks(np.array([[2, 4, 4]]), np.array([4])).tolist() == [1]
    assert M.target_ranks(np.zeros((2, 0), dtype=np.int64), np.array([1, 2])).tolist() == [-1, -1]


@pytest.mark.parametrize("seed", SEEDS)
def test_ranking_metrics_match_loop_reference(seed):
    topk, targets, _ = random_case(seed)
    ranks = M.target_ranks(topk, targets)
    expected = ref_ranks(topk, targets)
    assert ranks.tolist() == expected
    assert (ranks < 0).any() and (ranks >= 0).any()
    for k in (1, 3, 5, 10, 20):
        rec = [1.0 if 0 <= r < k else 0.0 for r in expected]
        ndcg = [1.0 / math.log2(r + 2) if 0 <= r < k else 0.0 for r in expected]
        mrr = [1.0 / (r + 1) if 0 <= r < k else 0.0 for r in expected]
        np.testing.assert_allclose(M.recall_at(ranks, k), rec)
        np.testing.assert_allclose(M.ndcg_at(ranks, k), ndcg)
        np.testing.assert_allclose(M.mrr_at(ranks, k), mrr)
    np.testing.assert_allclose(M.mrr_at(ranks), [1.0 / (r + 1) if r >= 0 else 0.0 for r in expected])


@pytest.mark.parametrize("seed", SEEDS)
def test_summarize_and_per_user_metric_match_reference(seed):
    topk, targets, _ = random_case(seed)
    ranks = M.target_ranks(topk, targets)
    expected = ref_ranks(topk, targets)
    out = M.summarize(ranks, ks=(5, 10))
    assert list(out) == ["R@5", "N@5", "R@10", "N@10", "MRR", "users"]
    assert out["users"] == len(expected)
    for k in (5, 10):
        assert out[f"R@{k}"] == pytest.approx(sum(0 <= r < k for r in expected) / len(expected))
        assert out[f"N@{k}"] == pytest.approx(
            sum(1 / math.log2(r + 2) for r in expected if 0 <= r < k) / len(expected))
    assert out["MRR"] == pytest.approx(sum(1 / (r + 1) for r in expected if 0 <= r < 10) / len(expected))
    np.testing.assert_allclose(M.per_user_metric(ranks, "R@5"), M.recall_at(ranks, 5))
    np.testing.assert_allclose(M.per_user_metric(ranks, "HR@5"), M.recall_at(ranks, 5))
    np.testing.assert_allclose(M.per_user_metric(ranks, "N@10"), M.ndcg_at(ranks, 10))
    np.testing.assert_allclose(M.per_user_metric(ranks, "MRR"), M.mrr_at(ranks))
    np.testing.assert_allclose(M.per_user_metric(ranks, "MRR@3"), M.mrr_at(ranks, 3))


def test_summarize_empty_and_errors():
    out = M.summarize(np.zeros(0, dtype=np.int64), ks=(5,))
    assert out["users"] == 0 and math.isnan(out["R@5"]) and math.isnan(out["MRR"])
    with pytest.raises(ValueError, match="at least one cutoff"):
        M.summarize(np.array([0]), ks=())
    with pytest.raises(ValueError, match="k must be >= 1"):
        M.recall_at(np.array([0]), 0)
    with pytest.raises(ValueError, match="unknown metric 'P@10'"):
        M.per_user_metric(np.array([0]), "P@10")
    with pytest.raises(ValueError, match="unknown metric 'R@x'"):
        M.per_user_metric(np.array([0]), "R@x")
    with pytest.raises(ValueError, match="needs a cutoff"):
        M.per_user_metric(np.array([0]), "N")
    with pytest.raises(ValueError, match="2 rows but targets has 3"):
        M.target_ranks(np.zeros((2, 3), dtype=np.int64), np.arange(3))
    with pytest.raises(ValueError, match="must be 2-D"):
        M.target_ranks(np.arange(3), np.arange(3))
    with pytest.raises(ValueError, match="integer item indices"):
        M.target_ranks(np.zeros((1, 2)), np.arange(1))


# ----------------------------------------------------------------------------- catalog


def test_coverage_and_popularity_hand_made():
    topk = np.array([[0, 1, 2], [1, 3, -1], [4, -1, -1]])
    assert M.catalog_coverage(topk, 10) == pytest.approx(0.5)
    assert M.catalog_coverage(topk, 10, k=1) == pytest.approx(0.3)  # items 0, 1, 4
    assert M.item_popularity(np.array([0, 2, 2, 3, 3, 3]), 5).tolist() == [1, 0, 2, 3, 0]
    with pytest.raises(ValueError, match="item index 10 >= n_items=10"):
        M.catalog_coverage(np.array([[10]]), 10)
    with pytest.raises(ValueError, match="n_items must be positive"):
        M.catalog_coverage(topk, 0)
    with pytest.raises(ValueError, match="negative index -2"):
        M.item_popularity(np.array([1, -2]), 5)


@pytest.mark.parametrize("seed", SEEDS)
def test_coverage_matches_reference(seed):
    topk, _, n_items = random_case(seed)
    for k in (None, 1, 4):
        seen = {int(i) for row in topk for i in (row if k is None else row[:k]) if i >= 0}
        assert M.catalog_coverage(topk, n_items, k) == pytest.approx(len(seen) / n_items)


def test_popularity_buckets_hand_made():
    # total 100: items ranked 50, 20, 15, 10, 5, 0 -> mass before = 0, 50, 70, 85, 95, 100
    pop = np.array([10, 50, 0, 15, 5, 20])
    assert M.popularity_buckets(pop, 2).tolist() == [1, 0, 1, 1, 1, 1]
    assert M.popularity_buckets(pop, 5).tolist() == [4, 0, 4, 3, 4, 2]
    # ties share a bucket: four items of 25 each all start at mass 0, 25, 50, 75 but tie -> 0
    assert M.popularity_buckets(np.array([25, 25, 25, 25]), 4).tolist() == [0, 0, 0, 0]
    assert M.popularity_buckets(np.array([0, 0]), 3).tolist() == [2, 2]
    with pytest.raises(ValueError, match="n_buckets must be >= 1"):
        M.popularity_buckets(pop, 0)
    with pytest.raises(ValueError, match="non-negative"):
        M.popularity_buckets(np.array([1, -1]), 2)


@pytest.mark.parametrize("seed", SEEDS)
def test_popularity_buckets_match_reference(seed):
    rng = np.random.default_rng(seed)
    pop = rng.zipf(1.5, size=50).clip(max=200) * rng.integers(0, 2, size=50)
    total = pop.sum()
    for n_buckets in (1, 3, 5):
        expected = [min(n_buckets - 1, (n_buckets * sum(q for q in pop if q > p)) // total) for p in pop]
        assert M.popularity_buckets(pop, n_buckets).tolist() == expected


def test_long_tail_mask_hand_made():
    pop = np.array([5, 9, 0, 9, 1, 2, 3, 0, 0, 4])
    # head = 2 most popular of 10 items; ties (items 1 and 3) go to the lower index first
    assert np.flatnonzero(~M.long_tail_mask(pop)).tolist() == [1, 3]
    assert np.flatnonzero(~M.long_tail_mask(pop, 0.3)).tolist() == [0, 1, 3]
    assert M.long_tail_mask(pop, 0.0).all()
    assert np.flatnonzero(~M.long_tail_mask(pop, 1.0)).tolist() == [0, 1, 3, 4, 5, 6, 9]  # unseen stay tail
    with pytest.raises(ValueError, match="head_share must be in"):
        M.long_tail_mask(pop, 1.5)


def test_recall_by_bucket_hand_made():
    ranks = np.array([0, -1, 3, 12, 2])
    targets = np.array([4, 0, 1, 3, 2])
    buckets = np.array([0, 0, 1, 3, 0])  # item -> bucket; bucket 2 holds no item, so no users
    out = M.recall_by_bucket(ranks, targets, buckets, k=10)
    assert list(out) == [0, 1, 2, 3]
    assert out[0] == {"R@10": pytest.approx(2 / 3), "hits": 2, "users": 3}  # users 0, 1, 4
    assert out[1] == {"R@10": 1.0, "hits": 1, "users": 1}
    assert out[2]["users"] == 0 and out[2]["hits"] == 0 and math.isnan(out[2]["R@10"])
    assert out[3] == {"R@10": 0.0, "hits": 0, "users": 1}  # rank 12 is outside k=10
    assert M.recall_by_bucket(ranks, targets, buckets, k=20)[3]["R@20"] == 1.0
    with pytest.raises(ValueError, match="item indices in"):
        M.recall_by_bucket(ranks, np.array([4, 0, 1, 1, 9]), buckets, k=10)


# ----------------------------------------------------------------------------- list quality


def test_novelty_hand_made_and_reference():
    pop = np.array([8, 4, 2, 1, 0])
    topk = np.array([[0, 1, -1], [2, 3, 4], [-1, -1, -1]])
    # of 16 interactions: row 0 (1 + 2) / 2 bits; row 1 (3 + 4 + 4) / 3 (unseen item counts once)
    assert M.novelty(topk, pop, 16) == pytest.approx((1.5 + 11 / 3) / 2)
    assert M.novelty(topk, pop, 16, k=1) == pytest.approx((1.0 + 3.0) / 2)
    assert math.isnan(M.novelty(np.full((2, 2), -1), pop, 16))
    with pytest.raises(ValueError, match="n_interactions must be positive"):
        M.novelty(topk, pop, 0)
    topk, _, n_items = random_case(5)
    pop = np.random.default_rng(5).integers(0, 30, size=n_items)
    per_list = [[-math.log2(max(pop[i], 1) / 500) for i in row if i >= 0] for row in topk]
    expected = np.mean([sum(v) / len(v) for v in per_list if v])
    assert M.novelty(topk, pop, 500) == pytest.approx(expected)


def test_diversity_categories_hand_made():
    cats = np.array([0, 0, 1, 2])
    topk = np.array([[0, 1, 2], [0, 1, -1], [3, -1, -1]])
    # row 0: pairs (0,1) same, (0,2) diff, (1,2) diff -> 2/3; row 1 -> 0; row 2 skipped (one item)
    assert M.intra_list_diversity(topk, categories=cats) == pytest.approx((2 / 3 + 0) / 2)
    assert M.intra_list_diversity(topk, categories=cats, k=2) == pytest.approx(0.0)
    assert math.isnan(M.intra_list_diversity(topk[2:], categories=cats))


def test_diversity_vectors_hand_made():
    vecs = np.array([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0], [0.0, 0.0]])
    topk = np.array([[0, 1, 2], [0, 3, -1]])
    # row 0: 1-cos = 1, 2, 1 -> 4/3; row 1: zero vector has cosine 0 -> 1
    assert M.intra_list_diversity(topk, item_vectors=vecs) == pytest.approx((4 / 3 + 1) / 2)
    with pytest.raises(ValueError, match="exactly one of item_vectors or categories"):
        M.intra_list_diversity(topk)
    with pytest.raises(ValueError, match="exactly one of item_vectors or categories"):
        M.intra_list_diversity(topk, item_vectors=vecs, categories=np.zeros(4, dtype=int))


@pytest.mark.parametrize("seed", SEEDS)
def test_diversity_matches_reference(seed, monkeypatch):
    monkeypatch.setattr(M, "_DIVERSITY_CHUNK", 7)  # exercise several chunks
    topk, _, n_items = random_case(seed)
    rng = np.random.default_rng(seed)
    vecs, cats = rng.normal(size=(n_items, 4)), rng.integers(0, 3, size=n_items)
    ref_v, ref_c = [], []
    for row in topk:
        items = [int(i) for i in row if i >= 0]
        pairs = [(a, b) for x, a in enumerate(items) for b in items[x + 1:]]
        if not pairs:
            continue
        cos = [vecs[a] @ vecs[b] / (np.linalg.norm(vecs[a]) * np.linalg.norm(vecs[b])) for a, b in pairs]
        ref_v.append(sum(1 - c for c in cos) / len(pairs))
        ref_c.append(sum(cats[a] != cats[b] for a, b in pairs) / len(pairs))
    assert M.intra_list_diversity(topk, item_vectors=vecs) == pytest.approx(np.mean(ref_v))
    assert M.intra_list_diversity(topk, categories=cats) == pytest.approx(np.mean(ref_c))


# ----------------------------------------------------------------------------- channels


def test_channel_hits_and_overlap_hand_made():
    targets = np.array([1, 2, 3, 4])
    lists = {
        "covis": np.array([[1, 9], [2, 9], [9, 9], [9, -1]]),   # hits users 0, 1
        "tower": np.array([[1, -1], [9, -1], [3, -1], [9, -1]]),  # hits users 0, 2
        "pop": np.array([[9], [9], [9], [9]]),                   # hits nobody
    }
    out = M.channel_hits(lists, targets)
    assert out["covis"] == {"hits": 2, "recall": 0.5, "unique_hits": 1, "unique_recall": 0.25, "users": 4}
    assert out["tower"]["unique_hits"] == 1 and out["tower"]["recall"] == 0.5
    assert out["pop"] == {"hits": 0, "recall": 0.0, "unique_hits": 0, "unique_recall": 0.0, "users": 4}
    names, overlap = M.overlap_matrix(lists, targets)
    assert names == ["covis", "tower", "pop"]
    assert overlap.tolist() == [[2, 1, 0], [1, 2, 0], [0, 0, 0]]
    with pytest.raises(ValueError, match="topk_by_channel is empty"):
        M.channel_hits({}, targets)


@pytest.mark.parametrize("seed", SEEDS)
def test_channel_hits_match_reference(seed):
    chans = {f"c{s}": random_case(seed * 10 + s)[0] for s in range(3)}
    _, targets, _ = random_case(seed)
    found = {n: [ref_rank(list(r), int(t)) >= 0 for r, t in zip(t_, targets)] for n, t_ in chans.items()}
    out = M.channel_hits(chans, targets)
    names, overlap = M.overlap_matrix(chans, targets)
    for i, n in enumerate(names):
        others = [m for m in names if m != n]
        unique = sum(f and not any(found[m][u] for m in others) for u, f in enumerate(found[n]))
        assert out[n]["hits"] == sum(found[n]) and out[n]["unique_hits"] == unique
        for j, m in enumerate(names):
            assert overlap[i, j] == sum(a and b for a, b in zip(found[n], found[m]))
