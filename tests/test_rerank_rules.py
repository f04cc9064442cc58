"""Example tests for the score rules, filters and pins, and for each documented conflict outcome."""
import numpy as np
import pytest

from channels.item2item import ItemToItemChannel
from channels.popularity import PopularityChannel
from pipeline.cascade import Cascade
from pipeline.core.types import Request
from rerank.passthrough import PassThroughReRanker
from rerank.reranker import RuleDiversityReRanker
from rerank.rules import relevance
from tests.helpers import tiny_fit_data
from tests.test_rerank_support import DAY, NOW, bound, item_table, make_pool, one_batch, run

SIX = item_table(["a", "a", "b", "b", "c", "c"], brands=["x", "y", "x", "y", "x", ""], prices=[5, 15, 25, 8, 50, 12])


def test_relevance_uses_order_only_ties_share_and_bad_scores_map_to_zero():
    got = relevance(np.array([-3.0, 10.0, -3.0, -np.inf, np.nan, np.inf], np.float32))
    assert got.tolist() == pytest.approx([1 / 3, 2 / 3, 1 / 3, 0.0, 0.0, 1.0])
    scores = np.array([-5.0, -1.0, 2.0, 0.5])
    assert relevance(scores).tolist() == relevance(np.exp(scores) * 3 - 7).tolist()


def test_default_rules_reproduce_the_pass_through_order_and_reasons():
    pool = make_pool([3, 0, 5, 1, 4], [0.2, 0.9, -1.0, 0.2, 5.0])
    ours = run(bound(SIX), pool, 4).candidates
    theirs = PassThroughReRanker().rerank(one_batch(), [pool], 4)[0]
    assert ours.items.tolist() == theirs.items.tolist() == [4, 0, 1, 3]  # tie 0.2: lower id first
    assert ours.reasons == theirs.reasons == [["channel:popularity", "channel:item2item"]] * 4
    assert ours.scores.tolist() == pytest.approx([1.0, 0.75, 0.5, 0.5])  # rank relevance


def test_any_ranker_scale_gives_the_same_list():
    reranker = bound(SIX, boosts=[{"attribute": "category", "values": ["c"], "factor": 1.5}])
    pool = make_pool([0, 1, 2, 3, 4, 5], [-10.0, -11.0, -12.0, -13.0, -14.0, -15.0])
    shifted = make_pool([0, 1, 2, 3, 4, 5], [1e6, 1e5, 1e4, 1e3, 1e2, 1e1])
    assert run(reranker, pool, 6).candidates.items.tolist() == run(reranker, shifted, 6).candidates.items.tolist()


def test_items_scored_minus_inf_or_nan_are_dropped():
    pool = make_pool([0, 1, 2], [1.0, -np.inf, np.nan])
    assert run(bound(SIX), pool, 3).candidates.items.tolist() == [0]


def test_filters_seen_blocked_unavailable_by_id_and_by_column():
    items = SIX.assign(in_stock=[True, True, False, True, True, True])
    reranker = bound(items, filters={"blocked": [1], "unavailable": [4], "available_column": "in_stock"})
    out = run(reranker, make_pool(range(6)), 6, history=[0]).candidates
    assert out.items.tolist() == [3, 5]
    keep_seen = bound(SIX, filters={"seen": False})
    assert run(keep_seen, make_pool([0, 1]), 2, history=[0]).candidates.items.tolist() == [0, 1]


def test_multiplicative_boost_and_additive_demotion_with_reasons():
    reranker = bound(SIX, boosts=[
        {"attribute": "category", "values": ["c"], "factor": 2.0},
        {"attribute": "brand", "values": ["x"], "add": -0.3},
    ])
    out = run(reranker, make_pool([0, 1, 2, 3, 4, 5]), 6).candidates
    # relevance by rank: item0 1.0, 1 5/6, 2 4/6, 3 3/6, 4 2/6, 5 1/6
    expected = {0: 0.7, 1: 5 / 6, 2: 4 / 6 - 0.3, 3: 0.5, 4: 2 * 2 / 6 - 0.3, 5: 2 / 6}
    assert out.items.tolist() == sorted(expected, key=lambda i: (-expected[i], i))
    assert out.scores.tolist() == pytest.approx([expected[i] for i in out.items.tolist()], abs=1e-6)
    reasons = dict(zip(out.items.tolist(), out.reasons))
    assert reasons[4][2:] == ["boost:category=c x2", "demote:brand=x -0.3"]
    assert reasons[1] == ["channel:popularity", "channel:item2item"]


