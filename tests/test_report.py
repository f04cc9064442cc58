"""Offline A/B: arms on one run, the Markdown/PNG/JSON report, and intervals of identical arms."""
import json

import pytest

from pipeline.config import ConfigError, parse_config
from pipeline.evaluation.report import evaluate_run, format_table
from pipeline.workflow import load_run, train

CFG = {
    "data": {"source": "synthetic", "synthetic": {"n_users": 300, "n_items": 150, "seed": 5}},
    "channels": [{"name": "popularity", "kind": "popularity", "quota": 50},
                 {"name": "item2item", "kind": "item2item", "quota": 50}],
    "eval": {"n_boot": 200},
    "arms": [
        {"name": "pop-only", "channels": ["popularity"]},
        {"name": "pop-only-again", "channels": ["popularity"]},
        {"name": "both", "quotas": {"item2item": 20}, "budget": 60},
    ],
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return load_run(train(parse_config(CFG), run_dir=tmp_path_factory.mktemp("r") / "run"))


def test_arms_report_files_and_intervals(run, tmp_path):
    report = evaluate_run(run, out_dir=tmp_path, latency_requests=20)
    assert report["pipeline_arms"] == ["pop-only", "pop-only-again", "both"]
    assert report["bootstrap"]["control"] == "pop-only"
    same = report["bootstrap"]["arms"]["pop-only-again"]["R@10"]
    assert same["diff"] == 0 and same["ci_low"] <= 0 <= same["ci_high"] and not same["significant"]
    # item2item adds a lot on synthetic data (sticky category transitions)
    both = report["bootstrap"]["arms"]["both"]["R@10"]
    assert both["diff"] > 0 and both["significant"]
    assert report["arms"]["pop-only"]["R@10"] == report["arms"]["popularity"]["R@10"]
    for name in ("report.json", "report.md", "recall_vs_k.png", "channel_overlap.png",
                 "recall_by_popularity.png", "latency_cdf.png", "topk_both.parquet"):
        assert (tmp_path / name).stat().st_size > 0, name
    md = (tmp_path / "report.md").read_text()
    assert "| both | pipeline |" in md and "![Recall vs k](recall_vs_k.png)" in md
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["channels"]["item2item"]["budget"] == 50
    assert saved["channels"]["popularity"]["unique_hits"] <= saved["channels"]["popularity"]["hits"]
    assert "both vs pop-only R@10" in format_table(report)


def test_tail_interval_and_hits_only_one_channel_brought(run):
    import numpy as np

    from types import SimpleNamespace

    from pipeline.evaluation.harness import build_eval_set
    from pipeline.evaluation.report import _tail_values, _unique_after_ranking

    hits = np.array([1.0, 0.0, 1.0, 1.0])
    tail = np.array([True, True, False, False])
    np.testing.assert_allclose(_tail_values(hits, tail), [2.0, 0.0, 0.0, 0.0])  # mean .5 = tail recall 1 of 2
    evalset = build_eval_set(run.split, "test", 50)
    t = evalset.targets[:3]
    arm = np.array([[t[0], -1], [t[1], -1], [-1, -1]])  # users 0 and 1 are hit in the top 10
    pools = {"a": np.array([[t[0]], [t[1]], [t[2]]]), "b": np.array([[t[0]], [-1], [-1]])}
    got = _unique_after_ranking({"arm": arm}, pools, SimpleNamespace(targets=t), {"arm": ["a", "b"]})
    assert got == {"arm": {"a": 1, "b": 0, "hits@10": 2}}  # user 0's target was in both pools
    report = evaluate_run(run, latency_requests=0)
    assert set(report["unique_after_ranking"]) == {"pop-only", "pop-only-again", "both"}
    assert report["bootstrap"]["arms"]["pop-only-again"]["tail_R@10"]["diff"] == 0


def test_arm_config_errors():
    with pytest.raises(ConfigError, match="not enabled: \\['nope'\\]"):
        parse_config(CFG | {"arms": [{"name": "a", "channels": ["nope"]}]})
    with pytest.raises(ConfigError, match="control 'x' is not an arm"):
        parse_config(CFG | {"control": "x"})
    with pytest.raises(ConfigError, match="arm names must be unique"):
        parse_config(CFG | {"arms": [{"name": "a"}, {"name": "a"}]})


def test_arms_train_and_use_their_own_rankers(tmp_path, monkeypatch):
    """An arm with a trainable ranker gets one trained on ITS channel set (features over its
    channels only), saved under rankers/<arm>, loaded back and used; fold channel fits are shared."""
    import pipeline.workflow as wf

    fits = []
    real = wf.fit_channel
    monkeypatch.setattr(wf, "fit_channel", lambda c, d, t: fits.append(c.name) or real(c, d, t))
    lgbm = {"kind": "lgbm", "params": {"n_estimators": 20, "num_leaves": 7, "min_child_samples": 5, "holdout": 0.2,
                                       "train_folds": 1}}
    cfg = parse_config(CFG | {"ranker": lgbm, "arms": [
        {"name": "i2i-lgbm", "channels": ["item2item"], "ranker": lgbm},
        {"name": "both-lgbm", "ranker": lgbm},
        {"name": "both-main"},
    ]})
    run = load_run(train(cfg, run_dir=tmp_path / "run"))
    # stage fits (2) + one ranker fold (2), shared by the run's ranker and both arms' rankers
    assert sorted(fits) == ["item2item"] * 2 + ["popularity"] * 2
    assert sorted(run.rankers) == ["both-lgbm", "i2i-lgbm"]
    assert (tmp_path / "run" / "rankers" / "i2i-lgbm" / "model.txt").is_file()
    names = run.manifest["arm_rankers"]["i2i-lgbm"]["features"]
    assert any("item2item" in n for n in names) and not any("popularity" in n for n in names)
    report = evaluate_run(run, latency_requests=5)
    assert report["pipeline_arms"] == ["i2i-lgbm", "both-lgbm", "both-main"]
    # same channels, same ranker config and data: the arm's ranker equals the run's own
    assert report["arms"]["both-lgbm"]["R@10"] == pytest.approx(report["arms"]["both-main"]["R@10"])


def test_an_untrained_arm_ranker_is_refused(run):
    from pipeline.config import ArmConfig
    from pipeline.evaluation.arms import build_arm

    with pytest.raises(ConfigError, match="arm 'x': its ranker 'lgbm' must be trained"):
        build_arm(run, ArmConfig(name="x", ranker={"kind": "lgbm"}))
