import numpy as np
import pandas as pd
import pytest

from channels.item2item import ItemToItemChannel
from channels.popularity import PopularityChannel
from pipeline.core.protocols import FitData
from pipeline.core.types import PAD, RequestBatch
from tests.helpers import DAY, batch_of, tiny_fit_data


def test_popularity_is_point_in_time():
    data = tiny_fit_data()
    ch = PopularityChannel(half_life_days=None, bucket_days=1).fit(data)
    # at day 3 only interactions of days 1-2 count: item 0 x2, item 1 x2, item 4 x1
    early = ch.retrieve(batch_of([[]], now=[3 * DAY]), 3)
    assert early.items[0].tolist() == [0, 1, 4]
    assert early.scores[0, 0] == pytest.approx(2.0, abs=1e-3)
    # at day 50 everything counted: items 0 and 1 x3, item 5 x2; ties break by index
    late = ch.retrieve(batch_of([[]], now=[50 * DAY]), 2)
    assert late.items[0].tolist() == [0, 1]
    # nothing from the future: item 5 (first seen day 40) is unknown on day 10
    mid = ch.retrieve(batch_of([[]], now=[10 * DAY]), 6)
    assert 5 not in mid.items[0, mid.scores[0] > 1e-3].tolist()


def test_popularity_decay_excludes_seen_and_category():
    data = tiny_fit_data()
    ch = PopularityChannel(half_life_days=1, bucket_days=1).fit(data)
    got = ch.retrieve(batch_of([[0]], now=[50 * DAY]), 3)
    assert 0 not in got.items[0].tolist()
    assert got.items[0, 0] in (5, 1)  # recent items dominate with a 1-day half-life
    batch = batch_of([[]], now=[50 * DAY])
    batch = batch.__class__(batch.users, batch.history, batch.history_times, batch.lengths, batch.now, ({"category": "b"},))
    cat = ch.retrieve(batch, 5)
    assert set(cat.items[0][cat.items[0] != PAD].tolist()) <= {2, 3}


def test_item2item_golden_scores():
    data = tiny_fit_data()
    ch = ItemToItemChannel(window=2, forward_weight=1.0, backward_weight=0.5, history_len=2, history_decay=0.5).fit(data)
    # C[0,1]: users 0 and 1 (d=1): 2.0, plus user 2 (1 after? no). C[0,2]: user 0 at d=2: 0.5
    assert ch.matrix_[0, 1] == pytest.approx(2.0)
    assert ch.matrix_[1, 0] == pytest.approx(1.0)  # backward: 0.5 from each of users 0 and 1
    got = ch.retrieve(batch_of([[4, 0]]), 3)
    # history weights: item 0 -> 1.0, item 4 -> 0.5; scores: 1: 2.0; 5: 0.5*1 (4->5) ; 2: 0.5 ; 3: 0.5
    assert got.items[0, 0] == 1 and got.scores[0, 0] == pytest.approx(2.0)
    assert 0 not in got.items[0] and 4 not in got.items[0]


def test_item2item_only_returns_covisited_items():
    ch = ItemToItemChannel(window=1, history_len=1).fit(tiny_fit_data())
    got = ch.retrieve(batch_of([[2]]), 6)
    real = got.items[0][got.items[0] != PAD]
    assert set(real.tolist()) == {1}  # 2 was only ever next to 1 (backward)
    empty = ch.retrieve(batch_of([[]]), 4)
    assert (empty.items == PAD).all()


@pytest.mark.parametrize("cls", [PopularityChannel, ItemToItemChannel])
def test_save_load_round_trip(tmp_path, cls):
    ch = cls().fit(tiny_fit_data())
    ch.save(tmp_path / "ch")
    back = cls.load(tmp_path / "ch")
    batch = batch_of([[0], [4, 5], []], now=[45 * DAY, 45 * DAY, 45 * DAY])
    a, b = ch.retrieve(batch, 4), back.retrieve(batch, 4)
    np.testing.assert_array_equal(a.items, b.items)
    np.testing.assert_allclose(a.scores, b.scores)


@pytest.mark.parametrize("cls", [PopularityChannel, ItemToItemChannel])
def test_retrieve_before_fit_is_a_clear_error(cls):
    with pytest.raises(RuntimeError, match="call fit"):
        cls().retrieve(batch_of([[0]]), 3)


