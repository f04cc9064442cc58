"""Protocol B (SPEC section 9): same-timestamp rows in a seeded random order, and time-free
training and evaluation (request time = the user's last history time, in every stage)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.config import parse_config
from pipeline.data import assemble, leave_one_out, shuffle_ties, synthesize
from pipeline.evaluation.harness import build_eval_set

DAY = 86400


def _tied_dataset():
    """Two users with same-day rows listed in ascending id order, as the Amazon files do."""
    log = pd.DataFrame({
        "user": ["u0"] * 6 + ["u1"] * 5,
        "item": ["a", "b", "c", "d", "e", "f", "b", "c", "d", "g", "h"],
        "timestamp": [1, 2, 2, 2, 2, 3, 5, 5, 6, 7, 7],
    })
    items = pd.DataFrame({"item": list("abcdefgh"), "title": list("abcdefgh")})
    return assemble("tied", log, items, has_time=True, has_text=True)


def _rows(ds):
    inter = ds.interactions
    return list(zip(ds.user_ids[inter["user_id"]], inter["timestamp"], ds.item_ids[inter["item_id"]]))


def test_same_seed_same_order_and_split():
    a, b = shuffle_ties(_tied_dataset(), 1), shuffle_ties(_tied_dataset(), 1)
    assert _rows(a) == _rows(b)
    assert a.fingerprint() == b.fingerprint()
    sa, sb = leave_one_out(a.interactions), leave_one_out(b.interactions)
    pd.testing.assert_frame_equal(sa.test, sb.test)
    pd.testing.assert_frame_equal(sa.valid, sb.valid)


def test_only_tied_rows_move():
    base = _tied_dataset()
    orders = {tuple(r[2] for r in _rows(shuffle_ties(base, seed))) for seed in range(20)}
    assert len(orders) > 1  # the tied block is really shuffled
    for seed in range(20):
        rows = _rows(shuffle_ties(base, seed))
        assert [(u, t) for u, t, _ in rows] == [(u, t) for u, t, _ in _rows(base)]  # same users and times
        by_pos = {(u, t): i for u, t, i in rows}
        for user, time, item in _rows(base):
            if sum(1 for u, t, _ in _rows(base) if (u, t) == (user, time)) == 1:
                assert by_pos[(user, time)] == item  # a row with a unique timestamp keeps its item
        for user in ("u0", "u1"):  # each tied block holds the same items
            for time in {t for u, t, _ in rows if u == user}:
                got = sorted(i for u, t, i in rows if (u, t) == (user, time))
                want = sorted(i for u, t, i in _rows(base) if (u, t) == (user, time))
                assert got == want


def test_seq_follows_the_new_order_and_fingerprint_records_it():
    shuffled = shuffle_ties(_tied_dataset(), 3)
    seq = shuffled.interactions.groupby("user_id")["seq"].apply(list).tolist()
    assert seq == [list(range(6)), list(range(5))]
    assert shuffled.tie_order == "shuffled:3"
    assert shuffled.fingerprint() != _tied_dataset().fingerprint()


def test_no_op_on_data_without_ties(tmp_path):
    ds = synthesize(n_users=60, n_items=80, seed=2)  # strictly increasing times per user
    out = shuffle_ties(ds, 7)
    pd.testing.assert_frame_equal(out.interactions, ds.interactions)
    pd.testing.assert_frame_equal(out.items, ds.items)
    assert list(out.item_ids) == list(ds.item_ids)
    out.save(tmp_path / "d")  # the tie order survives a save/load
    from pipeline.data import Dataset

    assert Dataset.load(tmp_path / "d").tie_order == "shuffled:7"


def test_last_request_time_never_reads_the_target():
    ds = _tied_dataset()
    split = leave_one_out(ds.interactions)
    ev = build_eval_set(split, "test", 50, request_time="last")
    hist = split.history("test")
    last = hist.groupby("user_id")["timestamp"].max().to_numpy()
    np.testing.assert_array_equal(ev.batch.now, last)
    assert not np.array_equal(ev.batch.now, ev.target_times)


TIME_FREE = {
    "data": {"source": "synthetic", "synthetic": {"n_users": 150, "n_items": 120, "seed": 4}, "max_history": 20},
    "channels": [
        {"name": "popularity", "kind": "popularity", "quota": 30, "params": {"half_life_days": 30}},
        {"name": "item2item", "kind": "item2item", "quota": 40},
    ],
    "pool": {"budget": 60},
    "ranker": {"kind": "mtgr", "params": {"train_folds": 2, "d_model": 8, "n_layers": 1, "max_epochs": 1,
                                          "batch_size": 16, "num_threads": 1, "seed": 0}},
    "eval": {"stage": "test", "ks": [5, 10], "n_boot": 20, "request_time": "last"},
}


def _shift_test_targets(ds, days: int):
    """The same dataset with every test target row (each user's last row) later by `days`."""
    inter = ds.interactions.copy()
    last = inter.groupby("user_id")["seq"].transform("max").to_numpy() == inter["seq"].to_numpy()
    inter.loc[last, "timestamp"] += days * DAY
    out = type(ds)(ds.name, inter, ds.items, ds.user_ids, ds.item_ids, ds.has_time, ds.has_text)
    out.validate()
    return out


def _answers(run_path):
    from pipeline.workflow import load_run

    run = load_run(run_path)
    ev = build_eval_set(run.split, run.stage, run.config.data.max_history, request_time=run.config.eval.request_time)
    recs = run.cascade.recommend_batch(ev.batch, 10)
    return np.concatenate([r.items for r in recs]), np.concatenate([r.scores for r in recs])


def _untimed(value):
    """A JSON value without its wall-clock entries (keys holding 'seconds')."""
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if "seconds" not in k}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


