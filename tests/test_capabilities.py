"""Capabilities are declared by protocols (pipeline.core.protocols) and asked for with
isinstance/issubclass, never by probing attribute names or class names (issue 18)."""
from __future__ import annotations

import pytest

from pipeline.core.protocols import (
    FALLBACK, BindsItems, HasItemVectors, Persistent, SupportsAddItemIds, SupportsAddItems, Trainable, declares_role,
)
from pipeline.registry import CHANNEL_KINDS, RANKER_KINDS, RERANKER_KINDS, import_object

CAPABILITIES = (Persistent, Trainable, SupportsAddItems, SupportsAddItemIds, BindsItems, HasItemVectors)

EXPECTED = {
    "channel popularity": {Persistent},
    "channel item2item": {Persistent},
    "channel table": {Persistent},
    "channel cobra": {Persistent, SupportsAddItems, HasItemVectors},
    "channel two_tower": {Persistent, SupportsAddItems, HasItemVectors},
    "channel http": {SupportsAddItemIds},
    "ranker passthrough": set(),
    # protocols are structural: a trained ranker's `bind` matches BindsItems too (only re-rankers are
    # ever asked for it, by pipeline.workflow.bind_items)
    "ranker lgbm": {Persistent, Trainable, SupportsAddItems, BindsItems},
    "ranker mtgr": {Persistent, Trainable, SupportsAddItems, BindsItems},
    "reranker passthrough": set(),
    "reranker rules": {BindsItems},
}


def _kinds():
    for what, table in (("channel", CHANNEL_KINDS), ("ranker", RANKER_KINDS), ("reranker", RERANKER_KINDS)):
        for kind, path in table.items():
            yield f"{what} {kind}", path


@pytest.mark.parametrize("name,path", list(_kinds()), ids=[n for n, _ in _kinds()])
def test_every_built_in_kind_declares_the_capabilities_the_workflow_and_serving_use(name, path):
    cls = import_object(path)
    assert {c for c in CAPABILITIES if issubclass(cls, c)} == EXPECTED[name]


def test_an_object_without_the_methods_has_no_capability():
    class Bare:
        name = "bare"

        def fit(self, data):
            return self

    assert not any(isinstance(Bare(), c) for c in CAPABILITIES)


def test_only_popularity_declares_the_fallback_role_among_the_built_in_channels():
    declaring = {kind for kind, path in CHANNEL_KINDS.items() if declares_role(import_object(path), FALLBACK)}
    assert declaring == {"popularity"}


@pytest.mark.parametrize("declared,expected", [(True, "mine"), (False, "popularity")])
def test_the_serving_fallback_is_the_first_channel_declaring_the_role_not_a_kind(tmp_path, declared, expected):
    from pipeline.config import parse_config
    from pipeline.serving.config import parse_serve_config
    from pipeline.serving.runview import RunView
    from pipeline.serving.state import IngressState
    from pipeline.workflow import train

    plugin = "FallbackCategoryChannel" if declared else "LastCategoryChannel"
    cfg = parse_config({
        "data": {"synthetic": {"n_users": 60, "n_items": 40, "seed": 2}},
        "channels": [{"name": "item2item", "kind": "item2item", "quota": 10},
                     {"name": "mine", "kind": "plugin", "class_path": f"tests.plugin_channels:{plugin}", "quota": 10},
                     {"name": "popularity", "kind": "popularity", "quota": 10}],
    })
    state = IngressState.build(RunView.open(train(cfg, run_dir=tmp_path / "run")), parse_serve_config({}),
                               with_logs=False)
    assert state.fallback.name == expected and type(state.fallback).__name__ == (plugin if declared else "PopularityChannel")


def test_without_a_declaring_channel_the_serving_fallback_is_the_cascades_own(tmp_path):
    from pipeline.config import parse_config
    from pipeline.serving.config import parse_serve_config
    from pipeline.serving.runview import RunView
    from pipeline.serving.state import IngressState
    from pipeline.workflow import FALLBACK as NAME, train

    cfg = parse_config({"data": {"synthetic": {"n_users": 60, "n_items": 40, "seed": 2}},
                        "channels": [{"name": "item2item", "kind": "item2item", "quota": 10}]})
    state = IngressState.build(RunView.open(train(cfg, run_dir=tmp_path / "run")), parse_serve_config({}),
                               with_logs=False)
    assert state.fallback.name == NAME and declares_role(state.fallback, FALLBACK)
