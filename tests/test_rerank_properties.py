"""Property-based tests: random catalogs, pools and rule sets; the invariants must always hold."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rerank.reranker import RerankResult, RuleDiversityReRanker
from tests.test_rerank_support import DAY, NOW, item_table, make_pool, run

CATEGORIES = ["a", "b", "c"]
BRANDS = ["x", "y", "z", ""]
SCORES = st.one_of(
    st.floats(-1e3, 1e3, allow_nan=False), st.sampled_from([0.0, 1.0, -1.0]), st.just(-np.inf), st.just(np.nan)
)


@dataclass
class Scenario:
    items: pd.DataFrame
    vectors: np.ndarray
    pool_items: list[int]
    scores: list[float]
    history: list[int]
    params: dict[str, Any]
    k: int


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """The catalog comes from a drawn seed (cheap to generate); pool, history and rules are drawn."""
    n = draw(st.integers(3, 25))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    items = item_table(
        rng.choice(CATEGORIES, n).tolist(), rng.choice(BRANDS, n).tolist(), prices=rng.uniform(0, 100, n),
        created=rng.integers(0, 121, n) * DAY, in_stock=(rng.random(n) < 0.8).tolist(),
    )
    item = st.integers(0, n - 1)
    pool_items = draw(st.lists(item, max_size=30))
    return Scenario(
        items, rng.normal(size=(n, 3)).astype(np.float32), pool_items,
        draw(st.lists(SCORES, min_size=len(pool_items), max_size=len(pool_items))),
        draw(st.lists(item, max_size=5)), draw(rule_sets(n)), draw(st.integers(0, 12)),
    )


@st.composite
def rule_sets(draw: st.DrawFn, n: int) -> dict[str, Any]:
    item = st.integers(0, n - 1)
    slots = draw(st.lists(st.integers(0, 12), max_size=min(4, n), unique=True))
    fixed = draw(st.lists(item, min_size=len(slots), max_size=len(slots), unique=True))
    pins = [
        {"slot": s, "item": i} if draw(st.booleans())
        else {"slot": s, "newest": {"attribute": "category", "values": [draw(st.sampled_from(CATEGORIES))]}}
        for s, i in zip(slots, fixed)
    ]
    cap = st.fixed_dictionaries({
        "attribute": st.sampled_from(["category", "brand"]), "max_items": st.integers(1, 3), "window": st.integers(1, 6),
    })
    boost = st.fixed_dictionaries({
        "attribute": st.just("category"), "values": st.lists(st.sampled_from(CATEGORIES), min_size=1, max_size=2),
        "factor": st.floats(0.2, 3.0), "add": st.sampled_from([-0.3, 0.1, 0.2]),
    })
    return {
        "filters": {"blocked": draw(st.lists(item, max_size=3)), "unavailable": draw(st.lists(item, max_size=2)),
                    "available_column": "in_stock"},
        "pins": pins,
        "caps": draw(st.lists(cap, max_size=2)),
        "dedup": draw(st.sampled_from([None, {"attribute": "brand"}])),
        "lambda": draw(st.sampled_from([1.0, 0.7, 0.3, 0.0])),
        "coverage": draw(st.sampled_from([None, {"attribute": "category", "bonus": 0.2}])),
        "boosts": draw(st.lists(boost, max_size=2)),
        "freshness": draw(st.sampled_from([None, {"max_age_days": 30, "bonus": 0.3}])),
        "on_unmet_caps": draw(st.sampled_from(["shorten", "relax"])),
    }


def rerun(sc: Scenario, order: np.ndarray | None = None) -> RerankResult:
    reranker = RuleDiversityReRanker(**sc.params).bind(sc.items, sc.vectors)
    ids, scores = np.asarray(sc.pool_items, np.int64), np.asarray(sc.scores, np.float64)
    if order is not None:
        ids, scores = ids[order], scores[order]
    return run(reranker, make_pool(ids, scores), sc.k, history=sc.history, now=NOW)


def pinned_positions(res: RerankResult) -> set[int]:
    return {p for p, r in enumerate(res.candidates.reasons) if f"pinned:slot={p}" in r}


def check_windows(sc: Scenario, res: RerankResult) -> None:
    out, pinned = res.candidates, pinned_positions(res)
    for cap in sc.params["caps"]:
        column = sc.items[cap["attribute"]].to_numpy()
        values = [column[i] for i in out.items]
        for start in range(max(len(values) - cap["window"] + 1, 1)):
            window = range(start, min(start + cap["window"], len(values)))
            for v in {values[p] for p in window if values[p] != ""}:
                count = sum(values[p] == v for p in window)
                by_pins = sum(values[p] == v for p in window if p in pinned)
                relaxed = any(f"relaxed:cap:{cap['attribute']}" in out.reasons[p] for p in window)
                assert count <= max(cap["max_items"], by_pins) or relaxed, (cap, values, start)


def check_dedup(sc: Scenario, res: RerankResult) -> None:
    if sc.params["dedup"] is None:
        return
    out, pinned = res.candidates, pinned_positions(res)
    brands = sc.items["brand"].to_numpy()
    pinned_brands = {brands[out.items[p]] for p in pinned}
    free = [brands[i] for p, i in enumerate(out.items) if p not in pinned and brands[i] != ""]
    assert len(free) == len(set(free)) and not set(free) & pinned_brands


def filtered_items(sc: Scenario) -> set[int]:
    f = sc.params["filters"]
    stock = sc.items["in_stock"].to_numpy()
    return set(sc.history) | set(f["blocked"]) | set(f["unavailable"]) | {i for i in range(len(stock)) if not stock[i]}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_invariants_hold_for_random_pools_and_rules(sc: Scenario):
    res = rerun(sc)
    out = res.candidates
    items = out.items.tolist()
    assert len(items) <= sc.k and len(items) == len(set(items))  # length, no duplicates
    assert not set(items) & filtered_items(sc)  # filtered items never appear, not even pinned
    best = pd.Series(sc.scores, dtype=np.float64).groupby(pd.Series(sc.pool_items, dtype=np.int64)).max()
    pinned = pinned_positions(res)
    for p, i in enumerate(items):  # non-pinned items were in the pool with a usable score
        if p not in pinned:
            assert i in best.index and not (np.isnan(best[i]) or best[i] == -np.inf)
    for pin in sc.params["pins"]:  # a fixed pin holds exactly its slot, or is dropped with a note
        slot, item = pin["slot"], pin.get("item")
        if item is not None and item not in filtered_items(sc) and slot < len(items):
            assert items[slot] == item and slot in pinned
        elif item is not None:  # dropped: its item may still come from the pool or a rule pin
            assert slot not in pinned and any(n.startswith(f"pin slot={slot} ") for n in res.notes)
            at = items.index(item) if item in items else None
            assert at is None or at not in pinned or any(r.startswith("pinned:rule=") for r in out.reasons[at])
    check_windows(sc, res)
    check_dedup(sc, res)
    for p, r in enumerate(out.reasons):  # every item says why it is there
        assert r and [x for x in r if x.startswith("channel:")] == [f"channel:{c}" for c in out.found_by(p)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.randoms(use_true_random=False))
def test_identical_inputs_give_identical_results_whatever_the_pool_order(sc: Scenario, rnd):
    a = rerun(sc)
    order = np.arange(len(sc.pool_items))
    rnd.shuffle(order)
    for b in (rerun(sc), rerun(sc, order)):
        assert a.candidates.items.tolist() == b.candidates.items.tolist()
        assert a.candidates.reasons == b.candidates.reasons and a.notes == b.notes
        np.testing.assert_array_equal(a.candidates.scores, b.candidates.scores)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_without_caps_or_dedup_the_list_fills_up_to_k(sc: Scenario):
    sc.params.update(caps=[], dedup=None)
    res = rerun(sc)
    pinned = pinned_positions(res)
    usable = {i for i, s in zip(sc.pool_items, sc.scores) if not (np.isnan(s) or s == -np.inf)}
    pinned_items = {int(res.candidates.items[p]) for p in pinned}
    left = len(usable - filtered_items(sc) - pinned_items)
    length = 0
    for p in range(sc.k):  # pins at their slots, pool items elsewhere, until the pool runs out
        if p in pinned or left:
            left -= p not in pinned
            length += 1
        else:
            break
    assert len(res.candidates) == length
