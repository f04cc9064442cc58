"""No evaluated target, and nothing after it, reaches fitting or the features of a request."""
import numpy as np
import pandas as pd
import pytest

from channels.popularity import PopularityChannel
from pipeline.config import parse_config
from pipeline.data import leave_one_out, synthesize, temporal_split
from pipeline.evaluation.harness import build_eval_set
from pipeline.workflow import fit_data, train
from tests.plugin_channels import RecordingChannel

KEY = ["user_id", "item_id", "timestamp"]


def _rows(frame):
    return set(map(tuple, frame[KEY].to_numpy().tolist()))


@pytest.mark.parametrize("make_split", [leave_one_out, temporal_split])
@pytest.mark.parametrize("stage", ["valid", "test"])
def test_fit_data_holds_no_target(make_split, stage):
    ds = synthesize(n_users=400, n_items=150, seed=1)
    split = make_split(ds.interactions)
    data = fit_data(ds, split, stage, seed=0)
    forbidden = _rows(split.targets("test")) | (_rows(split.targets("valid")) if stage == "valid" else set())
    assert forbidden and not (_rows(data.train) & forbidden)
    if stage == "valid":
        assert data.valid is None and data.valid_history is None
    else:
        assert not (_rows(data.valid_history) & (_rows(split.targets("valid")) | forbidden))
    # every history row of a user is at or before the user's target
    ev = build_eval_set(split, stage, max_history=200)
    last = np.where(ev.batch.lengths > 0, ev.batch.history_times[:, -1], np.iinfo(np.int64).min)
    assert (last <= ev.target_times).all()
    for r in range(len(ev)):
        assert ev.targets[r] not in ev.batch.history_of(r) or make_split is temporal_split


def test_training_through_workflow_never_sees_test_rows(tmp_path):
    RecordingChannel.seen_rows.clear()
    cfg = parse_config({
        "data": {"source": "synthetic", "synthetic": {"n_users": 200, "n_items": 100, "seed": 2}},
        "channels": [{"name": "rec", "kind": "plugin", "class_path": "tests.plugin_channels:RecordingChannel"}],
    })
    train(cfg, stage="test", run_dir=tmp_path / "run")
    split = leave_one_out(synthesize(n_users=200, n_items=100, seed=2).interactions)
    seen = pd.concat(RecordingChannel.seen_rows)
    assert not (_rows(seen) & _rows(split.targets("test")))
    assert len(seen) == len(split.history("test"))


def test_popularity_features_are_point_in_time():
    ds = synthesize(n_users=300, n_items=100, seed=4)
    split = leave_one_out(ds.interactions)
    data = fit_data(ds, split, "test", seed=0)
    ch = PopularityChannel(half_life_days=None, bucket_days=7).fit(data)
    ev = build_eval_set(split, "test", max_history=50)
    rows = ch._rows(ev.batch)
    ts = data.train["timestamp"].to_numpy()
    items = data.train["item_id"].to_numpy()
    for r in np.random.default_rng(0).choice(len(ev), 20, replace=False):
        start = ch.t0_ + rows[r] * 7 * 86400
        assert start <= ev.target_times[r]
        expected = np.bincount(items[ts < start], minlength=ds.n_items)
        np.testing.assert_allclose(ch.state_[rows[r]], expected)


def test_audit_request_time_is_the_last_history_time():
    ds = synthesize(n_users=200, n_items=80, seed=5)
    split = leave_one_out(ds.interactions)
    target = build_eval_set(split, "test", max_history=50)
    last = build_eval_set(split, "test", max_history=50, request_time="last")
    assert (target.batch.now == target.target_times).all()
    has = last.batch.lengths > 0
    np.testing.assert_array_equal(last.batch.now[has], last.batch.history_times[has, -1])
    assert (last.batch.now <= target.batch.now).all() and (last.batch.now < target.batch.now).any()
    np.testing.assert_array_equal(last.batch.history, target.batch.history)
    with pytest.raises(ValueError, match="request_time must be 'target' or 'last', got 'future'"):
        build_eval_set(split, "test", max_history=50, request_time="future")