def _artifacts(run_path):
    import json

    out = {}
    for sub in ("channels", "ranker"):
        for p in sorted((run_path / sub).rglob("*")):
            if p.is_file():
                out[str(p.relative_to(run_path))] = _untimed(json.loads(p.read_text())) if p.suffix == ".json" else p.read_bytes()
    return out


@pytest.mark.parametrize("request_time", ["last", "target"])
def test_evaluation_is_blind_to_target_times_under_last(tmp_path, request_time):
    from pipeline.workflow import train

    cfg = parse_config(TIME_FREE | {"eval": TIME_FREE["eval"] | {"request_time": request_time}})
    ds = synthesize(n_users=150, n_items=120, seed=4)
    a = train(cfg, run_dir=tmp_path / "a", dataset=ds)
    b = train(cfg, run_dir=tmp_path / "b", dataset=_shift_test_targets(ds, 90))
    assert _artifacts(a) == _artifacts(b) and _artifacts(a)  # no trained artifact sees a test target
    (items_a, scores_a), (items_b, scores_b) = _answers(a), _answers(b)
    same = np.array_equal(items_a, items_b) and np.array_equal(scores_a, scores_b)
    # 'last': bit-identical answers; 'target': the request time moves with the target, so the
    # popularity channel and the point-in-time features see another moment (the check can fail)
    assert same == (request_time == "last")


@pytest.mark.parametrize("request_time", ["last", "target"])
def test_ranker_label_folds_are_blind_to_label_times_under_last(request_time):
    """Fold 0 of the test stage labels the validation targets: shifting their times (their
    history unchanged) must leave the ranker's training data identical under 'last'."""
    from dataclasses import replace

    from pipeline.workflow import make_split, ranking_data
    from rankers.features import FeatureConfig

    cfg = parse_config(TIME_FREE | {"eval": TIME_FREE["eval"] | {"request_time": request_time}})
    ds = synthesize(n_users=150, n_items=120, seed=4)
    split = make_split(ds, cfg.data)
    shifted = split.valid.assign(timestamp=split.valid["timestamp"] + 30 * DAY)
    data = [ranking_data(cfg, ds, s, "test", 2, FeatureConfig()) for s in (split, replace(split, valid=shifted))]
    assert data[0].stats[0]["fold"] == "valid" and len(data[0]) > 0
    same = all(np.array_equal(getattr(data[0], k), getattr(data[1], k)) for k in ("features", "items", "now", "positive"))
    assert same == (request_time == "last")
    if request_time == "last":  # every fold request is timed at the user's last history event
        assert (data[0].now == data[0].history_times.max(axis=1)).all()
