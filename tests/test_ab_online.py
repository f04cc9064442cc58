"""Online A/B: arm resolution, salted-hash assignment, feedback attribution and the per-arm report."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.config import ConfigError, parse_config
from pipeline.serving.ab import ArmTable
from pipeline.serving.abreport import attribute, format_report, load_feedback, outcomes, report
from pipeline.serving.config import ExperimentConfig

RUN = parse_config({"channels": [{"name": "popularity", "kind": "popularity", "quota": 100},
                                 {"name": "item2item", "kind": "item2item", "quota": 200}], "pool": {"budget": 300}})
SERVED = {c.name: c for c in RUN.channels}


def _table(*arms, salt="s"):
    return ArmTable(ExperimentConfig(name="e", salt=salt, arms=list(arms)), RUN, SERVED)


def test_without_experiment_one_default_arm_is_the_run():
    table = ArmTable(None, RUN, SERVED)
    plan = table.assign("anyone")
    assert plan.name == "default" and plan.channels == ("popularity", "item2item")
    assert plan.quotas == {"popularity": 100, "item2item": 200} and plan.budget == 300 and table.experiment is None


def test_arm_overrides_channels_quotas_budget_and_stages():
    table = _table({"name": "control", "weight": 1},
                   {"name": "t", "weight": 1, "channels": ["item2item"], "quotas": {"item2item": 50}, "budget": 40,
                    "rerank": {"kind": "rules", "params": {"lambda": 1.0}}})
    t = table.plans["t"]
    assert t.channels == ("item2item",) and t.quotas == {"item2item": 50} and t.budget == 40
    assert t.rerank.kind == "rules" and table.plans["control"].rerank.kind == "passthrough"
    assert table.stage_configs("rerank")["t"].params == {"lambda": 1.0}


def test_assignment_is_deterministic_weighted_and_salted():
    arms = ({"name": "control", "weight": 3}, {"name": "t", "weight": 1})
    table = _table(*arms)
    users = [f"user-{i}" for i in range(4000)]
    first = [table.assign(u).name for u in users]
    assert first == [_table(*arms).assign(u).name for u in users]  # same salt, same arms: same answer
    share = np.mean([a == "t" for a in first])
    assert 0.22 < share < 0.28  # weight 1 of 4
    resalted = [_table(*arms, salt="other").assign(u).name for u in users]
    assert 0.3 < np.mean([a != b for a, b in zip(first, resalted)]) < 0.45  # a new salt reshuffles
    assert table.assign(None).name == "control" and table.assign("x", forced="t").name == "t"


def test_bad_arms_are_refused():
    with pytest.raises(ConfigError, match="unknown channel"):
        _table({"name": "a", "weight": 1, "quotas": {"ghost": 3}})
    with pytest.raises(ConfigError, match="at least one channel"):
        _table({"name": "a", "weight": 1, "channels": []})
    with pytest.raises(ValueError, match="unknown arm 'zz'"):
        _table({"name": "a", "weight": 1}).assign("u", forced="zz")


def _served(rows):
    return pd.DataFrame([{"request_id": r, "time": t, "user_id": u, "arm": a, "experiment": "e", "forced": False,
                          "items": items, "fallback": False} for r, t, u, a, items in rows])


def test_feedback_without_request_id_goes_to_the_latest_list_that_showed_the_item():
    served = _served([("r1", 10.0, "u1", "control", ["a", "b"]), ("r2", 20.0, "u1", "control", ["b", "c"]),
                      ("r3", 30.0, "u1", "control", ["d"])])
    fb = pd.DataFrame({"request_id": [None, None, None, "r3"], "item_id": ["b", "a", "zz", "d"], "event": ["click"] * 4,
                       "user_id": ["u1"] * 4, "time": [25.0, 15.0, 40.0, 31.0]})
    got = attribute(served, fb).sort_values("time")
    assert got["request_id"].tolist() == ["r1", "r2", "r3"]  # 'zz' was never shown: dropped
    lists = outcomes(served, got).set_index("request_id")
    assert lists.loc["r1", "rr"] == 1.0 and lists.loc["r2", "rr"] == 1.0 and lists.loc["r3", "clicks"] == 1.0


def test_report_per_arm_metrics_and_intervals():
    rng = np.random.default_rng(0)
    rows, clicks = [], []
    for n in range(2000):
        arm = "control" if n % 2 else "t"
        items = [f"i{j}" for j in range(10)]
        rows.append((f"r{n}", float(n), f"u{n % 400}", arm, items))
        p = 0.10 if arm == "control" else 0.20
        if rng.random() < p:
            clicks.append({"request_id": f"r{n}", "item_id": f"i{rng.integers(0, 10)}", "event": "click"})
    served = _served(rows)
    rep = report(served, pd.DataFrame(clicks).reindex(columns=["request_id", "item_id", "event", "user_id", "time"]), n_boot=300)
    c, t = rep["arms"]["control"], rep["arms"]["t"]
    assert c["lists"] == 1000 and t["lists"] == 1000 and c["users"] == 200
    assert abs(c["ctr"] - 0.10) < 0.03 and abs(t["ctr"] - 0.20) < 0.03
    assert c["ctr_ci"][0] < c["ctr"] < c["ctr_ci"][1]
    diff = t["vs_control"]["ctr"]
    assert diff["ci"][0] > 0 and diff["diff"] == pytest.approx(t["ctr"] - c["ctr"], abs=1e-6)
    assert 0 < c["mrr"] < c["ctr"] and "vs_control" not in c
    assert "t  " in format_report(rep)


def test_forced_lists_are_left_out_and_empty_logs_are_an_error():
    served = _served([("r1", 1.0, "u1", "control", ["a"])])
    served["forced"] = True
    empty = pd.DataFrame(columns=["request_id", "item_id", "event", "user_id", "time"])
    with pytest.raises(ValueError, match="no served lists"):
        report(served, empty)
    assert report(served, empty, include_forced=True)["arms"]["control"]["lists"] == 1


def test_feedback_import_from_csv_and_parquet(tmp_path):
    pd.DataFrame({"request_id": ["r1"], "item_id": ["a"]}).to_csv(tmp_path / "fb.csv", index=False)
    pd.DataFrame({"user_id": ["u1"], "item_id": ["b"], "time": [5.0]}).to_parquet(tmp_path / "fb.parquet")
    fb = load_feedback(None, [tmp_path / "fb.csv", tmp_path / "fb.parquet"])
    assert fb["item_id"].tolist() == ["a", "b"] and fb["event"].tolist() == ["click", "click"]
    with pytest.raises(FileNotFoundError):
        load_feedback(None, [tmp_path / "missing.csv"])


def test_cli_ab_report_reads_logs_and_writes_json(tmp_path, capsys):
    import json

    from pipeline.cli import main
    from pipeline.serving.eventlog import EventLog

    served, feedback = EventLog(tmp_path, "served"), EventLog(tmp_path, "feedback")
    for n in range(40):
        arm = "control" if n % 2 else "t"
        served.write({"type": "served", "request_id": f"r{n}", "time": n, "user_id": f"u{n % 10}", "arm": arm,
                      "experiment": "e", "forced": False, "items": ["a", "b"], "positions": [0, 1]})
        if n % 3 == 0:
            feedback.write({"type": "feedback", "request_id": f"r{n}", "item_id": "b", "event": "click"})
    served.close()
    feedback.close()
    assert main(["ab", "report", "--logs", str(tmp_path), "--n-boot", "50", "--out", str(tmp_path / "ab.json")]) == 0
    rep = json.loads((tmp_path / "ab.json").read_text())
    assert rep["arms"]["control"]["lists"] == 20 and rep["arms"]["control"]["mrr"] == rep["arms"]["control"]["ctr"] / 2
    assert "clicks/list" in capsys.readouterr().out
    assert main(["ab", "report", "--logs", str(tmp_path / "nope")]) == 2


def test_assignment_is_pinned_across_processes():
    """Golden buckets: a user keeps their arm across processes, machines and restarts (sha256 of
    'salt:user_id'; Python's salted hash() or another digest would move everyone)."""
    arms = ({"name": "control", "weight": 1}, {"name": "t", "weight": 1})
    assert _table(*arms, salt="s1").bucket("u42") == pytest.approx(0.7892120808314745, abs=1e-15)
    assert _table(*arms, salt="exp-2026").bucket("alice") == pytest.approx(0.02583095314728817, abs=1e-15)
    assert _table(*arms, salt="s1").assign("u42").name == "t"
    assert _table(*arms, salt="exp-2026").assign("alice").name == "control"


def test_experiment_name_anonymous_users_and_the_run_pool_rule():
    table = _table({"name": "control", "weight": 1}, {"name": "t", "weight": 1})
    assert table.experiment == "e"
    assert table.assign(None).name == "control"  # no user id: the control arm, never a hash of None
    run = parse_config({"channels": [{"name": "popularity", "kind": "popularity", "quota": 10}],
                        "pool": {"budget": 10, "exclude_seen": False}})
    plan = ArmTable(None, run, {c.name: c for c in run.channels}).assign("u")
    assert plan.exclude_seen is False  # the run's pool rule reaches every arm