def test_price_range_boost_is_half_open():
    reranker = bound(SIX, boosts=[{"attribute": "price", "min": 10, "max": 25, "factor": 10}])
    out = run(reranker, make_pool([0, 1, 2, 3, 4, 5]), 3).candidates
    assert out.items.tolist() == [1, 5, 0]  # prices 15 and 12 are in [10, 25); 25 is not
    assert "boost:price=[10,25) x10" in out.reasons[0]


def test_freshness_bonus_falls_linearly_with_age():
    items = item_table(["a"] * 3, created=[NOW - 50 * DAY, NOW - 2 * DAY, NOW + 5 * DAY])
    reranker = bound(items, freshness={"max_age_days": 10, "bonus": 0.5})
    out = run(reranker, make_pool([0, 1, 2]), 3).candidates
    # relevance 1, 2/3, 1/3 + bonus 0, 0.4 (age 2 days), 0.5 (created after now: age 0)
    assert out.items.tolist() == [1, 0, 2]
    assert out.scores.tolist() == pytest.approx([2 / 3 + 0.4, 1.0, 1 / 3 + 0.5])
    assert out.reasons[0][-1] == "fresh:age=2d +0.4" and out.reasons[2][-1] == "fresh:age=0d +0.5"
    assert not any(r.startswith("fresh") for r in out.reasons[1])


def test_fixed_pin_from_outside_the_pool_holds_its_slot():
    res = run(bound(SIX, pins=[{"slot": 1, "item": 5}]), make_pool([0, 1, 2]), 3)
    out = res.candidates
    assert out.items.tolist() == [0, 5, 1] and res.notes == ()
    assert out.reasons[1] == ["pinned:slot=1"] and np.isnan(out.scores[1])
    assert not out.found[1].any() and out.channel_rank[1].tolist() == [-1, -1]
    assert np.isnan(out.channel_score[1]).all()


def test_pinned_pool_item_keeps_its_channels_and_leaves_its_old_place():
    out = run(bound(SIX, pins=[{"slot": 2, "item": 0}]), make_pool([0, 1, 2, 3]), 4).candidates
    assert out.items.tolist() == [1, 2, 0, 3]
    assert out.reasons[2] == ["channel:popularity", "channel:item2item", "pinned:slot=2"]


def test_newest_pin_takes_the_most_recent_eligible_item_of_the_category():
    items = item_table(["a", "b", "b", "b", "b"], created=[0, 10 * DAY, 90 * DAY, 95 * DAY, NOW + DAY])
    reranker = bound(items, filters={"blocked": [3]}, pins=[{"slot": 0, "newest": {"attribute": "category", "values": ["b"]}}])
    out = run(reranker, make_pool([0, 1]), 3).candidates
    # item 4 is not created yet, 3 is blocked: item 2 is the newest available 'b'
    assert out.items.tolist() == [2, 0, 1]
    assert out.reasons[0] == ["pinned:slot=0", "pinned:rule=newest category=b"]
    seen = run(reranker, make_pool([0, 1]), 3, history=[2]).candidates
    assert seen.items[0] == 1 and seen.items.tolist() == [1, 0]  # 2 seen: next newest is 1 (in pool)


def test_newest_pin_with_max_age_and_nothing_eligible_is_dropped_with_a_note():
    items = item_table(["a", "b"], created=[0, 10 * DAY])
    reranker = bound(items, pins=[{"slot": 0, "newest": {"attribute": "category", "values": ["b"]}, "max_age_days": 30}])
    res = run(reranker, make_pool([0]), 1, now=41 * DAY)
    assert res.candidates.items.tolist() == [0]
    assert res.notes == ("pin slot=0 (newest category=b) dropped: no eligible item matches",)
    assert run(reranker, make_pool([0]), 1, now=39 * DAY).candidates.items.tolist() == [1]


def test_a_rule_pin_never_repeats_a_fixed_pin():
    items = item_table(["b", "b", "a"], created=[5 * DAY, 9 * DAY, 0])
    pins = [{"slot": 0, "newest": {"attribute": "category", "values": ["b"]}}, {"slot": 1, "item": 1}]
    out = run(bound(items, pins=pins), make_pool([2]), 3).candidates
    assert out.items.tolist() == [0, 1, 2]


@pytest.mark.parametrize(
    "filters, history, why",
    [({"blocked": [4]}, [], "blocked"), ({"unavailable": [4]}, [], "unavailable"), ({}, [4], "seen")],
)
def test_a_filtered_pin_is_dropped_and_its_slot_filled_normally(filters, history, why):
    res = run(bound(SIX, filters=filters, pins=[{"slot": 0, "item": 4}]), make_pool([0, 1, 4]), 2, history=history)
    assert res.candidates.items.tolist() == [0, 1]
    assert res.notes == (f"pin slot=0 (item=4) dropped: item 4 is {why}",)