def random_fit_data(seed: int, n_items: int = 300, n_users: int = 60) -> FitData:
    """Interactions skewed to a few items (many ties in the counts), over 60 days, 4 categories."""
    rng = np.random.default_rng(seed)
    n = 2000
    frame = pd.DataFrame({"user_id": np.sort(rng.integers(0, n_users, n)),
                          "item_id": np.minimum(rng.geometric(0.05, n), n_items - 1),
                          "timestamp": rng.integers(0, 60 * DAY, n)})
    frame = frame.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
    frame["seq"] = frame.groupby("user_id").cumcount()
    items = pd.DataFrame({"item_id": np.arange(n_items), "category": [f"c{i % 4}" for i in range(n_items)]})
    return FitData(train=frame, items=items, n_users=n_users, n_items=n_items, has_time=True,
                   user_ids=np.arange(n_users).astype(str), item_ids=np.arange(n_items).astype(str))


def random_batch(rng, n_items: int, rows: int = 40, categories: bool = False) -> RequestBatch:
    """Histories from empty to most of the catalog's head, some ids past the catalog, random times."""
    lengths = rng.choice([0, 1, 5, 30, 120], size=rows)
    hist = [rng.choice(n_items + 5, size=n, replace=False) if n else np.zeros(0, np.int64) for n in lengths]
    now = rng.integers(0, 70 * DAY, rows)
    contexts = tuple({"category": str(rng.choice(["c0", "c3", "zz"]))} if categories and rng.random() < 0.5 else {}
                     for _ in range(rows))
    return RequestBatch.from_sequences(list(range(rows)), hist, now=now, contexts=contexts, max_len=50)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("head", [1, 16, 2048])
def test_popularity_head_answers_exactly_like_the_whole_catalog(seed, head):
    # property: the O(k + seen) path returns the same items and scores as scoring every item, for
    # heads short enough that rows run off them (head 1, 16) and longer than the catalog (2048)
    rng = np.random.default_rng(seed)
    ch = PopularityChannel(half_life_days=7, bucket_days=3, head=head).fit(random_fit_data(seed))
    for k in (1, 10, 64):
        batch = random_batch(rng, 300, categories=True)
        fast, dense = ch.retrieve(batch, k), ch.retrieve_dense(batch, k)
        np.testing.assert_array_equal(fast.items, dense.items)
        np.testing.assert_array_equal(fast.scores, dense.scores)


@pytest.mark.parametrize("seed", [0, 1])
def test_item2item_sparse_answer_equals_the_dense_scores(seed):
    # property: the sparse top k equals ranking the dense score rows (seen and uncovisited masked)
    from channels.topk import mask_seen, top_k

    rng = np.random.default_rng(seed)
    ch = ItemToItemChannel(window=3, history_len=4).fit(random_fit_data(seed))
    batch = random_batch(rng, 300)
    dense = (ch._query_matrix(batch) @ ch.matrix_).toarray()
    dense[dense <= 0] = -np.inf
    want = top_k(mask_seen(dense, batch), 50)
    got = ch.retrieve(batch, 50)
    np.testing.assert_array_equal(got.items, want.items)
    np.testing.assert_array_equal(got.scores, want.scores)


def test_top_k_pairs_pads_and_breaks_ties_by_index():
    from channels.topk import top_k_pairs

    got = top_k_pairs(np.array([1, 1, 1, 0]), np.array([7, 3, 5, 2]), np.array([1.0, 1.0, 2.0, -np.inf]), 3, 2)
    assert got.items.tolist() == [[PAD, PAD], [5, 3], [PAD, PAD]]
    assert got.scores[1].tolist() == [2.0, 1.0] and np.isneginf(got.scores[0]).all()


def test_popularity_head_must_be_positive():
    with pytest.raises(ValueError, match="head must be >= 1"):
        PopularityChannel(head=0)


def test_top_k_keeps_the_lowest_indices_of_a_tie_at_the_cut():
    from channels.topk import top_k

    scores = np.zeros((3, 5000), np.float32)
    scores[:, 4000] = 1.0
    scores[2, :10] = -np.inf
    got = top_k(scores, 4)
    assert got.items.tolist() == [[4000, 0, 1, 2], [4000, 0, 1, 2], [4000, 10, 11, 12]]
