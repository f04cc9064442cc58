from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_config, parse_config
from pipeline.registry import build_channel, import_object
from pipeline.config import ChannelConfig

REPO = Path(__file__).resolve().parent.parent
BASE = {"channels": [{"name": "popularity", "kind": "popularity"}]}


@pytest.mark.parametrize("name", ["quickstart.yaml", "amazon-beauty.yaml"])
def test_shipped_configs_load(name):
    cfg = load_config(REPO / "configs" / name)
    assert cfg.enabled_channels()


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"pool\.budgett: unknown key"):
        parse_config(BASE | {"pool": {"budgett": 10}})
    with pytest.raises(ConfigError, match=r"channels\.0\.quotaa: unknown key"):
        parse_config({"channels": [{"name": "p", "kind": "popularity", "quotaa": 3}]})


def test_value_errors_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"pool\.budget"):
        parse_config(BASE | {"pool": {"budget": 0}})
    with pytest.raises(ConfigError, match="data.path is required"):
        parse_config(BASE | {"data": {"source": "amazon"}})
    with pytest.raises(ConfigError, match="unique"):
        parse_config({"channels": [{"name": "a", "kind": "popularity"}, {"name": "a", "kind": "item2item"}]})
    with pytest.raises(ConfigError, match="needs class_path"):
        parse_config({"channels": [{"name": "a", "kind": "plugin"}]})
    bad = tmp_path / "bad.yaml"
    bad.write_text("channels: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_overrides_apply():
    cfg = load_config(REPO / "configs" / "quickstart.yaml", {"eval.max_users": 50, "pool.budget": 7})
    assert cfg.eval.max_users == 50 and cfg.pool.budget == 7


def test_build_channel_errors():
    with pytest.raises(ConfigError, match="unknown kind 'nope'"):
        build_channel(ChannelConfig(name="x", kind="nope"))
    with pytest.raises(ConfigError, match="bad parameters for PopularityChannel"):
        build_channel(ChannelConfig(name="x", kind="popularity", params={"half_lif": 3}))
    with pytest.raises(ConfigError, match="cannot import module 'no_such_pkg"):
        build_channel(ChannelConfig(name="x", kind="plugin", class_path="no_such_pkg.mod:C"))
    with pytest.raises(ConfigError, match="has no attribute 'Nope'"):
        import_object("tests.plugin_channels:Nope")
    with pytest.raises(ConfigError, match="not an import path"):
        import_object("tests.plugin_channels")
    with pytest.raises(ConfigError, match="has no retrieve"):
        build_channel(ChannelConfig(name="x", kind="plugin", class_path="tests.plugin_channels:NotAChannel"))
