"""The test split never reaches channel or ranker training (README "Ranker training data").

Checked two ways: the label folds themselves (no test target, and for the validation stage no
validation target, in any fold's history or labels; every label precedes what is evaluated), and
end to end through `train`, with a channel and a ranker that record everything they are given.
"""
import numpy as np
import pandas as pd
import pytest

from pipeline.config import parse_config
from pipeline.data import leave_one_out, synthesize, temporal_split
from pipeline.registry import import_object
from pipeline.workflow import train
from rankers.lgbm import LightGBMRanker
from rankers.training_data import ranking_folds
from tests.plugin_channels import RecordingChannel

KEY = ["user_id", "item_id", "timestamp"]
SYNTH = {"n_users": 250, "n_items": 120, "seed": 7}


def _rows(frame: pd.DataFrame) -> set:
    return set(map(tuple, frame[KEY].to_numpy().tolist()))


def _forbidden(split, stage):
    rows = _rows(split.targets("test"))
    return rows | _rows(split.targets("valid")) if stage == "valid" else rows


@pytest.mark.parametrize("make_split", [leave_one_out, temporal_split])
@pytest.mark.parametrize("stage", ["valid", "test"])
def test_label_folds_hold_no_evaluated_target(make_split, stage):
    ds = synthesize(**SYNTH)
    split = make_split(ds.interactions)
    folds = ranking_folds(split, stage, 3, make_split)
    assert len(folds) == 3
    forbidden = _forbidden(split, stage)
    for fold in folds:
        assert not (_rows(fold.history) & forbidden), fold.name
        assert not (_rows(fold.targets) & forbidden), fold.name
        assert not (_rows(fold.history) & _rows(fold.targets)), fold.name  # labels are not in their own history
    if make_split is leave_one_out:  # each label is a strictly earlier row of its user
        evaluated = split.targets(stage).set_index("user_id")["seq"]
        for fold in folds:
            t = fold.targets.set_index("user_id")["seq"]
            common = t.index.intersection(evaluated.index)
            assert (t[common] < evaluated[common]).all()
    assert folds[0].name == ("valid" if stage == "test" else "back1-test")


def test_fold_zero_for_the_test_stage_is_the_validation_step():
    split = leave_one_out(synthesize(**SYNTH).interactions)
    fold = ranking_folds(split, "test", 1, leave_one_out)[0]
    assert _rows(fold.targets) == _rows(split.targets("valid"))
    assert _rows(fold.history) == _rows(split.history("valid"))


def test_bad_fold_arguments_raise():
    split = leave_one_out(synthesize(**SYNTH).interactions)
    with pytest.raises(ValueError, match="at least one fold"):
        ranking_folds(split, "test", 0, leave_one_out)
    with pytest.raises(ValueError, match="unknown stage"):
        ranking_folds(split, "train", 1, leave_one_out)


class RecordingRanker(LightGBMRanker):
    """LightGBM that remembers the labelled data and the serving data it was given."""

    seen: dict = {}

    def fit(self, train, holdout=None):
        type(self).seen.setdefault("fit", []).append((train, holdout))
        return super().fit(train, holdout)

    def bind(self, data, channels):
        type(self).seen.setdefault("bind", []).append(data)
        return super().bind(data, channels)


def _label_rows(data) -> set:
    """(user, item, time) of every label, and of every history row, of a RankingData."""
    labels = data.items[data.offsets[:-1] + data.positive]
    out = set(zip(data.users.tolist(), labels.tolist(), data.now.tolist()))
    valid = data.history >= 0
    g = np.nonzero(valid)[0]
    hist = set(zip(data.users[g].tolist(), data.history[valid].tolist(), data.history_times[valid].tolist()))
    return out, hist


@pytest.mark.parametrize("stage", ["test", "valid"])
def test_training_through_workflow_never_sees_evaluated_rows(tmp_path, stage):
    # the class the config names (pytest may import this file under another module name)
    recorder = import_object("tests.test_rank_leakage:RecordingRanker")
    RecordingChannel.seen_rows.clear()
    recorder.seen.clear()
    cfg = parse_config({
        "data": {"source": "synthetic", "synthetic": SYNTH, "max_history": 30},
        "channels": [{"name": "rec", "kind": "plugin", "class_path": "tests.plugin_channels:RecordingChannel", "quota": 40},
                     {"name": "item2item", "kind": "item2item", "quota": 40}],
        "pool": {"budget": 60},
        "ranker": {"kind": "tests.test_rank_leakage:RecordingRanker",
                   "params": {"n_estimators": 10, "num_leaves": 7, "min_child_samples": 5, "train_folds": 2, "holdout": 0.2}},
    })
    train(cfg, stage=stage, run_dir=tmp_path / "run")
    split = leave_one_out(synthesize(**SYNTH).interactions)
    forbidden = _forbidden(split, stage)
    # channels: the stage fit plus one refit per label fold, none with an evaluated row
    assert len(RecordingChannel.seen_rows) == 3
    for rows in RecordingChannel.seen_rows:
        assert not (_rows(rows) & forbidden)
    # each fold's channels are fitted on that fold's history exactly: never on its own labels
    folds = ranking_folds(split, stage, 2, leave_one_out)
    for fold, rows in zip(folds, RecordingChannel.seen_rows[1:]):
        assert not (_rows(rows) & _rows(fold.targets)), f"fold {fold.name}: its labels reached its channels"
        assert _rows(rows) == _rows(fold.history)
    # ranker: labels and request histories hold no evaluated row
    (train_part, holdout), = recorder.seen["fit"]
    for part in (train_part, holdout):
        labels, hist = _label_rows(part)
        assert labels and not (labels & forbidden) and not (hist & forbidden)
    # the early-stopping users are never trained on, in any fold
    assert len(np.unique(train_part.fold)) == 2 and set(np.unique(holdout.fold)) == {0}
    assert not set(holdout.users.tolist()) & set(train_part.users.tolist())
    # its serving features are bound to exactly the stage's history (all before the targets)
    bound, = recorder.seen["bind"]
    assert _rows(bound.train) == _rows(split.history(stage))
