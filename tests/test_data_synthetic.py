"""The synthetic generator: determinism, speed and the structure it promises."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from pipeline.data import Dataset, leave_one_out, synthesize
from pipeline.data.synthetic import SPAN, T0

SMALL = dict(n_users=300, n_items=200, n_categories=6, n_brands=10, mean_length=10)


@pytest.fixture(scope="module")
def data_default() -> tuple[Dataset, float]:
    start = time.perf_counter()
    data = synthesize()
    return data, time.perf_counter() - start


def test_defaults_are_shaped(data_default: tuple[Dataset, float]) -> None:
    data, _ = data_default  # its speed is a benchmark figure, not a test
    assert (data.n_users, data.n_items, data.name) == (2000, 1000, "synthetic")
    assert data.has_time and data.has_text
    assert 24_000 < data.n_interactions < 32_000  # mean length 14
    assert data.fingerprint() == synthesize().fingerprint()


def test_same_seed_same_frames_other_seed_differs() -> None:
    first, second, other = synthesize(**SMALL, seed=5), synthesize(**SMALL, seed=5), synthesize(**SMALL, seed=6)
    pd.testing.assert_frame_equal(first.interactions, second.interactions)
    pd.testing.assert_frame_equal(first.items, second.items)
    assert np.array_equal(first.item_ids, second.item_ids)
    assert not first.interactions.equals(other.interactions)
    assert not first.items.equals(other.items)


def test_global_numpy_random_state_is_untouched() -> None:
    np.random.seed(123)
    expected = np.random.random()
    np.random.seed(123)
    synthesize(**SMALL, seed=1)
    assert np.random.random() == expected


def test_sequences_lengths_repeats_and_time(data_default: tuple[Dataset, float]) -> None:
    frame = data_default[0].interactions
    assert frame.groupby("user_id").size().min() >= 5
    assert not frame.duplicated(["user_id", "item_id"]).any()
    same_user = frame["user_id"].diff() == 0
    assert (frame["timestamp"].diff()[same_user] > 0).all()  # strictly increasing within a user
    assert frame["timestamp"].min() >= T0 and frame["timestamp"].max() <= T0 + SPAN + 1000


def test_popularity_is_skewed(data_default: tuple[Dataset, float]) -> None:
    counts = np.sort(data_default[0].interactions["item_id"].value_counts().to_numpy())[::-1]
    top_decile_share = counts[: len(counts) // 10].sum() / counts.sum()
    assert top_decile_share > 0.4


def test_category_stickiness_is_measurable(data_default: tuple[Dataset, float]) -> None:
    data = data_default[0]
    frame = data.interactions
    category = data.items["category"].to_numpy()[frame["item_id"].to_numpy()]
    same_user = frame["user_id"].to_numpy()[1:] == frame["user_id"].to_numpy()[:-1]
    observed = np.mean((category[1:] == category[:-1])[same_user])
    shuffle = np.lexsort((np.random.default_rng(0).random(len(frame)), frame["user_id"].to_numpy()))
    shuffled = category[shuffle]  # each user's items in random order
    baseline = np.mean((shuffled[1:] == shuffled[:-1])[same_user])
    assert observed > 0.55
    assert observed > baseline + 0.2


def test_covisitation_beats_popularity(data_default: tuple[Dataset, float]) -> None:
    data = data_default[0]
    split = leave_one_out(data.interactions)
    history = split.history("test")
    users, items = history["user_id"].to_numpy(), history["item_id"].to_numpy()
    follows = users[1:] == users[:-1]
    pairs = np.zeros((data.n_items, data.n_items))
    np.add.at(pairs, (items[:-1][follows], items[1:][follows]), 1.0)
    last = history.groupby("user_id")["item_id"].last().reindex(split.test["user_id"]).to_numpy()
    target = split.test["item_id"].to_numpy()
    popular = np.argsort(-np.bincount(items, minlength=data.n_items))[:10]
    pop_hits = np.isin(target, popular).mean()
    covisit_top = np.argsort(-(pairs[last] + 1e-6 * np.bincount(items, minlength=data.n_items)), axis=1)[:, :10]
    covisit_hits = (covisit_top == target[:, None]).any(axis=1).mean()
    assert covisit_hits > 1.5 * pop_hits  # about 0.25 vs 0.12 for seed 0


def test_items_metadata_and_creation_times(data_default: tuple[Dataset, float]) -> None:
    data = data_default[0]
    items = data.items
    first = items.iloc[0]
    assert first["title"].split()[:2] == [first["category"], first["brand"]]
    assert items["categories"].str.startswith("Root|cat").all()
    assert (items["categories"] == "Root|" + items["category"]).all()
    assert items["price"].gt(0).all() and items["brand"].str.match(r"^brand\d+$").all()
    late = items["created_at"] >= T0 + 0.8 * SPAN
    assert 0.08 <= late.mean() <= 0.12
    frame = data.interactions
    created = items["created_at"].to_numpy()[frame["item_id"].to_numpy()]
    assert (frame["timestamp"].to_numpy() >= created).all()
    assert late.to_numpy()[frame["item_id"].to_numpy()].sum() > 100  # new items do get interactions


def test_rejects_too_short_sequences() -> None:
    with pytest.raises(ValueError, match="mean_length must be >= 5"):
        synthesize(mean_length=3)


def test_catalog_generator_scales_linearly_and_is_seeded() -> None:
    from pipeline.data import synthesize_catalog

    a = synthesize_catalog(2000, items_per_category=50, seed=4)
    b = synthesize_catalog(2000, items_per_category=50, seed=4)
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != synthesize_catalog(2000, items_per_category=50, seed=5).fingerprint()
    assert a.n_items == 2000 and a.n_users == 2500  # 10 events per item, 8 per user
    assert abs(a.n_interactions - 20_000) < 1500
    inter = a.interactions
    per_user = inter.groupby("user_id").size()
    assert per_user.min() >= 5
    assert (inter.groupby("user_id")["timestamp"].diff().dropna() > 0).all()  # strictly increasing per user
    cat = a.items.set_index("item_id")["category"].to_numpy()[inter["item_id"].to_numpy()]
    same = (cat[1:] == cat[:-1])[inter["user_id"].to_numpy()[1:] == inter["user_id"].to_numpy()[:-1]]
    assert 0.6 < same.mean() < 0.75  # the sticky walk: stay 0.6, plus moves that land on the same category
    counts = np.bincount(inter["item_id"].to_numpy(), minlength=a.n_items)
    assert counts.max() > 20 * np.median(counts[counts > 0])  # Zipf popularity inside the categories
    with pytest.raises(ValueError, match="mean_length"):
        synthesize_catalog(2000, mean_length=3)
