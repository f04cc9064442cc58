"""Capabilities are declared by protocols (pipeline.core.protocols) and asked for with
isinstance/issubclass, never by probing attribute names or class names (issue 18)."""
from __future__ import annotations

import pytest

from pipeline.core.protocols import BindsItems, Persistent, SupportsAddItemIds, SupportsAddItems, Trainable
from pipeline.registry import CHANNEL_KINDS, RANKER_KINDS, RERANKER_KINDS, import_object

CAPABILITIES = (Persistent, Trainable, SupportsAddItems, SupportsAddItemIds, BindsItems)

EXPECTED = {
    "channel popularity": {Persistent},
    "channel item2item": {Persistent},
    "channel table": {Persistent},
    "channel cobra": {Persistent, SupportsAddItems},
    "channel two_tower": {Persistent, SupportsAddItems},
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
