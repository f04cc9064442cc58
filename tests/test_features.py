"""Cross features: values on a hand-made case, point-in-time correctness, provenance by name."""
import numpy as np
import pandas as pd
import pytest

from pipeline.data import leave_one_out, synthesize
from pipeline.pool import PoolSpec, merge_pool
from pipeline.core.types import CandidateSet, Retrieved
from pipeline.workflow import fit_data
from pipeline.evaluation.harness import build_eval_set
from rankers.features import FAR_DAYS, CrossFeatures, FeatureConfig
from tests.helpers import DAY, batch_of, tiny_fit_data


def _pool(items, channels=("a", "b"), found=None, rank=None, score=None):
    items = np.asarray(items, np.int64)
    m, c = len(items), len(channels)
    found = np.ones((m, c), bool) if found is None else np.asarray(found, bool)
    rank = np.where(found, np.arange(m)[:, None], -1).astype(np.int32) if rank is None else np.asarray(rank, np.int32)
    score = np.where(found, 10.0 - np.arange(m)[:, None], np.nan).astype(np.float32) if score is None else np.asarray(score, np.float32)
    return CandidateSet(items, np.linspace(1, 0, m).astype(np.float32), tuple(channels), found, rank, score)


def _col(block, name):
    return block.values[:, block.names.index(name)]