def test_pins_beyond_k_and_more_pins_than_k_are_dropped():
    pins = [{"slot": s, "item": i} for s, i in [(0, 5), (1, 4), (2, 3), (7, 2)]]
    res = run(bound(SIX, pins=pins), make_pool([0, 1]), 2)
    assert res.candidates.items.tolist() == [5, 4]
    assert res.notes == (
        "pin slot=2 (item=3) dropped: slot beyond k=2",
        "pin slot=7 (item=2) dropped: slot beyond k=2",
    )


def test_a_pin_past_the_end_of_a_short_list_is_dropped_not_moved():
    res = run(bound(SIX, pins=[{"slot": 1, "item": 5}, {"slot": 4, "item": 4}]), make_pool([0, 1]), 6)
    assert res.candidates.items.tolist() == [0, 5, 1]
    assert res.notes == ("pin slot=4 (item=4) dropped: list ends at 3", "list ends at 3 < k=6: pool exhausted")


def test_a_dropped_pin_from_the_pool_competes_normally_and_nearer_pins_hold():
    pins = [{"slot": 2, "item": 1}, {"slot": 3, "item": 2}]
    res = run(bound(SIX, pins=pins), make_pool([0, 1, 2]), 5)
    # with both pins the list would end at 1 (only item 0 is free); dropping slot 3 frees item 2
    assert res.candidates.items.tolist() == [0, 2, 1]
    assert res.notes == ("pin slot=3 (item=2) dropped: list ends at 1", "list ends at 3 < k=5: pool exhausted")


def test_k_zero_gives_an_empty_list():
    res = run(bound(SIX, pins=[{"slot": 0, "item": 1}]), make_pool([0, 1]), 0)
    assert len(res.candidates) == 0 and res.notes == ("pin slot=0 (item=1) dropped: slot beyond k=0",)


def test_pool_order_and_duplicate_rows_do_not_change_the_answer():
    reranker = bound(SIX, boosts=[{"attribute": "brand", "values": ["y"], "factor": 1.3}])
    pool = make_pool([0, 1, 2, 3, 4], [0.5, 0.1, 0.9, 0.9, -2])
    shuffled = make_pool([4, 3, 2, 1, 0, 2], [-2, 0.9, 0.9, 0.1, 0.5, -7])  # item 2 twice: best score kept
    a, b = run(reranker, pool, 5).candidates, run(reranker, shuffled, 5).candidates
    assert a.items.tolist() == b.items.tolist() and a.reasons == b.reasons
    assert a.scores.tolist() == b.scores.tolist()


def test_a_duplicate_row_scored_nan_does_not_hide_the_usable_one():
    pool = make_pool([1, 0, 1, 2, 2], [np.nan, 0.2, 0.5, 0.9, -np.inf])
    out = run(bound(SIX), pool, 3).candidates
    assert out.items.tolist() == [2, 1, 0] and out.scores.tolist() == pytest.approx([1.0, 2 / 3, 1 / 3])


def test_each_row_of_a_batch_uses_its_own_history_and_time():
    items = item_table(["a", "a", "a"], created=[0, 0, 50 * DAY])
    reranker = bound(items, freshness={"max_age_days": 10, "bonus": 2.0})
    batch = one_batch(rows=2)
    batch = type(batch).from_sequences([0, 1], [np.array([0]), np.array([], np.int64)], now=[52 * DAY, 90 * DAY])
    first, second = reranker.rerank(batch, [make_pool([0, 1, 2])] * 2, 3)
    assert first.items.tolist() == [2, 1] and second.items.tolist() == [0, 1, 2]


def test_plugs_into_the_cascade_after_the_ranker():
    data = tiny_fit_data()
    reranker = RuleDiversityReRanker(
        pins=[{"slot": 0, "item": 4}], dedup={"attribute": "category"},
        boosts=[{"attribute": "category", "values": ["c"], "factor": 1.5}],
    ).bind(data.items)
    pop = PopularityChannel(half_life_days=None).fit(data)
    cascade = Cascade([pop, ItemToItemChannel(window=2).fit(data)], {"popularity": 5, "item2item": 5}, reranker=reranker)
    rec = cascade.recommend(Request(user=0, history=np.array([0]), history_times=np.array([DAY]), k=3, now=50 * DAY))
    # pool by fused score: 1 (a), 2 (b), 5 (c, boosted), 3 (b), 4 (c); pinned 4 holds back 5
    assert rec.items.tolist() == [4, 1, 2]
    both = ["channel:popularity", "channel:item2item"]
    assert rec.reasons == [both + ["pinned:slot=0"], both, both + ["dedup:category"]]
