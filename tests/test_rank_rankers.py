"""The learned rankers through the workflow: train a run, load it back, same scores; errors."""
import json

import numpy as np
import pytest

from pipeline.config import parse_config
from pipeline.data import leave_one_out, synthesize
from pipeline.evaluation.harness import build_eval_set
from pipeline.workflow import fit_data, load_run, ranking_data, train
from rankers.lgbm import LightGBMRanker
from rankers.mtgr_ranker import MTGRRanker
from tests.helpers import batch_of, tiny_fit_data

SMALL = {"n_users": 300, "n_items": 150, "seed": 5}
RANKERS = {
    "lgbm": {"n_estimators": 30, "num_leaves": 7, "min_child_samples": 5, "holdout": 0.2},
    "mtgr": {"d_model": 16, "n_layers": 1, "max_epochs": 2, "batch_size": 64, "holdout": 0.2, "num_threads": 1},
}


def _config(kind, tmp_path, **params):
    return parse_config({
        "data": {"source": "synthetic", "synthetic": SMALL, "max_history": 20},
        "channels": [{"name": "popularity", "kind": "popularity", "quota": 30},
                     {"name": "item2item", "kind": "item2item", "quota": 40}],
        "pool": {"budget": 60},
        "ranker": {"kind": kind, "params": {**RANKERS[kind], **params}},
        "run": {"root": str(tmp_path), "name": kind},
    })


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rank")
    return {kind: train(_config(kind, tmp), stage="test", run_dir=tmp / kind) for kind in RANKERS}


@pytest.mark.parametrize("kind", sorted(RANKERS))
def test_trained_run_scores_pools_and_reloads_identically(runs, kind):
    path = runs[kind]
    manifest = json.loads((path / "manifest.json").read_text())
    entry = manifest["ranker"]
    assert entry["kind"] == kind and entry["train_groups"] > 0 and entry["holdout_groups"] > 0
    assert entry["folds"][0]["fold"] == "valid" and 0 < entry["folds"][0]["pool_recall"] <= 1
    files = {p.name for p in (path / "ranker").iterdir()}
    assert ("model.txt" if kind == "lgbm" else "model.pt") in files and "features" in files
    run = load_run(path)
    assert type(run.cascade.ranker).__name__ == {"lgbm": "LightGBMRanker", "mtgr": "MTGRRanker"}[kind]
    ev = build_eval_set(run.split, "test", 20)
    batch = ev.batch.take(np.arange(50))
    res = run.cascade.run(batch, 10)
    scores = run.cascade.ranker.score(batch, res.pools)
    assert [len(s) for s in scores] == [len(p) for p in res.pools]
    assert all(s.dtype == np.float32 and np.isfinite(s).all() for s in scores)
    again = load_run(path).cascade.ranker.score(batch, res.pools)
    for a, b in zip(scores, again):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert all(len(f) == 10 for f in res.final)


def test_lgbm_model_is_a_text_file(runs):
    text = (runs["lgbm"] / "ranker" / "model.txt").read_text()
    assert text.startswith("tree") and "lambdarank" in text


def test_mtgr_weights_load_with_weights_only(runs):
    import torch

    state = torch.load(runs["mtgr"] / "ranker" / "model.pt", weights_only=True)
    assert "item.weight" in state and "blocks.0.f1.weight" in state


def test_rankers_beat_the_pool_order_on_synthetic_holdout(tmp_path):
    """The labelled data carries signal: LightGBM's holdout NDCG@10 beats the fused pool order."""
    cfg = _config("lgbm", tmp_path)
    ds = synthesize(**SMALL)
    split = leave_one_out(ds.interactions)
    ranker = LightGBMRanker(**RANKERS["lgbm"])
    labelled = ranking_data(cfg, ds, split, "test", 1, ranker.feature_config)
    train_part, hold = labelled.split_holdout(0.3, 0)
    ranker.fit(train_part, hold)
    pos_col = hold.names.index("pool_log_pos")
    pred = ranker.booster_.predict(hold.features)

    def ndcg(scores):
        out = []
        for g in range(len(hold)):
            s = scores[hold.offsets[g]:hold.offsets[g + 1]]
            r = int((s > s[hold.positive[g]]).sum())
            out.append(1 / np.log2(r + 2) if r < 10 else 0.0)
        return np.mean(out)

    assert ndcg(pred) > ndcg(-hold.features[:, pos_col])


