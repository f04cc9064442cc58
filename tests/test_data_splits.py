"""Leave-one-out and temporal splits: exact contents on tiny frames and a leak test."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.data import Split, leave_one_out, synthesize, temporal_split


def _frame(rows: list[tuple[int, int, int]]) -> pd.DataFrame:
    """(user, item, timestamp) rows -> canonical frame with seq per user in the given order."""
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).astype(np.int64)
    frame["seq"] = frame.groupby("user_id").cumcount().astype(np.int64)
    return frame


def _triples(frame: pd.DataFrame) -> list[tuple[int, int, int]]:
    return [tuple(r) for r in frame[["user_id", "item_id", "timestamp"]].itertuples(index=False)]


def test_leave_one_out_on_hand_made_frame() -> None:
    frame = _frame([(0, 10, 1), (0, 11, 2), (0, 12, 3), (0, 13, 4), (1, 10, 5), (1, 14, 6), (2, 11, 1), (2, 12, 1), (2, 15, 2)])
    split = leave_one_out(frame.sample(frac=1.0, random_state=1))  # input order does not matter
    assert split.kind == "leave_one_out"
    assert _triples(split.train) == [(0, 10, 1), (0, 11, 2), (1, 10, 5), (1, 14, 6), (2, 11, 1)]
    assert _triples(split.valid) == [(0, 12, 3), (2, 12, 1)]  # tie at t=1: seq decides
    assert _triples(split.test) == [(0, 13, 4), (2, 15, 2)]
    assert split.history("valid") is split.train
    assert _triples(split.history("test")) == [(0, 10, 1), (0, 11, 2), (0, 12, 3), (1, 10, 5), (1, 14, 6), (2, 11, 1), (2, 12, 1)]
    assert list(split.train.columns) == ["user_id", "item_id", "timestamp", "seq"]
    assert split.targets("test") is split.test


def test_targets_rejects_unknown_stage() -> None:
    split = leave_one_out(_frame([(0, 1, 1), (0, 2, 2), (0, 3, 3)]))
    with pytest.raises(ValueError, match="unknown split stage 'train'"):
        split.targets("train")
    with pytest.raises(ValueError, match="unknown split stage 'tst'"):
        split.history("tst")


def test_temporal_split_on_hand_made_frame() -> None:
    rows = [(0, 1, 10), (0, 2, 20), (0, 3, 80), (0, 4, 85), (0, 5, 95), (0, 6, 99),
            (1, 1, 30), (1, 7, 90), (1, 8, 96),
            (2, 2, 82), (2, 3, 97),
            (3, 4, 93),
            (4, 9, 98)]
    split = temporal_split(_frame(rows), valid_quantile=0.5, test_quantile=0.75)
    assert split.kind == "temporal"
    assert split.cutoffs == (90, 96)  # sorted times 10..99: 'higher' quantiles at ranks 6 and 9
    assert _triples(split.history("valid")) == [(0, 1, 10), (0, 2, 20), (0, 3, 80), (0, 4, 85), (1, 1, 30), (2, 2, 82)]
    assert _triples(split.valid) == [(0, 5, 95), (1, 7, 90)]  # user 3 has no history before 90
    assert _triples(split.history("test")) == [
        (0, 1, 10), (0, 2, 20), (0, 3, 80), (0, 4, 85), (0, 5, 95), (1, 1, 30), (1, 7, 90), (2, 2, 82), (3, 4, 93)
    ]
    assert _triples(split.test) == [(0, 6, 99), (1, 8, 96), (2, 3, 97)]  # user 4 has no history before 96


def test_temporal_split_rejects_coinciding_cuts() -> None:
    frame = _frame([(0, i, 5) for i in range(10)])
    with pytest.raises(ValueError, match="quantiles coincide"):
        temporal_split(frame)
    with pytest.raises(ValueError, match="valid_quantile < test_quantile"):
        temporal_split(frame, 0.9, 0.8)


@pytest.fixture(scope="module")
def data_splits() -> dict[str, Split]:
    frame = synthesize(n_users=400, n_items=300, n_categories=6, n_brands=12, mean_length=10, seed=11).interactions
    return {"leave_one_out": leave_one_out(frame), "temporal": temporal_split(frame)}


@pytest.mark.parametrize("kind", ["leave_one_out", "temporal"])
@pytest.mark.parametrize("stage", ["valid", "test"])
def test_no_target_leaks_into_history(data_splits: dict[str, Split], kind: str, stage: str) -> None:
    split = data_splits[kind]
    history, targets = split.history(stage), split.targets(stage)
    assert len(targets) > 20
    assert not targets.duplicated("user_id").any()  # at most one target per user
    keys = ["user_id", "item_id", "timestamp"]
    assert history.merge(targets[keys], on=keys).empty  # no target row in its history
    latest = history.groupby("user_id")["timestamp"].max()
    target_time = targets.set_index("user_id")["timestamp"]
    assert (latest.reindex(target_time.index).to_numpy() <= target_time.to_numpy()).all()
    assert target_time.index.isin(latest.index).all()  # every target user has history
    order = np.lexsort((history["seq"], history["timestamp"], history["user_id"]))
    assert np.array_equal(order, np.arange(len(history)))  # canonical order


def test_leave_one_out_is_fast_and_partitions_rows() -> None:
    frame = synthesize(n_users=300, n_items=200, n_categories=6, n_brands=10, mean_length=10, seed=2).interactions
    split = leave_one_out(frame)
    total = pd.concat([split.train, split.valid, split.test])
    assert len(total) == len(frame)
    assert len(split.valid) == len(split.test) == frame["user_id"].nunique()
    assert split.train.groupby("user_id").size().min() >= 3


def test_temporal_split_cuts_are_observed_times_and_targets_are_first_rows() -> None:
    # 8 timestamps: a linear quantile would fall between two of them; 'higher' takes the later one
    rows = [(0, 1, 10), (0, 2, 20), (0, 3, 30), (0, 4, 41), (0, 5, 52), (0, 6, 63), (1, 7, 5), (1, 8, 74)]
    split = temporal_split(_frame(rows), valid_quantile=0.5, test_quantile=0.8)
    assert split.cutoffs == (41, 63)  # observed timestamps (sorted ranks 4 and 6), not 35.5 / 58.6
    assert _triples(split.valid) == [(0, 4, 41)]  # user 0 has 41 and 52 in the window: only the first
    assert _triples(split.test) == [(0, 6, 63), (1, 8, 74)]
    for part in (split.train, split.valid, split.test, split.history("test")):
        assert list(part.columns) == ["user_id", "item_id", "timestamp", "seq"]
        assert part.index.tolist() == list(range(len(part)))


def test_temporal_split_argument_errors() -> None:
    with pytest.raises(ValueError, match="at least one interaction"):
        temporal_split(_frame([]))
    for bad in ((0.0, 0.5), (0.5, 1.0), (0.6, 0.6)):
        with pytest.raises(ValueError, match="need 0 < valid_quantile < test_quantile < 1"):
            temporal_split(_frame([(0, 1, 1), (0, 2, 2), (0, 3, 3)]), *bad)
    three = temporal_split(_frame([(0, 1, 1), (0, 2, 2), (0, 3, 3)]), 0.3, 0.6)
    assert three.cutoffs == (2, 3) and _triples(three.valid) == [(0, 2, 2)] and _triples(three.test) == [(0, 3, 3)]


def test_temporal_split_window_ends_before_the_test_cut() -> None:
    # cuts at 90 and 96; user 2's first row at or after 90 is exactly at the test cut: a test
    # target, never a validation one
    rows = [(0, 1, 10), (0, 2, 20), (0, 3, 80), (0, 4, 85), (0, 5, 95), (0, 6, 99),
            (1, 1, 30), (1, 7, 90), (1, 8, 97), (2, 2, 82), (2, 3, 96), (3, 4, 93), (4, 9, 98)]
    split = temporal_split(_frame(rows), valid_quantile=0.5, test_quantile=0.75)
    assert split.cutoffs == (90, 96)
    assert 2 not in set(split.valid["user_id"]) and _triples(split.test)[-1] == (2, 3, 96)


def test_temporal_split_of_nothing_says_so() -> None:
    with pytest.raises(ValueError, match="^temporal_split needs at least one interaction$"):
        temporal_split(_frame([]))
