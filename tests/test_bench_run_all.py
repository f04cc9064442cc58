"""The one-command benchmark runner: every step names a real bench module, lists and filters."""
import importlib

import pytest

from bench import run_all


def test_every_step_runs_an_existing_bench_module():
    for name, (cmd, minutes) in run_all.STEPS.items():
        if callable(cmd):
            continue
        parts = cmd.split()
        assert parts[:2] == ["python", "-m"], name
        importlib.import_module(parts[2])
        assert minutes >= 0
    assert list(run_all.STEPS)[-1] == "readme_table"


def test_steps_that_read_a_run_come_after_the_step_that_writes_it():
    order = list(run_all.STEPS)
    for reader in ("leakage_audit", "mtgr_ablation", "mtgr_speed"):
        assert order.index("cascade_mtgr") < order.index(reader)
    assert order.index("two_tower") < order.index("ann_recall")
    assert order.index("cobra") < order.index("cobra_latency")


def test_list_dry_run_and_bad_names(capsys):
    assert run_all.main(["--list", "--only", "classic,mtgr_speed"]) == 0
    out = capsys.readouterr().out
    assert "classic " in out and "mtgr_speed" in out and "cobra_sparse" not in out
    assert run_all.main(["--dry-run", "--from", "readme_table"]) == 0
    assert "[1/1] readme_table: python -m bench.readme_table" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="unknown step\\(s\\) \\['nope'\\]"):
        run_all.main(["--only", "nope"])
    with pytest.raises(SystemExit, match="unknown step 'nope'"):
        run_all.main(["--from", "nope"])
