"""COBRA channel: trie-constrained beam search and the scoring of its candidates."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from channels.cobra.beam import (
    BeamConfig, Candidates, beam_search, drop_seen, fusion_scores, leaf_candidates, sparse_scores, top_unique,
    with_cold_quota,
)
from channels.cobra.model import CobraModel, ModelConfig
from channels.cobra.trie import CodeTrie
from pipeline.core.types import PAD, Retrieved


def _model(sizes, seed=0, dense=True):
    torch.manual_seed(seed)
    cfg = ModelConfig(code_sizes=sizes, n_tokens=5, content_dim=3, n_price=2, d_model=16, n_layers=1, n_heads=2,
                      d_ff=32, max_len=8, dropout=0.0, dense=dense, dense_dim=16)
    return CobraModel(cfg).eval()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_search_never_emits_a_code_that_does_not_exist(seed):
    rng = np.random.default_rng(seed)
    sizes = (6, 5, 4)
    codes = rng.integers(0, sizes, size=(25, 3))  # 25 items use a small part of the 120 codes
    trie = CodeTrie.build(codes, sizes)
    model = _model(sizes, seed)
    h = torch.randn(7, 16) * 3
    beams = beam_search(model, h, trie, beam_size=10)
    live = torch.isfinite(beams.logp)
    assert live.all(dim=1).all()  # 25 items -> more than 10 existing codes
    got = beams.codes[live].numpy()
    assert trie.contains(got).all()
    assert (beams.leaf[live] >= 0).all()
    np.testing.assert_array_equal(trie.leaf_codes[beams.leaf[live].numpy()], got)
    # scores are sorted and are proper log-probabilities of distinct codes
    lp = beams.logp.numpy()
    assert (np.diff(lp, axis=1) <= 1e-6).all() and (lp <= 0).all()
    for row in beams.codes.numpy():
        assert len({tuple(c) for c in row}) == len(row)


def test_beam_larger_than_the_catalog_leaves_dead_beams():
    sizes = (4, 4)
    codes = np.array([[0, 1], [0, 2], [3, 3]])
    trie = CodeTrie.build(codes, sizes)
    beams = beam_search(_model(sizes), torch.randn(2, 16), trie, beam_size=6)
    live = torch.isfinite(beams.logp)
    assert live.sum(1).tolist() == [3, 3]
    assert (beams.leaf[~live] == -1).all()
    # the 3 live beams of each request cover all 3 codes; probabilities of the full IDs sum to 1
    np.testing.assert_allclose(torch.logsumexp(beams.logp, 1).numpy(), 0.0, atol=1e-5)


def test_exhaustive_beam_matches_brute_force_probabilities():
    sizes = (3, 3)
    codes = np.array([[0, 0], [0, 2], [1, 1], [2, 0], [2, 2]])
    trie = CodeTrie.build(codes, sizes)
    model = _model(sizes, 3)
    h = torch.randn(1, 16)
    beams = beam_search(model, h, trie, beam_size=5)
    with torch.no_grad():
        brute = {}
        lp0 = torch.log_softmax(model.code_logits(h, 0)[0], -1)  # every first-level code exists
        for c0 in range(3):
            nxt = [c[1] for c in codes if c[0] == c0]
            mask = torch.zeros(3, dtype=torch.bool)
            mask[nxt] = True
            s = model.condition(h, 0, torch.tensor([c0]))
            lp1 = torch.log_softmax(model.code_logits(s, 1)[0].masked_fill(~mask, -1e9), -1)
            for c1 in nxt:
                brute[(c0, c1)] = float(lp0[c0] + lp1[c1])
    got = {tuple(c): float(p) for c, p in zip(beams.codes[0].tolist(), beams.logp[0])}
    assert got.keys() == brute.keys()
    for key in got:
        assert got[key] == pytest.approx(brute[key], abs=1e-5)


def _cands(rows, beams, items, logp, sim=None):
    return Candidates(np.asarray(logp, np.float64), np.asarray(rows), np.asarray(beams), np.asarray(items),
                      None if sim is None else np.asarray(sim, np.float32))


def test_top_unique_keeps_best_score_per_item_and_breaks_ties_by_id():
    c = _cands([0, 0, 0, 0, 1], [0, 0, 1, 1, 0], [5, 3, 5, 7, 2], [[0.0, 0.0], [0.0, 0.0]])
    out = top_unique(c, np.array([1.0, 2.0, 3.0, 2.0, -np.inf], np.float32), k=3)
    assert out.items.tolist() == [[5, 3, 7], [PAD, PAD, PAD]]
    assert out.scores[0].tolist() == [3.0, 2.0, 2.0]


def test_leaf_candidates_and_drop_seen():
    codes = np.array([[0, 0], [0, 0], [1, 1]])
    trie = CodeTrie.build(codes, (2, 2))
    beams = beam_search(_model((2, 2)), torch.randn(1, 16), trie, beam_size=3)
    cands = leaf_candidates(beams, trie)
    assert sorted(cands.items.tolist()) == [0, 1, 2]
    kept = drop_seen(cands, np.array([[PAD, 1]]))
    assert sorted(kept.items.tolist()) == [0, 2]


def test_beamfusion_is_the_product_of_the_two_softmaxes():
    logp = [[np.log(0.6), np.log(0.3), -np.inf]]
    c = _cands([0, 0, 0], [0, 0, 1], [10, 11, 12], logp, sim=[0.5, 0.1, 0.9])
    cfg = BeamConfig(tau=1.0, psi=2.0)
    got = np.exp(fusion_scores(c, cfg))
    beam = np.array([0.6, 0.3]) / 0.9
    dense = np.exp(2 * np.array([0.5, 0.1, 0.9]))
    dense /= dense.sum()
    np.testing.assert_allclose(got, [beam[0] * dense[0], beam[0] * dense[1], beam[1] * dense[2]], rtol=1e-5)
    only_dense = fusion_scores(c, BeamConfig(psi=2.0, sparse_weight=0.0))
    assert np.argmax(only_dense) == 2


def test_sparse_scores_add_the_in_id_prior():
    c = _cands([0, 0], [0, 0], [0, 1], [[np.log(0.5)]])
    prior = np.log(np.array([0.75, 0.25], np.float32))
    np.testing.assert_allclose(np.exp(sparse_scores(c, prior)), [0.375, 0.125], rtol=1e-5)


def test_neighbour_search_once_per_shared_dense_vector_gives_the_same_lists():
    from channels.cobra.catalog import IndexConfig, build_index, normalize
    from channels.cobra.beam import neighbor_candidates, with_similarity

    rng = np.random.default_rng(0)
    item_vecs = normalize(rng.normal(size=(40, 8)).astype(np.float32))
    index = build_index(item_vecs, np.arange(40), IndexConfig())
    v = normalize(rng.normal(size=(2, 2, 8)).astype(np.float32))
    v_hat = np.stack([v[:, 0], v[:, 0], v[:, 1]], axis=1)  # beams 0 and 1 share a dense vector
    groups = np.array([[[0], [0], [1]], [[0], [0], [1]]])
    base = _cands([], [], [], [[-0.1, -0.5, -1.0], [-0.2, -0.3, -2.0]])
    base = Candidates(base.beam_logp, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
    cfg = BeamConfig(psi=5.0)
    lists = []
    for g in (None, groups):
        c = with_similarity(neighbor_candidates(base, v_hat, index, 6, g), v_hat, item_vecs)
        lists.append(top_unique(c, fusion_scores(c, cfg), 8))
    np.testing.assert_array_equal(lists[0].items, lists[1].items)


def test_the_best_beam_searches_deep_enough_to_fill_k():
    from channels.cobra.catalog import IndexConfig, build_index, normalize
    from channels.cobra.beam import neighbor_candidates

    rng = np.random.default_rng(1)
    item_vecs = normalize(rng.normal(size=(40, 8)).astype(np.float32))
    index = build_index(item_vecs, np.arange(40), IndexConfig())
    v_hat = normalize(rng.normal(size=(2, 3, 8)).astype(np.float32))
    base = _cands([], [], [], [[-0.1, -0.5, -np.inf], [-0.2, -0.3, -2.0]])  # row 0 has two live beams
    base = Candidates(base.beam_logp, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
    c = neighbor_candidates(base, v_hat, index, 3, fill=12)
    per_beam = {(r, b): int(((c.rows == r) & (c.beams == b)).sum()) for r in range(2) for b in range(3)}
    assert per_beam == {(0, 0): 12, (0, 1): 3, (0, 2): 0, (1, 0): 12, (1, 1): 3, (1, 2): 3}
    exact = np.argsort(-(item_vecs @ v_hat[1, 0]))[:12]
    np.testing.assert_array_equal(c.items[(c.rows == 1) & (c.beams == 0)], exact)
    assert neighbor_candidates(base, v_hat, index, 3).items.size == 15  # no fill: n per live beam


def test_only_the_best_search_beams_search_the_catalog():
    from channels.cobra.catalog import IndexConfig, build_index, normalize
    from channels.cobra.beam import neighbor_candidates

    rng = np.random.default_rng(2)
    item_vecs = normalize(rng.normal(size=(40, 8)).astype(np.float32))
    index = build_index(item_vecs, np.arange(40), IndexConfig())
    v_hat = normalize(rng.normal(size=(2, 4, 8)).astype(np.float32))
    base = _cands([], [], [], [[-0.1, -0.5, -0.7, -np.inf], [-0.2, -0.3, -2.0, -3.0]])
    base = Candidates(base.beam_logp, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
    groups = np.array([[[0], [0], [1], [2]], [[0], [1], [1], [2]]])  # row 1: beams 1 and 2 share a vector

    def searched(c):
        return {(int(r), int(b)) for r, b in zip(c.rows, c.beams)}

    assert searched(neighbor_candidates(base, v_hat, index, 3, groups, search_beams=2)) == {(0, 0), (0, 2), (1, 0), (1, 1)}
    assert searched(neighbor_candidates(base, v_hat, index, 3, search_beams=1)) == {(0, 0), (1, 0)}
    everything = neighbor_candidates(base, v_hat, index, 3, groups)
    np.testing.assert_array_equal(neighbor_candidates(base, v_hat, index, 3, groups, search_beams=4).items, everything.items)
    # the searched beams find what they would have found without the cut
    cut = neighbor_candidates(base, v_hat, index, 3, groups, fill=5, search_beams=1)
    full = neighbor_candidates(base, v_hat, index, 3, groups, fill=5)
    keep = full.beams == 0
    np.testing.assert_array_equal(cut.items, full.items[keep])
    with pytest.raises(ValueError, match="search_beams must be >= 1"):
        BeamConfig(search_beams=0)


def test_own_id_score_lets_the_sparse_side_reorder_catalog_neighbours():
    from channels.cobra.beam import with_own_beams

    # one request, beams 0 (ID leaf 4, p .7), 1 (leaf 9, p .2), 2 dead; every candidate was found by
    # beam 0's dense vector (the dense head does not read the ID). Items 20/21/22 live in leaves 9/4/7.
    logp = [[np.log(0.7), np.log(0.2), -np.inf]]
    c = _cands([0, 0, 0], [0, 0, 0], [20, 21, 22], logp, sim=[0.9, 0.8, 0.85])
    item_leaf = np.full(30, -1, np.int64)
    item_leaf[[20, 21, 22]] = [9, 4, 7]
    c = with_own_beams(c, np.array([[4, 9, -1]]), item_leaf)
    assert c.own_beams.tolist() == [1, 0, 1]  # leaf 7 is no beam's: the weakest live beam (1)
    by_search = top_unique(c, fusion_scores(c, BeamConfig(psi=1.0)), 3).items[0].tolist()
    by_own = top_unique(c, fusion_scores(c, BeamConfig(psi=1.0, neighbor_id_score="own")), 3).items[0].tolist()
    assert by_search == [20, 22, 21]  # one shared beam score: the dense order
    assert by_own == [21, 20, 22]  # item 21's own ID is the likely one; 20 and 22 share beam 1
    sub = c.subset(np.array([False, True, True]))
    assert sub.own_beams.tolist() == [0, 1]
    with pytest.raises(ValueError, match="neighbor_id_score must be one of"):
        BeamConfig(neighbor_id_score="mine")


def test_cold_quota_keeps_the_head_and_gives_the_tail_to_the_nearest_unseen_cold_items():
    out = Retrieved(np.array([[4, 5, 6, 7], [8, 9, PAD, PAD]]), np.array([[4.0, 3.0, 2.0, 1.0], [2.0, 1.0, -np.inf, -np.inf]], np.float32))
    vecs = np.zeros((12, 2), np.float32)
    vecs[[1, 2, 3, 10]] = [[1.0, 0.0], [0.5, 0.0], [0.5, 0.0], [0.0, 1.0]]  # 2 and 3 tie
    cold = np.array([1, 2, 3, 10])
    v = np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)
    history = np.array([[PAD, 1], [PAD, 0]])  # row 0 has seen cold item 1
    got = with_cold_quota(out, v, cold, vecs, 2, history)
    # row 0: head 4, 5; tail: the nearest unseen cold items 2, 3 (tie: lower id first)
    # row 1: head 8, 9; tail 1 then 2; the list grows into its padding
    assert got.items.tolist() == [[4, 5, 2, 3], [8, 9, 1, 2]]
    np.testing.assert_allclose(got.scores, [[4.0, 3.0, 2.999, 2.998], [2.0, 1.0, 0.999, 0.998]], rtol=0, atol=1e-6)
    assert (np.diff(got.scores, axis=1) < 0).all()  # still sorted
    assert with_cold_quota(out, v, cold, vecs, 0, history) is out
    assert with_cold_quota(out, v, np.zeros(0, np.int64), vecs, 2, history) is out


def test_cold_quota_never_repeats_an_item_and_backfills_from_the_answer():
    # the answer's head already holds cold item 2; only item 3 is left, the last place keeps the answer's item
    out = Retrieved(np.array([[2, 5, 6, 7]]), np.array([[4.0, 3.0, 2.0, 1.0]], np.float32))
    vecs = np.ones((8, 2), np.float32)
    got = with_cold_quota(out, np.ones((1, 2), np.float32), np.array([2, 3]), vecs, 2, np.array([[PAD]]))
    assert got.items.tolist() == [[2, 5, 3, 6]]
    # a quota as long as the answer: every place goes to cold items, best first, then the answer's
    got = with_cold_quota(out, np.ones((1, 2), np.float32), np.array([2, 3]), vecs, 9, np.array([[PAD]]),
                          seen=(np.array([0]), np.array([3])))
    assert got.items.tolist() == [[2, 5, 6, 7]]