def test_user_item_counts_and_recency():
    data = tiny_fit_data()  # categories: 0,1 -> a; 2,3 -> b; 4,5 -> c
    feats = CrossFeatures(("a", "b"), FeatureConfig(windows_days=(7,), attributes=("category",))).fit(data)
    batch = batch_of([[0, 2, 1]], now=[10 * DAY])  # history times: day 1, 2, 3
    block = feats.transform(batch, [_pool([3, 4, 5])])  # b, c, c
    # candidate 3 (category b): one history item of b (item 2), 1 item ago, at day 2
    np.testing.assert_allclose(_col(block, "u_category_count"), np.log1p([1, 0, 0]), rtol=1e-6)
    np.testing.assert_allclose(_col(block, "u_category_share"), [1 / 3, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(_col(block, "u_category_items_ago"), [1, 50, 50])
    np.testing.assert_allclose(_col(block, "u_category_days_ago"), [np.log1p(8), FAR_DAYS, FAR_DAYS], rtol=1e-6)
    np.testing.assert_allclose(_col(block, "req_log_len"), np.log1p(3), rtol=1e-6)
    np.testing.assert_allclose(_col(block, "req_days_since_last"), np.log1p(7), rtol=1e-6)
    assert block.values.shape == (3, len(feats.names)) and block.values.dtype == np.float32
    assert block.offsets.tolist() == [0, 3]


def test_a_rows_features_do_not_depend_on_its_batch_neighbours():
    """Found by batch inference: 'items ago' of a value absent from the history was the batch's
    padded width, so a user's scores changed with the longest history batched beside it."""
    data = tiny_fit_data()
    feats = CrossFeatures(("a", "b"), FeatureConfig(windows_days=(7,), attributes=("category",))).fit(data)
    pool = _pool([3, 4, 5])
    alone = feats.transform(batch_of([[0, 2]], now=[10 * DAY]), [pool]).values
    beside = feats.transform(batch_of([[0, 2], [0, 1, 2, 3, 0, 1, 2]], now=[10 * DAY] * 2), [pool, pool]).values[:3]
    np.testing.assert_array_equal(alone, beside)
    np.testing.assert_allclose(_col(feats.transform(batch_of([[0, 2]], now=[10 * DAY]), [pool]), "u_category_items_ago"), [0, 50, 50])


def test_item_popularity_counts_only_interactions_strictly_before_now():
    data = tiny_fit_data()  # item 5: day 40 and day 41; item 0: days 1, 1, 41
    feats = CrossFeatures(("a", "b"), FeatureConfig(windows_days=(1, 30))).fit(data)
    batch = batch_of([[2], [2], [2]], now=[41 * DAY, 41 * DAY + 1, 100 * DAY])
    block = feats.transform(batch, [_pool([5, 0]), _pool([5, 0]), _pool([5, 0])])
    # at day 41 exactly the day-41 rows are not yet in the past
    np.testing.assert_allclose(_col(block, "pop_all"), np.log1p([1, 2, 2, 3, 2, 3]), rtol=1e-6)
    np.testing.assert_allclose(_col(block, "pop_1d"), np.log1p([1, 0, 1, 1, 0, 0]), rtol=1e-6)
    np.testing.assert_allclose(_col(block, "pop_30d"), np.log1p([1, 0, 2, 1, 0, 0]), rtol=1e-6)
    age = _col(block, "item_age_days")
    np.testing.assert_allclose(age[[0, 1]], np.log1p([1, 40]), rtol=1e-6)
    assert _col(block, "item_last_days")[2] == pytest.approx(np.log1p(1 / DAY), rel=1e-4)


def test_never_seen_item_has_no_age():
    data = tiny_fit_data()
    feats = CrossFeatures(("a",)).fit(data)
    block = feats.transform(batch_of([[0]], now=[2 * DAY]), [_pool([5], channels=("a",))])  # item 5 first seen day 40
    assert _col(block, "item_age_days")[0] == -1.0 and _col(block, "pop_all")[0] == 0.0


def test_features_ignore_the_future_on_real_splits():
    """Rows at or after a request's time never change its features (point-in-time)."""
    ds = synthesize(n_users=300, n_items=120, seed=3)
    split = leave_one_out(ds.interactions)
    data = fit_data(ds, split, "test", seed=0)
    ev = build_eval_set(split, "test", 50)
    batch = ev.batch.take(np.arange(40))
    pools = [_pool(np.arange(0, 120, 7), channels=("x",)) for _ in range(40)]
    full = CrossFeatures(("x",)).fit(data).transform(batch, pools)
    cut = int(batch.now.min())
    past = data.train[data.train["timestamp"] < cut]
    extra = data.train[data.train["timestamp"] >= cut].assign(item_id=0)  # future rows moved to item 0
    shifted = type(data)(**{**data.__dict__, "train": pd.concat([past, extra], ignore_index=True)})
    only_past = type(data)(**{**data.__dict__, "train": past})
    rows = batch.now[full.rows] == cut  # requests at the earliest time see nothing of the rest
    a = CrossFeatures(("x",)).fit(shifted).transform(batch, pools).values[rows]
    b = CrossFeatures(("x",)).fit(only_past).transform(batch, pools).values[rows]
    np.testing.assert_array_equal(full.values[rows], a)
    np.testing.assert_array_equal(full.values[rows], b)


def test_provenance_is_mapped_by_channel_name():
    data = tiny_fit_data()
    feats = CrossFeatures(("a", "b")).fit(data)
    batch = batch_of([[0]], now=[50 * DAY])
    p1 = _pool([1, 2], channels=("a", "b"), found=[[1, 0], [1, 1]], rank=[[0, -1], [1, 0]], score=[[4, np.nan], [2, 8]])
    p2 = _pool([1, 2], channels=("b", "a"), found=[[0, 1], [1, 1]], rank=[[-1, 0], [0, 1]], score=[[np.nan, 4], [8, 2]])
    v1 = feats.transform(batch, [p1]).values
    v2 = feats.transform(batch, [p2]).values
    np.testing.assert_array_equal(v1, v2)
    b1 = feats.transform(batch, [p1])
    np.testing.assert_array_equal(_col(b1, "ch_b_found"), [0, 1])
    np.testing.assert_allclose(_col(b1, "ch_a_rel_score"), [1.0, 0.5])
    np.testing.assert_allclose(_col(b1, "ch_b_score"), [0.0, np.log1p(8)], rtol=1e-6)
    np.testing.assert_array_equal(_col(b1, "n_channels"), [1, 2])


def test_unknown_channel_is_ignored_and_missing_channel_is_not_found():
    data = tiny_fit_data()
    feats = CrossFeatures(("a", "gone")).fit(data)
    block = feats.transform(batch_of([[0]], now=[50 * DAY]), [_pool([1, 2], channels=("a", "new"))])
    assert (_col(block, "ch_gone_found") == 0).all() and (_col(block, "ch_gone_log_rank") == -1).all()


def test_features_on_merged_pools_and_empty_pools():
    data = tiny_fit_data()
    batch = batch_of([[0, 1], []], now=[50 * DAY, 50 * DAY])
    out = {"a": Retrieved(np.array([[2, 3], [0, 1]]), np.array([[2.0, 1.0], [2.0, 1.0]], np.float32))}
    pools = merge_pool(batch, out, PoolSpec({"a": 2}), ("a",))
    block = CrossFeatures(("a",)).fit(data).transform(batch, pools + [_pool([], channels=("a",))])
    assert block.offsets.tolist() == [0, 2, 4, 4]
    assert np.isfinite(block.values).all()
    assert [len(s) for s in block.split(block.items)] == [2, 2, 0]


def test_transform_before_fit_raises():
    with pytest.raises(RuntimeError, match="fit"):
        CrossFeatures(("a",)).transform(batch_of([[0]]), [_pool([1], channels=("a",))])


def test_save_load_round_trip(tmp_path):
    data = tiny_fit_data()
    feats = CrossFeatures(("a", "b"), FeatureConfig(windows_days=(3, 9))).fit(data)
    feats.save(tmp_path / "f")
    back = CrossFeatures.load(tmp_path / "f")
    batch = batch_of([[0, 2]], now=[45 * DAY])
    np.testing.assert_array_equal(feats.transform(batch, [_pool([1, 5])]).values, back.transform(batch, [_pool([1, 5])]).values)
    assert back.names == feats.names


def test_transform_handles_a_full_beauty_size_batch():
    """A batch of 1024 requests x 300 candidates (Beauty: 22 such batches): one row per pair."""
    ds = synthesize(n_users=1100, n_items=1000, seed=0)
    split = leave_one_out(ds.interactions)
    feats = CrossFeatures(("x", "y")).fit(fit_data(ds, split, "test", 0))
    batch = build_eval_set(split, "test", 50).batch.take(np.arange(1024))
    rng = np.random.default_rng(0)
    pools = [_pool(np.sort(rng.choice(1000, 300, replace=False)), channels=("x", "y")) for _ in range(1024)]
    block = feats.transform(batch, pools)  # a full-size batch (its speed is measured in bench/, not here)
    assert block.values.shape == (1024 * 300, len(feats.names))
