"""COBRA channel end to end on small synthetic data: training beats random, seen items are
excluded, save/load round trip without pickle, cold-start items, the registry line, errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from channels.cobra.channel import CobraChannel
from pipeline.config import ChannelConfig
from pipeline.core import metrics as M
from pipeline.core.types import PAD
from pipeline.data import leave_one_out, synthesize
from pipeline.evaluation.harness import build_eval_set
from pipeline.registry import build_channel
from pipeline.workflow import fit_data

SMALL = dict(levels=[8, 4, 4], d_model=16, n_heads=2, d_ff=32, dense_dim=16, svd_dim=8, collab_dim=4, max_tokens=8,
             max_epochs=4, patience=2, epochs=3, valid_users=None, progress=False, num_threads=1, beam_size=10,
             eval_batch_size=64, lr=3e-3, batch_size=16, seed=0)


@pytest.fixture(scope="module")
def world():
    ds = synthesize(n_users=300, n_items=120, n_categories=6, n_brands=12, seed=0)
    split = leave_one_out(ds.interactions)
    return ds, split, fit_data(ds, split, "test", 0), build_eval_set(split, "test", 50)


@pytest.fixture(scope="module")
def fitted(world):
    _, _, data, _ = world
    return {mode: CobraChannel(mode=mode, **_params(mode)).fit(data) for mode in ("cobra", "tiger")}


def _params(mode: str) -> dict:
    return SMALL


def _recall(channel, evalset, k=10):
    return float(M.recall_at(M.target_ranks(channel.retrieve(evalset.batch, k).items, evalset.targets), k).mean())


@pytest.mark.parametrize("mode", ["cobra", "tiger"])
def test_tiny_training_beats_random(world, fitted, mode):
    ds, split, _, evalset = world
    untrained = CobraChannel(mode=mode, **(_params(mode) | {"epochs": 0})).fit(fit_data(ds, split, "valid", 0))
    trained = _recall(fitted[mode], evalset)
    assert trained > 1.5 * 10 / ds.n_items  # uniform random guessing
    assert trained > 1.5 * _recall(untrained, evalset)  # the same channel with random weights
    assert fitted[mode].fit_report_["early_stopping"] and fitted[mode].fit_report_["best_epoch"] >= 1


def test_retrieve_excludes_seen_items_and_returns_k(world, fitted):
    _, _, _, evalset = world
    batch = evalset.batch.take(slice(0, 20))
    out = fitted["cobra"].retrieve(batch, 15)
    assert out.items.shape == (20, 15)
    for row in range(20):
        got = out.items[row][out.items[row] != PAD]
        assert not set(got.tolist()) & set(batch.history_of(row).tolist())
        assert len(set(got.tolist())) == len(got)
        assert np.all(np.diff(out.scores[row][np.isfinite(out.scores[row])]) <= 0)


def test_a_request_is_answered_with_k_items_when_the_beams_hold_few(world, fitted):
    _, _, _, evalset = world
    ch = fitted["cobra"]
    batch = evalset.batch.take(slice(0, 30))
    before = ch.config
    try:
        ch.configure(catalog_neighbors=2)
        out = ch.retrieve(batch, 40, beam_size=2)
    finally:
        ch.config = before
    assert (out.items != PAD).all()  # 2 beams x 2 neighbours + their IDs' items alone hold far fewer than 40


def test_catalog_neighbours_are_scored_by_their_own_id(world, fitted):
    from channels.cobra.beam import beam_search

    _, _, _, evalset = world
    ch = fitted["cobra"]
    saved = ch.config
    try:
        ch.configure(catalog_neighbors=15, neighbor_id_score="own")
        hist = evalset.batch.history[:64]
        cands = ch.candidates(hist)
        beam_leaf = beam_search(ch.model_, ch.history_states(hist), ch.trie_, ch.beam_size).leaf.numpy()  # (B, W)
        item_leaf = ch.trie_.item_leaf[cands.items]
        held = (beam_leaf[cands.rows] == item_leaf[:, None]).any(axis=1)  # the item's ID is among its row's beams
        assert held.any() and (~held).any()  # leaf items and neighbours from outside the beams
        np.testing.assert_array_equal(beam_leaf[cands.rows[held], cands.own_beams[held]], item_leaf[held])
        weakest = np.isfinite(cands.beam_logp).sum(axis=1) - 1
        np.testing.assert_array_equal(cands.own_beams[~held], weakest[cands.rows[~held]])
        out = ch.score(cands, 10).items
        assert all(len(set(row[row != PAD].tolist())) == (row != PAD).sum() for row in out)
        assert all(not (set(row.tolist()) & set(h[h != PAD].tolist())) for row, h in zip(out, hist))
    finally:
        ch.config = saved


def test_history_catalog_query_adds_the_nearest_items_of_the_id_free_vector(world, fitted):
    _, _, _, evalset = world
    ch = fitted["cobra"]
    hist = evalset.batch.history[:32]
    saved = ch.config
    try:
        ch.configure(catalog_neighbors=0, neighbor_id_score="own")
        leaf = ch.candidates(hist)  # the items inside the beams' IDs alone
        ch.configure(catalog_neighbors=6, catalog_query="history")
        cands = ch.candidates(hist)
        out = ch.retrieve(evalset.batch.take(slice(0, 32)), 10)
        with torch.no_grad():
            v_hist = ch.model_.dense_vector(ch.history_states(hist)).numpy()
    finally:
        ch.config = saved
    assert (out.items != PAD).all()
    scores = np.where(ch.active_[None, :], v_hist @ ch.item_vecs_.T, -np.inf)  # (B, n_items)
    expected = list(zip(leaf.rows.tolist(), leaf.items.tolist(), leaf.sim.tolist()))
    for r in range(len(hist)):  # plus, per request, the 6 nearest unseen items of its one ID-free vector
        near = np.argsort(-scores[r], kind="stable")[:6]
        expected += [(r, int(i), float(scores[r, i])) for i in near if i not in set(hist[r].tolist())]
    got = sorted(zip(cands.rows.tolist(), cands.items.tolist(), cands.sim.tolist()))
    expected = sorted(expected)
    assert [g[:2] for g in got] == [e[:2] for e in expected]
    np.testing.assert_allclose([g[2] for g in got], [e[2] for e in expected], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="catalog_query must be one of"):
        CobraChannel(mode="cobra", catalog_query="everything")


def test_tiger_ids_are_unique_and_report_collisions_before(fitted):
    ch = fitted["tiger"]
    codes = ch.codes_[ch.active_]
    assert len(np.unique(codes, axis=0)) == len(codes)
    rep = ch.tokenizer_report()
    assert rep["collision_rate_before_disambiguation"] > 0  # synthetic titles repeat
    assert rep["unique_after_disambiguation"] and ch.sizes_[-1] == rep["disambiguation_size"]


def test_save_load_round_trip_without_pickle(world, fitted, tmp_path):
    _, _, _, evalset = world
    batch = evalset.batch.take(slice(0, 30))
    for mode, ch in fitted.items():
        ch.save(tmp_path / mode)
        files = {p.name for p in (tmp_path / mode).rglob("*")}
        assert {"model.pt", "codes.npy", "params.json", "semantic_ids_report.json"} <= files
        assert not any(name.endswith((".pkl", ".pickle")) for name in files)
        torch.load(tmp_path / mode / "model.pt", weights_only=True)
        np.load(tmp_path / mode / "codes.npy", allow_pickle=False)
        loaded = CobraChannel.load(tmp_path / mode)
        a, b = ch.retrieve(batch, 10), loaded.retrieve(batch, 10)
        np.testing.assert_array_equal(a.items, b.items)
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5)
    assert (tmp_path / "cobra" / "index.faiss").exists()
    json.loads((tmp_path / "cobra" / "semantic_ids_report.json").read_text())


def test_run_folders_of_the_first_format_are_refused_with_a_clear_error(world, fitted, tmp_path):
    fitted["cobra"].save(tmp_path / "old")
    meta = json.loads((tmp_path / "old" / "params.json").read_text())
    del meta["format"]  # what a version before the shared sequence encoder wrote
    (tmp_path / "old" / "params.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="saved in format 1 .* retrain it"):
        CobraChannel.load(tmp_path / "old")


@pytest.mark.parametrize("mode", ["cobra", "tiger"])
def test_cold_start_item_is_retrievable_after_add_items(world, fitted, tmp_path, mode):
    ds, _, _, evalset = world
    ch = fitted[mode]
    ch.save(tmp_path / "copy")
    ch = CobraChannel.load(tmp_path / "copy")  # leave the shared fixture untouched
    n = len(ch.active_)
    batch = evalset.batch.take(slice(0, 40))
    top = ch.retrieve(batch, 1, beam_size=10).items[:, 0]
    source = int(np.bincount(top[top != PAD]).argmax())  # an item the model likes to retrieve
    new = ds.items.iloc[[source]].assign(item_id=n, title=ds.items["title"].iloc[source] + " new")
    codes = ch.add_items(new)
    assert ch.active_[n] and codes.shape == (1, len(ch.sizes_))
    assert ch.trie_.contains(codes).all()
    got = ch.retrieve(batch, 20, beam_size=20).items
    liked = top == source  # the requests whose best item is the one the new item copies
    assert liked.sum() >= 5
    assert (got[liked] == n).any(axis=1).mean() > 0.5  # in their top 20 (of 121 items) without retraining
    if mode == "cobra":
        assert ch.index_.ntotal == int(ch.active_.sum())


def test_add_items_errors(world, fitted, tmp_path):
    ds, _, _, _ = world
    ch = fitted["cobra"]
    with pytest.raises(ValueError, match="not yet in the catalog"):
        ch.add_items(ds.items.iloc[[0]])
    with pytest.raises(ValueError, match="without gaps"):
        ch.add_items(ds.items.iloc[[0]].assign(item_id=len(ch.active_) + 3))
    with pytest.raises(ValueError, match="item_id"):
        ch.add_items(ds.items.drop(columns="item_id").iloc[[0]])


def test_items_without_content_at_fit_are_inactive_until_added(world):
    ds, split, _, _ = world
    data = fit_data(ds, split, "valid", 0)
    cold = np.array([3, 7])
    train = data.train[~data.train["item_id"].isin(cold)]
    items = ds.items[~ds.items["item_id"].isin(cold)]
    sub = type(data)(**{**data.__dict__, "train": train, "items": items})
    ch = CobraChannel(mode="cobra_sparse", **(SMALL | {"epochs": 1})).fit(sub)
    assert not ch.active_[cold].any()
    hist = np.array([[int(items["item_id"].iloc[0])]])
    from pipeline.core.types import RequestBatch

    batch = RequestBatch.from_sequences([0], [hist[0]])
    assert not np.isin(ch.retrieve(batch, 200, beam_size=200).items, cold).any()
    ch.add_items(ds.items[ds.items["item_id"].isin(cold)])
    assert ch.active_[cold].all()
    assert np.isin(cold, ch.retrieve(batch, 200, beam_size=200).items).all()


def test_registry_builds_the_channel_from_config():
    ch = build_channel(ChannelConfig(name="gen", kind="cobra", params={"mode": "tiger", "levels": [8, 8]}))
    assert isinstance(ch, CobraChannel) and ch.name == "gen" and ch.mode == "tiger"


def test_modes_are_an_id_scheme_plus_a_retrieval_head_not_flags():
    import ast
    import inspect

    import channels.cobra.channel as module
    from channels.cobra.parts import MODES, DenseHead, SparseHead

    assert {m: (p.ids.unique, type(p.head)) for m, p in MODES.items()} == {
        "cobra": (False, DenseHead), "cobra_sparse": (False, SparseHead), "tiger": (True, SparseHead)}
    assert all(CobraChannel(mode=m).parts is MODES[m] for m in MODES)
    # the channel never asks which mode it is in: no comparison with a mode's name
    names = set(MODES)
    for node in ast.walk(ast.parse(inspect.getsource(module))):
        if isinstance(node, ast.Compare):
            parts = [node.left, *node.comparators]
            assert not any(isinstance(p, ast.Constant) and p.value in names for p in parts), ast.unparse(node)


def test_errors_before_fit_and_bad_mode():
    with pytest.raises(ValueError, match="mode"):
        CobraChannel(mode="hstu")
    with pytest.raises(ValueError, match=r"neighbor_id_score must be one of \('search', 'own'\), got 'best'"):
        CobraChannel(neighbor_id_score="best")
    from pipeline.core.types import RequestBatch

    with pytest.raises(RuntimeError, match="fit"):
        CobraChannel().retrieve(RequestBatch.from_sequences([0], [np.array([1])]), 5)


def test_same_seed_same_model(world):
    ds, split, _, evalset = world
    data = fit_data(ds, split, "valid", 0)
    params = SMALL | {"epochs": 1}
    a = CobraChannel(mode="cobra", **params).fit(data)
    b = CobraChannel(mode="cobra", **params).fit(data)
    batch = evalset.batch.take(slice(0, 25))
    np.testing.assert_array_equal(a.retrieve(batch, 10).items, b.retrieve(batch, 10).items)
    np.testing.assert_array_equal(a.codes_, b.codes_)


@pytest.mark.parametrize("mode", ["cobra", "tiger"])
def test_seen_items_older_than_the_window_are_never_returned(world, fitted, mode):
    from tests.helpers import check_long_history_masked

    check_long_history_masked(fitted[mode], world[0].n_items, window=4, k=15)


def test_cold_quota_fills_the_last_places_with_the_nearest_new_items(world, fitted, tmp_path):
    ds, _, _, evalset = world
    fitted["cobra"].save(tmp_path / "copy")
    ch = CobraChannel.load(tmp_path / "copy")  # leave the shared fixture untouched
    n = len(ch.active_)
    batch = evalset.batch.take(slice(0, 40))
    new = ds.items.iloc[:6].assign(item_id=np.arange(n, n + 6), title=lambda f: f["title"] + " new")
    ch.add_items(new)
    assert set(range(n, n + 6)) <= set(ch.cold_items().tolist())
    ch.configure(cold_quota=3)
    got = ch.retrieve(batch, 10)
    with torch.no_grad():
        v_hist = ch.model_.dense_vector(ch.history_states(batch.history)).numpy()
    cold = ch.cold_items()
    for r in range(len(batch)):
        head = got.items[r, :7]
        sims = v_hist[r] @ ch.item_vecs_[cold].T
        allowed = ~np.isin(cold, np.r_[batch.seen_of(r), head])
        want = cold[allowed][np.argsort(-sims[allowed], kind="stable")[:3]]
        assert got.items[r, 7:].tolist() == want.tolist()  # the 3 nearest unseen cold items, best first
        assert not np.isin(got.items[r], batch.seen_of(r)).any()
    assert (np.diff(got.scores, axis=1) <= 0).all()
    # the places above the quota are the answer without it
    ch.configure(cold_quota=0)
    plain = ch.retrieve(batch, 10)
    assert (got.items[:, :7] == plain.items[:, :7]).all()
    ch.configure(cold_quota=3)
    ch.save(tmp_path / "again")
    again = CobraChannel.load(tmp_path / "again")
    assert again.cold_quota == 3 and (again.retrieve(batch, 10).items == got.items).all()
    with pytest.raises(ValueError, match="cold_quota must be >= 0, and 0 in mode 'tiger'"):
        CobraChannel(mode="tiger", cold_quota=2)
