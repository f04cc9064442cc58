"""A user's own channel (by import path) and a precomputed candidate table go through training,
the cascade and the evaluation like the built-in channels."""
import numpy as np
import pandas as pd

from pipeline.config import parse_config
from pipeline.core.types import Request
from pipeline.data import synthesize
from pipeline.evaluation.report import evaluate_run
from pipeline.workflow import load_run, train


def _table(dataset, path):
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(dataset.n_users), 20)
    items = rng.integers(0, dataset.n_items, users.shape[0])
    frame = pd.DataFrame({"user_id": dataset.user_ids[users], "item_id": dataset.item_ids[items],
                          "score": rng.random(users.shape[0])}).drop_duplicates(["user_id", "item_id"])
    frame.to_parquet(path)


def test_plugin_and_table_through_cascade_and_evaluation(tmp_path):
    dataset = synthesize(n_users=300, n_items=200, seed=3)
    _table(dataset, tmp_path / "cands.parquet")
    cfg = parse_config({
        "data": {"source": "synthetic", "synthetic": {"n_users": 300, "n_items": 200, "seed": 3}},
        "channels": [
            {"name": "popularity", "kind": "popularity", "quota": 50},
            {"name": "mine", "kind": "plugin", "class_path": "tests.plugin_channels:LastCategoryChannel",
             "quota": 50, "params": {"boost": 3.0}},
            {"name": "offline", "kind": "table", "quota": 20, "params": {"path": str(tmp_path / "cands.parquet")}},
        ],
        "eval": {"n_boot": 50},
    })
    run_dir = train(cfg, run_dir=tmp_path / "run")
    run = load_run(run_dir)
    assert set(run.channels) == {"popularity", "mine", "offline"}
    report = evaluate_run(run, out_dir=tmp_path / "eval")
    assert set(report["arms"]) == {"popularity", "mine", "offline", "cascade"}
    assert report["users"] == 300
    # the table channel is a random list: far below the category-aware plug-in
    assert report["arms"]["mine"]["R@10"] > report["arms"]["offline"]["R@10"]
    lists = pd.read_parquet(tmp_path / "eval" / "topk_mine.parquet")
    assert list(lists.columns) == ["user_id", "rank", "item_id"] and set(lists["item_id"]) <= set(dataset.item_ids)
    rec = run.cascade.recommend(Request(user=0, history=np.array([1, 2]), k=10))
    found = {r for reasons in rec.reasons for r in reasons}
    assert {"channel:mine", "channel:offline"} & found


def test_an_arm_that_only_changes_quotas_reuses_the_fold_fits_of_the_run(tmp_path):
    """The fold fits are shared by the run's ranker and every arm's ranker: a quota shapes the pool,
    not the fit, so an arm with other quotas must not fit its channels again (a COBRA fit is 15 min)."""
    from tests.plugin_channels import RecordingChannel

    RecordingChannel.seen_rows.clear()
    cfg = parse_config({
        "data": {"source": "synthetic", "synthetic": {"n_users": 120, "n_items": 60, "seed": 3}},
        "channels": [{"name": "popularity", "kind": "popularity", "quota": 20},
                     {"name": "rec", "kind": "plugin", "class_path": "tests.plugin_channels:RecordingChannel", "quota": 20}],
        "ranker": {"kind": "lgbm", "params": {"n_estimators": 10}},
        "arms": [{"name": "small", "quotas": {"rec": 5}, "budget": 25, "ranker": {"kind": "lgbm", "params": {"n_estimators": 10}}}],
    })
    train(cfg, run_dir=tmp_path / "run")
    assert len(RecordingChannel.seen_rows) == 2  # one fold fit (shared by both rankers) and the stage fit
