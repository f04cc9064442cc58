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


def test_arm_config_errors():
    with pytest.raises(ConfigError, match="not enabled: \\['nope'\\]"):
        parse_config(CFG | {"arms": [{"name": "a", "channels": ["nope"]}]})
    with pytest.raises(ConfigError, match="control 'x' is not an arm"):
        parse_config(CFG | {"control": "x"})
    with pytest.raises(ConfigError, match="arm names must be unique"):
        parse_config(CFG | {"arms": [{"name": "a"}, {"name": "a"}]})
