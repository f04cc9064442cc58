"""The command line: help text with defaults, --version, --set on list items, and config errors
that stop a command before anything is trained."""
from __future__ import annotations

import argparse
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from pipeline import cli
from pipeline.config import ConfigError, apply_overrides, load_config, parse_config

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "configs" / "quickstart.yaml"


def _subparsers(parser: argparse.ArgumentParser, path: str = "hybridrec"):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subparsers(sub, f"{path} {name}")


def test_every_option_has_help_and_shows_its_default():
    undocumented, no_default = [], []
    for path, parser in _subparsers(cli.build_parser()):
        text = parser.format_help()
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction, argparse._VersionAction)):
                continue
            name = action.option_strings[-1] if action.option_strings else action.dest
            if not action.help:
                undocumented.append(f"{path} {name}")
            elif action.option_strings and not action.required and not isinstance(action, argparse._StoreTrueAction):
                # help wraps long defaults (paths break at hyphens): compare without white space
                if f"(default:{action.default})".replace(" ", "") not in "".join(text.split()):
                    no_default.append(f"{path} {name}")
    assert not undocumented, f"options without help: {undocumented}"
    assert not no_default, f"options whose help does not show the default: {no_default}"


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out == f"hybridrec {metadata.version('hybridrec')}"


def test_set_reaches_list_items_by_index_and_by_name():
    by_index = load_config(QUICKSTART, {"channels.1.quota": 300})
    by_name = load_config(QUICKSTART, {"channels.item2item.quota": 301, "channels.cobra.params.beam_size": 20})
    assert [c.quota for c in by_index.channels][:2] == [100, 300]
    assert by_name.channels[1].name == "item2item" and by_name.channels[1].quota == 301
    assert by_name.channels[3].params["beam_size"] == 20
    assert by_name.channels[0].quota == 100  # nothing else moved


def test_set_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"no item named 'nope' in that list; names: \['popularity'"):
        load_config(QUICKSTART, {"channels.nope.quota": 3})
    with pytest.raises(ConfigError, match=r"channels\.9 is out of range \(the list has 4 items\)"):
        load_config(QUICKSTART, {"channels.9.quota": 3})
    with pytest.raises(ConfigError, match=r"'pool\.budget' is a value"):
        load_config(QUICKSTART, {"pool.budget.x": 3})


def test_apply_overrides_validates_again():
    cfg = load_config(QUICKSTART)
    assert apply_overrides(cfg, {"eval.max_users": 50}).eval.max_users == 50
    with pytest.raises(ConfigError, match=r"eval\.max_userz: unknown key"):
        apply_overrides(cfg, {"eval.max_userz": 50})


def _write(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("section, bad, message", [
    ("channels", [{"name": "x", "kind": "nosuchkind"}], "channel 'x': unknown kind 'nosuchkind'"),
    ("ranker", {"kind": "nosuchranker"}, "ranker: unknown kind 'nosuchranker'"),
    ("rerank", {"kind": "rules", "params": {"lambdaa": 0.5}}, "lambdaa: unknown key"),
    ("ranker", {"kind": "mtgr", "params": {"d_modell": 8}}, "ranker: bad parameters for MTGRRanker"),
])
def test_unknown_kind_fails_before_training(tmp_path, capsys, section, bad, message):
    raw = yaml.safe_load(QUICKSTART.read_text())
    raw[section] = bad
    raw["run"]["root"] = str(tmp_path / "runs")
    code = cli.main(["train", "--config", str(_write(tmp_path, raw))])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing was written: it failed before any fitting


def test_evaluate_run_refuses_overrides_that_need_training(tmp_path, capsys):
    code = cli.main(["evaluate", "--run", str(tmp_path), "--set", "pool.budget=10"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--set with --run can change eval.* keys only" in err and "['pool.budget']" in err


def test_evaluate_run_applies_eval_overrides(tmp_path, monkeypatch):
    from tests.test_serving_support import tiny_run

    run_path = tiny_run(tmp_path / "run")
    seen = {}

    def fake_evaluate(run, **kwargs):  # records what evaluate would score with
        seen["max_users"], seen["ks"] = run.config.eval.max_users, run.config.eval.ks
        return {"dataset": "d", "stage": run.stage, "users": 0, "ks": [5], "arms": {}}

    monkeypatch.setattr("pipeline.evaluation.report.evaluate_run", fake_evaluate)
    code = cli.main(["evaluate", "--run", str(run_path), "--set", "eval.max_users=7", "--set", "eval.ks=[5]"])
    assert code == 0
    assert seen == {"max_users": 7, "ks": [5]}
    assert parse_config(load_config(QUICKSTART).model_dump(mode="json"))  # round trip of a dumped config


@pytest.mark.parametrize("name", ["amazon-beauty-cascade.yaml", "synthetic-cascade.yaml"])
def test_the_configs_lgbm_override_comment_is_true(name):
    """The override the config's comment shows builds; `ranker.kind=lgbm` alone is refused early."""
    from pipeline.registry import check_components

    path = REPO / "configs" / name
    line = next(l for l in path.read_text().splitlines() if "--set 'ranker=" in l)
    value = line.split("--set 'ranker=", 1)[1].rstrip("'")
    check_components(load_config(path, {"ranker": yaml.safe_load(value)}))
    with pytest.raises(ConfigError, match="bad parameters for LightGBMRanker"):
        check_components(load_config(path, {"ranker.kind": "lgbm"}))
