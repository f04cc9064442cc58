"""Configuration and binding errors of the rule-and-diversity re-ranker: every one is raised early
(at construction or bind) with a message naming the problem."""
import numpy as np
import pytest

from pipeline.config import StageConfig, parse_config
from pipeline.registry import RERANKER_KINDS, build_stage
from rerank.reranker import RuleDiversityReRanker
from tests.test_rerank_support import bound, item_table, make_pool, one_batch, run


@pytest.mark.parametrize(
    "params, message",
    [
        ({"lambda": 1.5}, "lambda: Input should be less than or equal to 1"),
        ({"lambda": -0.1}, "lambda: Input should be greater than or equal to 0"),
        ({"caps": [{"max_items": 2, "window": -3}]}, "caps.0.window: Input should be greater than or equal to 1"),
        ({"caps": [{"max_items": 0, "window": 3}]}, "caps.0.max_items"),
        ({"pins": [{"slot": 2, "item": 1}, {"slot": 2, "item": 4}]}, "two pins on one slot: [2]"),
        ({"pins": [{"slot": 0, "item": 1}, {"slot": 3, "item": 1}]}, "an item is pinned to two slots: ['1']"),
        ({"pins": [{"slot": -1, "item": 1}]}, "pins.0.slot"),
        ({"pins": [{"slot": 0}]}, "pin at slot 0: give exactly one of item or newest"),
        ({"pins": [{"slot": 0, "item": 1, "max_age_days": 3}]}, "max_age_days only applies to newest"),
        ({"boosts": [{"attribute": "category", "values": ["a"]}]}, "set factor (!= 1) or add (!= 0)"),
        ({"boosts": [{"attribute": "price", "values": [1], "min": 0, "factor": 2}]}, "give either values or min/max"),
        ({"boosts": [{"attribute": "price", "min": 5, "max": 1, "factor": 2}]}, "min (5.0) must be below max (1.0)"),
        ({"boosts": [{"attribute": "category", "values": ["a"], "factor": 0}]}, "boosts.0.factor"),
        ({"freshness": {"max_age_days": 10, "bonus": 0}}, "freshness.bonus"),
        ({"on_unmet_caps": "ignore"}, "on_unmet_caps"),
        ({"lamda": 0.5}, "lamda: unknown key"),
        ({"caps": [{"max_items": 1, "window": 2, "size": 3}]}, "caps.0.size: unknown key"),
    ],
)
def test_invalid_params_raise_value_error_at_construction(params, message):
    with pytest.raises(ValueError) as err:
        RuleDiversityReRanker(**params)
    assert message in str(err.value)
    assert str(err.value).startswith("rerank (kind 'rules'): invalid params")


def test_lambda_is_a_param_by_yaml_name_and_python_name():
    assert RuleDiversityReRanker(**{"lambda": 0.3}).params.lambda_ == 0.3
    assert RuleDiversityReRanker(lambda_=0.4).params.lambda_ == 0.4
    assert RuleDiversityReRanker().params.lambda_ == 1.0


def test_registry_builds_it_from_the_yaml_block():
    assert RERANKER_KINDS["rules"] == "rerank.reranker:RuleDiversityReRanker"
    cfg = parse_config({
        "channels": [{"name": "pop", "kind": "popularity"}],
        "rerank": {"kind": "rules", "params": {"lambda": 0.7, "dedup": {"attribute": "brand"},
                                                "caps": [{"attribute": "category", "max_items": 2, "window": 4}]}},
    })
    reranker = build_stage(cfg.rerank, RERANKER_KINDS, "rerank")
    assert isinstance(reranker, RuleDiversityReRanker) and reranker.name == "rules"
    assert reranker.params.caps[0].window == 4 and reranker.params.dedup.attribute == "brand"
    with pytest.raises(ValueError, match="lambda"):
        build_stage(StageConfig(kind="rules", params={"lambda": 2}), RERANKER_KINDS, "rerank")


def test_rerank_before_bind_is_a_clear_error():
    with pytest.raises(RuntimeError, match=r"call bind\(items, vectors\) before rerank"):
        RuleDiversityReRanker().rerank(one_batch(), [make_pool([0])], 1)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"dedup": {"attribute": "maker"}}, "no column(s) ['maker']"),
        ({"filters": {"blocked": [7]}}, "filters.blocked: item 7 is not a dense index in [0, 3)"),
        ({"filters": {"unavailable": ["B00X"]}}, "set id_space: original"),
        ({"pins": [{"slot": 0, "item": 9}]}, "pin slot=0: item 9 is not a dense index"),
        ({"id_space": "original", "filters": {"blocked": ["x"]}}, "needs bind(..., item_ids=dataset.item_ids)"),
        ({"boosts": [{"attribute": "category", "min": 1, "factor": 2}]}, "a min/max match needs a numeric column"),
        ({"lambda": 0.5}, "lambda < 1 (MMR) needs item vectors"),
    ],
)
def test_bind_errors_name_the_problem(params, message):
    with pytest.raises(ValueError) as err:
        bound(item_table(["a", "b", "c"]), None, **params)
    assert message in str(err.value)


def test_bind_checks_vectors_and_the_item_table():
    items = item_table(["a", "b", "c"])
    with pytest.raises(ValueError, match=r"must be \[n_items=3, d\], got shape \(2, 4\)"):
        bound(items, np.ones((2, 4), np.float32), **{"lambda": 0.5})
    with pytest.raises(ValueError, match="contain nan or inf"):
        bound(items, np.full((3, 2), np.nan, np.float32), **{"lambda": 0.5})
    with pytest.raises(ValueError, match="exactly once"):
        bound(items.assign(item_id=[0, 1, 5]))
    with pytest.raises(ValueError, match="needs an item_id column"):
        bound(items.drop(columns="item_id"))
    with pytest.raises(ValueError, match="need a created_at column"):
        bound(items.drop(columns="created_at"), freshness={"max_age_days": 5, "bonus": 0.1})


def test_original_ids_are_resolved_at_bind():
    items = item_table(["a", "b", "c"])
    reranker = RuleDiversityReRanker(id_space="original", filters={"blocked": ["B2"]}, pins=[{"slot": 0, "item": "B3"}])
    reranker.bind(items, item_ids=np.array(["B1", "B2", "B3"], dtype=object))
    assert run(reranker, make_pool([0, 1]), 3).candidates.items.tolist() == [2, 0]
    with pytest.raises(ValueError, match="item id 'B9' is not in the catalog"):
        RuleDiversityReRanker(id_space="original", filters={"blocked": ["B9"]}).bind(items, item_ids=np.array(["B1", "B2", "B3"]))


def test_request_errors():
    reranker = bound(item_table(["a", "b"]))
    with pytest.raises(ValueError, match=r"outside \[0, 2\)"):
        run(reranker, make_pool([0, 5]), 2)
    with pytest.raises(ValueError, match="2 pools for a batch of 1 requests"):
        reranker.rerank(one_batch(), [make_pool([0]), make_pool([1])], 2)
    with pytest.raises(ValueError, match="k must be >= 0"):
        run(reranker, make_pool([0]), -1)