@pytest.mark.parametrize("cls", [LightGBMRanker, MTGRRanker])
def test_score_before_fit_or_bind_raises(cls):
    pools = []
    with pytest.raises(RuntimeError, match="fit|bind"):
        cls().score(batch_of([[0]]), pools)


def test_mtgr_fit_before_bind_raises():
    from rankers.training_data import RankingData

    empty = RankingData(("a",), ("x",), np.zeros((0, 1), np.float32), np.zeros(0, np.int64), np.zeros(1, np.int64),
                        *(np.zeros(0, np.int64) for _ in range(2)), np.zeros((0, 1), np.int64), np.zeros((0, 1), np.int64),
                        *(np.zeros(0, np.int64) for _ in range(3)))
    with pytest.raises(RuntimeError, match="bind"):
        MTGRRanker().fit(empty, empty)


def test_score_with_other_channels_than_training_raises(runs):
    run = load_run(runs["lgbm"])
    ranker = run.cascade.ranker
    ranker.bind(fit_data(run.dataset, run.split, "test", 0), ("popularity",))  # a different channel set
    ev = build_eval_set(run.split, "test", 20)
    batch = ev.batch.take(np.arange(3))
    with pytest.raises(ValueError, match="differ from training"):
        ranker.score(batch, run.cascade.run(batch, 5).pools)


def test_rankers_accept_any_channel_set(tmp_path):
    """A single-channel pool trains and scores too (the feature columns follow the channels)."""
    cfg = parse_config({**_config("lgbm", tmp_path).model_dump(mode="json"),
                        "channels": [{"name": "only_i2i", "kind": "item2item", "quota": 40}]})
    run = load_run(train(cfg, stage="test", run_dir=tmp_path / "one"))
    assert any(n.startswith("ch_only_i2i_") for n in run.manifest["ranker"]["features"])
    ev = build_eval_set(run.split, "test", 20)
    assert run.cascade.topk(ev.batch.take(np.arange(20)), 5).shape == (20, 5)


def test_tiny_fit_data_helper_still_works_with_features():
    # guards the helper the feature tests rely on
    assert tiny_fit_data().items["category"].tolist()[:2] == ["a", "a"]


def test_ranking_data_round_trip_holdout_and_subsample(tmp_path):
    cfg = _config("lgbm", tmp_path)
    ds = synthesize(**SMALL)
    split = leave_one_out(ds.interactions)
    data = ranking_data(cfg, ds, split, "test", 2, LightGBMRanker().feature_config)
    assert [s["fold"] for s in data.stats] == ["valid", "back1-test"] and set(data.fold.tolist()) == {0, 1}
    labels = data.labels()
    assert labels.sum() == len(data) and (labels[data.offsets[:-1] + data.positive] == 1).all()
    data.save(tmp_path / "d.npz")
    back = type(data).load(tmp_path / "d.npz")
    np.testing.assert_array_equal(back.features, data.features)
    assert back.names == data.names and back.stats == data.stats and back.channels == data.channels
    bad = {a: getattr(data, a) for a in type(data)._ARRAYS} | {"features": np.array([{"x": 1}], dtype=object)}
    np.savez(tmp_path / "pickled.npz", meta=np.array(json.dumps({"channels": [], "names": [], "stats": []})), **bad)
    with pytest.raises(ValueError, match="allow_pickle"):
        type(data).load(tmp_path / "pickled.npz")  # object arrays (pickle) are refused
    train_part, hold = data.split_holdout(0.25, seed=0)
    assert (hold.fold == 0).all() and len(hold) == int(round(0.25 * (data.fold == 0).sum()))
    assert not set(hold.users.tolist()) & set(train_part.users.tolist())  # no fold of a held user is trained on
    dropped = np.isin(data.users, hold.users) & (data.fold == 1)  # the held users' earlier labels
    assert dropped.any() and len(train_part) + len(hold) + int(dropped.sum()) == len(data)
    sub = LightGBMRanker(max_negatives=5)._subsample(train_part)
    assert (sub.sizes <= 6).all() and (sub.labels()[sub.offsets[:-1] + sub.positive] == 1).all()
    assert sub.labels().sum() == len(train_part)


