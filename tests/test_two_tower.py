"""Two-tower channel: golden values of the towers, training, retrieval, save/load, new items."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from channels.popularity import PopularityChannel
from channels.two_tower.channel import TwoTowerChannel, item_inputs
from channels.two_tower.features import ItemFeatureEncoder, hash_token
from channels.two_tower.index import IndexConfig, ItemIndex
from channels.two_tower.model import ItemInputs, ItemTowerConfig, TwoTowerModel, UserTowerConfig, gap_buckets
from channels.sequence import NegativeSampler, build_windows
from channels.two_tower.train import build_requests
from pipeline.config import ChannelConfig
from pipeline.data import leave_one_out, synthesize
from pipeline.core import metrics as M
from pipeline.evaluation.harness import build_eval_set, channel_topk_fn, run_topk
from pipeline.registry import build_channel
from pipeline.core.types import PAD, RequestBatch
from pipeline.workflow import fit_data
from tests.helpers import DAY, batch_of, tiny_fit_data

SMALL = dict(d_model=16, n_layers=1, n_heads=2, d_ff=32, max_len=20, dropout=0.1, text_buckets=256,
             batch_size=64, progress=False, num_threads=1, seed=0)


def golden_model() -> tuple[TwoTowerModel, ItemInputs]:
    torch.manual_seed(0)
    model = TwoTowerModel(
        ItemTowerConfig(n_items=5, d_model=8, n_category=3, n_brand=2, n_path=3, n_price=4, text_buckets=16),
        UserTowerConfig(d_model=8, n_layers=1, n_heads=2, d_ff=16, max_len=4, dropout=0.0, time_buckets=4),
    ).eval()
    items = ItemInputs(torch.arange(6), torch.tensor([0, 1, 2, 1, 2, 0]), torch.tensor([1, 0, 1, 1, 0, 1]),
                       torch.tensor([1, 2, 0, 1, 2, 2]), torch.tensor([3, 0, 1, 2, 3, 1]),
                       torch.tensor([[3, 5, 0], [7, 0, 0], [0, 0, 0], [1, 2, 15], [4, 4, 0], [9, 3, 0]]))
    return model, items


def test_towers_golden_values():
    model, items = golden_model()
    with torch.no_grad():
        raw = model.item_tower(items)  # item 5 is unseen: unknown id row (zero) + content
        hist = torch.tensor([[PAD, 0, 1], [2, 3, 4]])
        times = torch.tensor([[0, 0, DAY], [0, 3 * DAY, 40 * DAY]])
        user = model.user_states(raw, hist, times)[:, -1]
    expected_items = torch.tensor([
        [0.141649, 0.214245, 0.816527, 0.664826], [0.413825, 0.175001, 0.793769, 1.468316],
        [0.484726, 0.261714, 0.120369, 1.109240], [-1.093296, -0.051295, -0.356167, 0.484847],
        [0.159608, 0.398170, -0.151548, 0.170039], [0.818485, 0.080221, 0.114904, 0.553664]])
    expected_users = torch.tensor([[-0.279055, -0.391384, -0.050763, 2.127669],
                                   [0.215366, -0.016642, -1.496441, 0.325031]])
    assert torch.allclose(raw[:, :4], expected_items, atol=1e-5)
    assert torch.allclose(user[:, :4], expected_users, atol=1e-5)
    assert float(raw.sum()) == pytest.approx(7.698136, abs=1e-4)


def test_user_tower_is_causal_and_ignores_padding():
    model, items = golden_model()
    with torch.no_grad():
        raw = model.item_tower(items)
        a = model.user_states(raw, torch.tensor([[PAD, PAD, 0, 1]]), None)
        b = model.user_states(raw, torch.tensor([[0, 1]]), None)  # same history, no padding columns
        c = model.user_states(raw, torch.tensor([[PAD, 3, 0, 1]]), None)
        d = model.user_states(raw, torch.tensor([[PAD, 3, 4, 2]]), None)  # same prefix, other future
    assert torch.allclose(a[:, -2:], b, atol=1e-5)
    assert torch.allclose(c[0, 1], d[0, 1], atol=1e-6)  # no look-ahead
    assert not torch.allclose(a[0, -1], c[0, -1])


def test_gap_buckets():
    times = torch.tensor([[0, 0, 5 * DAY, 5 * DAY + 1000, 400 * DAY]])
    valid = torch.tensor([[False, True, True, True, True]])
    assert gap_buckets(times, valid, 6).tolist() == [[0, 0, 3, 1, 5]]


def test_windows_use_every_position_and_requests_align():
    data = tiny_fit_data()
    w = build_windows(data.train, max_len=2)
    per_user = data.train.groupby("user_id").size()
    assert int((w.targets >= 0).sum()) == int((per_user - 1).sum())
    # user 0: 0 -> 1 -> 2 gives the window inputs [0, 1], targets [1, 2]
    assert [0, 1] in w.inputs.tolist() and [1, 2] in w.targets.tolist()
    targets = pd.DataFrame({"user_id": [2, 0], "item_id": [3, 4], "timestamp": [50 * DAY, 50 * DAY]})
    req = build_requests(data.train, targets, max_len=2)
    assert req.history.tolist() == [[1, 2], [5, 0]] and req.targets.tolist() == [4, 3]
    short = build_requests(data.train, targets.assign(user_id=[3, 0]), max_len=3)  # sorted by length
    assert short.history.tolist() == [[PAD, 5, 1], [0, 1, 2]] and short.targets.tolist() == [3, 4]


def test_negative_sampler_logq():
    sampler = NegativeSampler(np.array([3.0, 1.0, 0.0, 0.0]), "uniform", 1.0)
    draws = sampler.sample(4000, np.random.default_rng(0))
    assert set(np.unique(draws)) == {0, 1, 2, 3}
    q = np.exp(sampler.log_q(np.array([0, 2]), n_pos=2, n_neg=3))
    assert q[0] == pytest.approx(1 - 0.25**2 * 0.75**3)
    assert q[1] == pytest.approx(1 - 0.75**3)


def test_feature_encoder_unknowns_and_round_trip(tmp_path):
    items = tiny_fit_data().items
    enc = ItemFeatureEncoder(text_buckets=64, max_tokens=4, price_buckets=2, min_count=2).fit(items)
    new = pd.DataFrame({"item_id": [6], "title": ["item brand-new"], "categories": ["Root|zzz"], "category": ["zzz"],
                        "brand": ["x"], "price": [np.nan]})
    f = enc.transform(new)
    assert (f.category[0], f.brand[0], f.path[0], f.price[0]) == (0, enc.vocab_["brand"]["x"], 0, 0)
    assert f.tokens[0, 0] == hash_token("item", 64) == 12  # crc32: stable across processes
    enc.save(tmp_path)
    again = ItemFeatureEncoder.load(tmp_path).transform(new)
    for field in ("category", "brand", "path", "price", "tokens"):
        assert np.array_equal(getattr(f, field), getattr(again, field))


def test_errors():
    with pytest.raises(RuntimeError, match="fit"):
        TwoTowerChannel().retrieve(batch_of([[0]]), 3)
    with pytest.raises(ValueError, match="loss"):
        TwoTowerChannel(loss="softmaxx", **SMALL).fit(tiny_fit_data())
    with pytest.raises(ValueError, match="index"):
        IndexConfig(kind="annoy")
    with pytest.raises(ValueError, match="divisible"):
        TwoTowerModel(ItemTowerConfig(n_items=2, d_model=10), UserTowerConfig(d_model=10, n_heads=3))
    with pytest.raises(ValueError, match="d_model"):
        TwoTowerModel(ItemTowerConfig(n_items=2, d_model=8), UserTowerConfig(d_model=16))


# ---- trained on synthetic data (one fit shared by the tests below) ------------------------------
@pytest.fixture(scope="module")
def synthetic():
    ds = synthesize(n_users=500, n_items=150, n_categories=6, n_brands=12, mean_length=10, seed=3)
    split = leave_one_out(ds.interactions)
    data = fit_data(ds, split, "test", seed=0)
    channel = TwoTowerChannel(loss="sampled", n_negatives=64, max_epochs=8, patience=3, lr=3e-3, **SMALL).fit(data)
    return ds, split, data, channel


def _recall_at_10(channel, split, stage="valid"):
    evalset = build_eval_set(split, stage, 50)
    topk, _ = run_topk(channel_topk_fn(channel), evalset, 10)
    return float(M.recall_at(M.target_ranks(topk, evalset.targets), 10).mean())


def test_training_beats_random_and_popularity(synthetic):
    ds, split, data, channel = synthetic
    report = channel.fit_report_
    assert report["early_stopping"] and 1 <= report["best_epoch"] <= 8
    assert report["epochs"][0]["loss"] > report["epochs"][report["best_epoch"] - 1]["loss"]
    ours = _recall_at_10(channel, split)  # validation targets, history = valid_history (as trained)
    assert ours == pytest.approx(report["best"]["R@10"], abs=0.01)  # the harness agrees with training (up to ties)
    popularity = PopularityChannel(half_life_days=None).fit(fit_data(ds, split, "valid", 0))
    random_recall = 10 / ds.n_items
    assert ours > 3 * random_recall
    assert ours > _recall_at_10(popularity, split) + 0.05


def test_full_softmax_option_trains(synthetic):
    ds, split, data, _ = synthetic
    ch = TwoTowerChannel(loss="full", max_epochs=2, patience=2, lr=3e-3, **SMALL).fit(data)
    assert ch.fit_report_["best"]["R@10"] > 3 * 10 / ds.n_items


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_save_load_round_trip(synthetic, tmp_path, kind):
    _, split, data, trained = synthetic
    trained.save(tmp_path / "trained")
    channel = TwoTowerChannel.load(tmp_path / "trained")
    probe = build_eval_set(split, "test", 50).batch.take(slice(0, 64))
    # against the model still in memory: weights, item vectors and answers are restored exactly
    np.testing.assert_allclose(channel.user_vectors(probe), trained.user_vectors(probe), rtol=1e-6, atol=1e-6)
    ids = np.arange(data.n_items)
    np.testing.assert_allclose(channel.item_vectors(ids), trained.item_vectors(ids), rtol=1e-6, atol=1e-6)
    assert np.array_equal(channel.retrieve(probe, 20).items, trained.retrieve(probe, 20).items)
    channel.configure(index=kind, nlist=4, nprobe=2)
    channel.index_ = ItemIndex.build(channel.item_vectors(np.arange(data.n_items)), channel.config.ann)
    batch = build_eval_set(split, "test", 50).batch.take(slice(0, 64))
    before = channel.retrieve(batch, 20)
    channel.save(tmp_path / "ch")
    loaded = TwoTowerChannel.load(tmp_path / "ch")
    after = loaded.retrieve(batch, 20)
    assert np.array_equal(before.items, after.items) and np.array_equal(before.scores, after.scores)
    assert loaded.fit_report_ == trained.fit_report_ and loaded.index_.cfg.kind == kind
    assert (after.items != PAD).all()
    seen = (after.items[:, :, None] == batch.history[:, None, :]).any(-1)
    assert not seen.any()  # seen items never come back
    if kind == "flat":  # exact search = the dense scores of the towers
        dense = loaded.user_vectors(batch) @ loaded.item_vectors(np.arange(data.n_items)).T
        assert np.allclose(after.scores, np.take_along_axis(dense, after.items, 1), atol=1e-4)


def test_new_item_vector_and_retrieval(synthetic, tmp_path):
    ds, split, data, trained = synthetic
    trained.save(tmp_path / "ch")
    channel = TwoTowerChannel.load(tmp_path / "ch")  # a copy, so the shared fixture stays as trained
    n = data.n_items
    new = ds.items.iloc[[7, 8]].assign(item_id=[n, n + 1])  # content of known items, new ids
    expected = channel.item_vectors(new)
    with torch.no_grad():
        tower = channel.model_.item_tower(item_inputs(channel.encoder_.transform(new), np.array([n, n + 1])))
    assert np.allclose(expected, tower.numpy(), atol=1e-6)
    unknown = channel.model_.item_tower.id_emb.weight[channel.n_trained_]
    with torch.no_grad():  # a new id uses the unknown row: its vector differs from the known item's by id rows
        diff = channel.item_vectors(np.array([7])) - expected[:1]
        assert np.allclose(diff, (channel.model_.item_tower.id_emb.weight[7] - unknown).numpy(), atol=1e-5)
    added = channel.add_items(new)
    assert np.allclose(added, expected) and len(channel.index_) == n + 2
    batch = RequestBatch.from_sequences([0], [np.array([1, 2, 3])])
    user = channel.user_vectors(batch)[0]
    exact = channel.item_vectors(np.arange(n)) @ user
    exact = np.concatenate([exact, added @ user])  # the new items are scored like any other
    exact[[1, 2, 3]] = -np.inf
    got = channel.retrieve(batch, 10)
    assert got.items[0].tolist() == np.argsort(-exact, kind="stable")[:10].tolist()
    full = channel.retrieve(batch, n + 2)
    pos = int(np.flatnonzero(full.items[0] == n)[0])
    assert full.scores[0, pos] == pytest.approx(float(user @ added[0]), rel=1e-4, abs=1e-4)
    # a new item inside a history is encoded from its content vector
    assert channel.retrieve(RequestBatch.from_sequences([0], [np.array([1, n])]), 5).items.shape == (1, 5)
    with pytest.raises(ValueError, match="item_id"):
        channel.add_items(new)  # ids n, n+1 are taken now
    with pytest.raises(ValueError, match="add_items"):
        channel.item_vectors(np.array([n + 5]))


def test_registry_builds_two_tower():
    ch = build_channel(ChannelConfig(name="tt", kind="two_tower", params={"d_model": 16, "loss": "sampled"}))
    assert isinstance(ch, TwoTowerChannel) and ch.name == "tt" and ch.d_model == 16


def test_gpu_index_path_is_taken_only_when_a_gpu_is_present(monkeypatch, tmp_path):
    import faiss

    vectors = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    assert not ItemIndex.build(vectors, IndexConfig(kind="flat")).on_gpu or faiss.get_num_gpus() > 0
    moved = []
    monkeypatch.setattr(faiss, "StandardGpuResources", lambda: "resources", raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", lambda res, dev, index: moved.append(res) or index, raising=False)
    monkeypatch.setattr(faiss, "index_gpu_to_cpu", lambda index: moved.append("back") or index, raising=False)
    gpu = ItemIndex.build(vectors, IndexConfig(kind="ivf", nlist=4, nprobe=4))
    assert gpu.on_gpu and moved == ["resources"]
    gpu.save(tmp_path / "i.faiss")  # written in CPU form
    assert moved == ["resources", "back"]
    assert not ItemIndex.build(vectors, IndexConfig(kind="hnsw")).on_gpu  # faiss has no GPU HNSW
    assert not ItemIndex.build(vectors, IndexConfig(kind="flat", use_gpu=False)).on_gpu
    exact = ItemIndex.build(vectors, IndexConfig(kind="flat", use_gpu=False)).search(vectors[:3], 5)[1]
    assert np.array_equal(gpu.search(vectors[:3], 5)[1][:, 0], exact[:, 0])



@pytest.mark.parametrize("kind,min_recall", [("ivf", 0.8), ("hnsw", 0.95)])
def test_approximate_index_scores_are_inner_products_with_varying_norms(kind, min_recall, tmp_path):
    """IVF / HNSW over item vectors whose norms vary a lot (popular items have long vectors):
    scores are the inner products, recall against exact search stays high, save/load keeps it."""
    rng = np.random.default_rng(0)
    vectors = (rng.normal(size=(2000, 16)) * rng.lognormal(0, 0.7, size=(2000, 1))).astype(np.float32)
    queries = rng.normal(size=(50, 16)).astype(np.float32)
    cfg = IndexConfig(kind=kind, nlist=16, nprobe=8, ef_search=128, use_gpu=False)
    index = ItemIndex.build(vectors, cfg)
    scores, items = index.search(queries, 20)
    np.testing.assert_allclose(scores, np.einsum("bd,bkd->bk", queries, vectors[items]), rtol=1e-4, atol=1e-3)
    exact = np.argsort(-queries @ vectors.T, axis=1)[:, :20]
    recall = np.mean([len(np.intersect1d(a, e)) / 20 for a, e in zip(items, exact)])
    assert recall >= min_recall
    index.save(tmp_path / "i.faiss")
    _, again = ItemIndex.load(tmp_path / "i.faiss", cfg).search(queries, 20)
    np.testing.assert_array_equal(again, items)


def test_catalog_without_content_trains_on_ids_alone(tmp_path):
    """No category/brand/price/text anywhere: content features are switched off (a shared
    'unknown' vector would only blur the ids), the fit report says so, save/load keeps it."""
    from tests.helpers import tiny_fit_data

    import dataclasses

    data = tiny_fit_data()
    data = dataclasses.replace(data, items=data.items[["item_id"]].copy())
    ch = TwoTowerChannel(d_model=16, n_layers=1, n_heads=1, d_ff=32, max_len=10, epochs=1, max_epochs=1,
                         batch_size=64, num_threads=1, seed=0, progress=False).fit(data)
    assert ch.use_content is False and "no item content" in ch.fit_report_["content"]
    ch.save(tmp_path / "c")
    assert TwoTowerChannel.load(tmp_path / "c").use_content is False


def test_seen_items_older_than_the_window_are_never_returned(synthetic):
    from tests.helpers import check_long_history_masked

    ds, _, _, channel = synthetic
    check_long_history_masked(channel, ds.n_items, window=4, k=15)
