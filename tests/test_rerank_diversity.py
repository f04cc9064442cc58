"""Example tests for MMR, coverage, dedup, window caps, their conflicts with pins, and the fast
selection against the plain reference."""
import dataclasses

import numpy as np
import pytest

from rerank.diversity import Constraint, SelectionInput, blocked_codes, select, select_reference
from tests.test_rerank_support import bound, item_table, make_pool, run

# items 0 and 1 are near-duplicates (cosine 0.99); 2 and 3 are orthogonal to everything else
VECTORS = np.array([[1.0, 0.0, 0.0], [0.99, 0.14, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)
FOUR = item_table(["a", "a", "b", "c"], brands=["x", "x", "y", ""])


def test_lambda_one_is_pure_relevance_and_needs_no_vectors():
    assert run(bound(FOUR), make_pool([0, 1, 2, 3]), 4).candidates.items.tolist() == [0, 1, 2, 3]


def test_mmr_trades_relevance_for_novelty():
    pool = make_pool([0, 1, 2, 3])
    out = run(bound(FOUR, VECTORS, **{"lambda": 0.5}), pool, 4).candidates
    # step 2: item1 0.5*0.75 - 0.5*0.99 < item2 0.5*0.5 - 0 ; step 3: item3 0.125 - 0 > item1
    assert out.items.tolist() == [0, 2, 3, 1]
    assert [r[2:] for r in out.reasons] == [[], ["mmr"], ["mmr"], []]
    assert run(bound(FOUR, VECTORS, **{"lambda": 0.9}), pool, 4).candidates.items.tolist() == [0, 1, 2, 3]


def test_negative_similarity_counts_as_novelty():
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32)
    out = run(bound(FOUR, vectors, **{"lambda": 0.5}), make_pool([0, 1, 2, 3]), 2).candidates
    assert out.items.tolist() == [0, 3]  # 0.5 * 0.25 + 0.5 * 1 beats 0.5 * 0.75 - 0


def test_mmr_counts_pins_as_already_chosen():
    out = run(bound(FOUR, VECTORS, **{"lambda": 0.5}, pins=[{"slot": 1, "item": 1}]), make_pool([0, 2, 3]), 3).candidates
    # item 0 is nearly the pinned item 1, so item 2 leads and 3 follows the pin
    assert out.items.tolist() == [2, 1, 3]


def test_coverage_bonus_promotes_unseen_categories():
    items = item_table(["a", "a", "a", "b"])
    out = run(bound(items, coverage={"attribute": "category", "bonus": 0.6}), make_pool([0, 1, 2, 3]), 4).candidates
    assert out.items.tolist() == [0, 3, 1, 2]
    assert out.reasons[1][2:] == ["coverage:category"]  # 0.25 + 0.6 beats 0.75
    assert run(bound(items, coverage={"attribute": "category", "bonus": 0.4}), make_pool([0, 1, 2, 3]), 4
               ).candidates.items.tolist() == [0, 1, 3, 2]


def test_dedup_keeps_the_best_item_per_group_and_ignores_missing_values():
    items = item_table(["a"] * 5, brands=["x", "x", "y", "", ""])
    res = run(bound(items, dedup={"attribute": "brand"}), make_pool([0, 1, 2, 3, 4]), 5)
    assert res.candidates.items.tolist() == [0, 2, 3, 4]
    assert res.candidates.reasons[1][2:] == ["dedup:brand"]  # moved up past the held-back item 1
    assert res.notes == ("list ends at 4 < k=5: no remaining item satisfies dedup:brand",)


def test_window_cap_spreads_a_category():
    items = item_table(["a", "a", "a", "b", "b", "c"])
    out = run(bound(items, caps=[{"attribute": "category", "max_items": 1, "window": 2}]), make_pool(range(6)), 6).candidates
    assert out.items.tolist() == [0, 3, 1, 4, 2, 5]
    assert out.reasons[1][2:] == ["cap:category"] and out.reasons[0][2:] == []


def test_unmeetable_cap_shortens_the_list_by_default_and_says_so():
    items = item_table(["a", "a", "a", "b"])
    caps = [{"attribute": "category", "max_items": 1, "window": 3}]
    res = run(bound(items, caps=caps), make_pool([0, 1, 2, 3]), 4)
    assert res.candidates.items.tolist() == [0, 3]
    assert res.notes == ("list ends at 2 < k=4: no remaining item satisfies cap:category",)


def test_unmeetable_cap_with_relax_fills_with_the_best_item_and_tags_it():
    items = item_table(["a", "a", "a", "b"], brands=["x", "x", "y", "z"])
    params = {"caps": [{"attribute": "category", "max_items": 1, "window": 3}], "on_unmet_caps": "relax"}
    res = run(bound(items, **params), make_pool([0, 1, 2, 3]), 4)
    assert res.candidates.items.tolist() == [0, 3, 1, 2] and res.notes == ()
    assert res.candidates.reasons[2][2:] == ["relaxed:cap:category"]
    # dedup is never relaxed: brand x allows one of items 0 and 1 only
    res = run(bound(items, dedup={"attribute": "brand"}, **params), make_pool([0, 1, 2, 3]), 4)
    assert res.candidates.items.tolist() == [0, 3, 2]
    assert res.notes == ("list ends at 3 < k=4: no remaining item satisfies dedup:brand, cap:category",)


def test_pins_beat_caps_and_other_items_make_room_around_them():
    items = item_table(["a", "a", "a", "b", "b"])
    params = {"caps": [{"attribute": "category", "max_items": 1, "window": 2}],
              "pins": [{"slot": 1, "item": 1}, {"slot": 2, "item": 2}]}
    res = run(bound(items, **params), make_pool([0, 3, 4]), 5)
    # pins 1 and 2 (both 'a') sit side by side; slot 0 and 3 must avoid 'a' next to them
    assert res.candidates.items.tolist() == [3, 1, 2, 4, 0]
    assert res.candidates.reasons[0][2:] == ["cap:category"] and res.notes == ()


def test_pins_beat_dedup_and_block_their_group_for_other_items():
    items = item_table(["a"] * 4, brands=["x", "x", "x", "y"])
    params = {"dedup": {"attribute": "brand"}, "pins": [{"slot": 0, "item": 1}, {"slot": 1, "item": 2}]}
    out = run(bound(items, **params), make_pool([0, 3]), 4).candidates
    assert out.items.tolist() == [1, 2, 3]


@pytest.mark.parametrize(
    "slots, p, max_items, window, expected",
    [
        ([0, -1, -1, -1], 1, 1, 2, [0]),
        ([0, -1, -1, -1], 2, 1, 2, []),
        ([0, 1, -1, 1, -1], 2, 2, 3, [1]),
        ([0, 0, -1, -1, 0], 2, 2, 3, [0]),
        ([-1, -1, 2, 2], 0, 2, 4, [2]),
        ([3, -1, 3, -1], 1, 2, 10, [3]),
    ],
)
def test_blocked_codes(slots, p, max_items, window, expected):
    assert blocked_codes(slots, p, max_items, window) == expected


def random_input(rng: np.random.Generator, m: int, k: int) -> SelectionInput:
    n_codes = 4
    pinned = frozenset(int(s) for s in rng.choice(k, size=min(2, k), replace=False)) if k else frozenset()
    vecs = rng.normal(size=(m + len(pinned), 3)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)

    def constraint(name: str, hard: bool) -> Constraint:
        slots = np.full(k, -1, np.int64)
        slots[list(pinned)] = rng.integers(-1, n_codes, len(pinned))
        return Constraint(name, rng.integers(-1, n_codes, m), slots, n_codes, int(rng.integers(1, 3)),
                          int(rng.integers(1, 5)), hard)

    return SelectionInput(
        relevance=np.round(rng.random(m), 1), eligible=rng.random(m) < 0.8, k=k, pinned_slots=pinned,
        lam=float(rng.choice([1.0, 0.6, 0.2])), vectors=vecs[:m], pinned_vectors=vecs[m:],
        coverage_name="coverage:category", coverage_codes=rng.integers(-1, n_codes, m),
        coverage_pinned=rng.integers(0, n_codes, len(pinned)), coverage_bonus=0.15,
        constraints=(constraint("dedup:brand", True), constraint("cap:category", bool(rng.random() < 0.5))),
        relax=bool(rng.random() < 0.5),
    )


def test_fast_selection_matches_the_plain_reference():
    rng = np.random.default_rng(0)
    for _ in range(300):
        inp = random_input(rng, int(rng.integers(0, 25)), int(rng.integers(0, 9)))
        for variant in (inp, dataclasses.replace(inp, coverage_codes=None), dataclasses.replace(inp, constraints=())):
            fast, plain = select(variant), select_reference(variant)
            assert (fast.picks, fast.tags, fast.stop) == (plain.picks, plain.tags, plain.stop)