@pytest.mark.parametrize("kind", sorted(RANKERS))
def test_saved_ranker_scores_like_the_trained_one(runs, tmp_path, kind):
    """Save/load against the model still in memory (a load compared with another load would not
    notice a save that keeps only part of the model)."""
    from pipeline.registry import RANKER_KINDS, build_stage
    from pipeline.workflow import fit_ranker, make_split, prepare_data

    cfg = _config(kind, tmp_path)
    ds = prepare_data(cfg.data)
    split = make_split(ds, cfg.data)
    ranker = build_stage(cfg.ranker, RANKER_KINDS, "ranker")
    fit_ranker(ranker, cfg, ds, split, "test", fit_data(ds, split, "test", cfg.run.seed))
    ranker.save(tmp_path / "saved")
    loaded = type(ranker).load(tmp_path / "saved")
    run = load_run(runs[kind])
    batch = build_eval_set(run.split, "test", 20).batch.take(np.arange(40))
    pools = run.cascade.run(batch, 10).pools
    trained, again = ranker.score(batch, pools), loaded.score(batch, pools)
    for a, b in zip(trained, again):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert np.std(np.concatenate(trained)) > 1e-4  # the scores depend on the model, not a constant


def test_ranking_labels_are_float32_ones_at_the_targets():
    from rankers.training_data import RankingData

    data = RankingData(("a",), ("x",), np.zeros((5, 1), np.float32), np.arange(5, dtype=np.int64),
                       np.array([0, 2, 5], np.int64), np.array([1, 0], np.int64), np.zeros(2, np.int64),
                       np.zeros((2, 1), np.int64), np.zeros((2, 1), np.int64), *(np.zeros(2, np.int64) for _ in range(3)))
    y = data.labels()
    assert y.dtype == np.float32 and y.tolist() == [0.0, 1.0, 1.0, 0.0, 0.0]


@pytest.mark.parametrize("kind", sorted(RANKERS))
def test_an_item_added_after_training_is_scored_like_an_unseen_copy(runs, kind):
    """A live item (POST /items) with the content of a trained one: the ranker codes its attributes
    as that item's and reads its interaction features as 'never seen'; known items score as before."""
    from pipeline.core.types import CandidateSet

    run = load_run(runs[kind])
    ranker, n = run.cascade.ranker, run.dataset.n_items
    ev = build_eval_set(run.split, "test", 20)
    batch = ev.batch.take(np.arange(4))
    channels = ranker.features_.channels

    def pool(items):
        m, c = len(items), len(channels)
        return CandidateSet(np.array(items, np.int64), np.array([1.0, 0.5, 0.2][:m], np.float32), channels,
                            np.ones((m, c), bool), np.tile(np.arange(m, dtype=np.int32)[:, None], (1, c)),
                            np.full((m, c), 0.5, np.float32))

    pools = [pool([3, 7]) for _ in range(4)]
    before = ranker.score(batch, pools)
    ranker.add_items(run.dataset.items.iloc[[3]].assign(item_id=n))
    grown = [pool([3, 7, n]) for _ in range(4)]
    after = ranker.score(batch, grown)
    assert all(np.isfinite(s).all() and len(s) == 3 for s in after)
    if kind == "lgbm":  # a pointwise model: the other candidates' scores do not move
        for a, b in zip(before, after):
            np.testing.assert_allclose(a, b[:2], rtol=1e-6)
    block = ranker.features_.transform(batch, grown)
    names = list(block.names)
    row_copy, row_new = block.values[0], block.values[2]
    for name in ("category_code", "price_bucket", "log_price", "u_brand_count", "u_category_count"):
        assert row_new[names.index(name)] == row_copy[names.index(name)], name
    assert row_new[names.index("pop_all")] == 0 and row_new[names.index("item_age_days")] == -1
