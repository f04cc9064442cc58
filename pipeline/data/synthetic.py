"""Seeded synthetic data with a known structure, the default for the quickstart and fast tests.

Structure (all drawn from one `np.random.default_rng(seed)`):
- items: a category, a brand (mostly one of the category's "home" brands), a price (category
  level x brand factor), a title of tokens 'cat3 brand12 attr5 attr17 attr80', Zipf-like
  popularity, and a creation time: about 55% exist before the time range, 35% appear during its
  first 80%, and 10% in its last 20%;
- users: latent category tastes (Dirichlet), brand affinities (Gamma), at least 5 interactions
  over an active window inside the global time range, strictly increasing timestamps;
- sequences: the next category stays the same with probability STICKINESS, else follows a fixed
  sparse category-transition matrix (probability FOLLOW) or the user's taste; the item is drawn
  within that category by popularity x brand affinity among items already created and not yet
  seen by the user.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.data.dataset import Dataset, assemble

T0 = 1_577_836_800  # 2020-01-01 UTC, start of the time range
SPAN = 365 * 86_400  # the range covers one year
STICKINESS = 0.6
FOLLOW = 0.6
ZIPF_EXPONENT = 1.1
HOME_BRAND_SHARE = 0.8
ATTRS_PER_CATEGORY = 6
GLOBAL_ATTRS = 20
CREATED_SHARES = (0.55, 0.35, 0.10)  # before the range, in its first 80%, in its last 20%
CELL_BUDGET = 2_000_000  # users x items weight cells simulated at once


@dataclass(frozen=True)
class _Catalog:
    category: np.ndarray  # int64 [n_items]
    brand: np.ndarray  # int64 [n_items]
    popularity: np.ndarray  # float64 [n_items], sums to 1
    price: np.ndarray  # float64 [n_items]
    created_at: np.ndarray  # int64 [n_items], unix seconds
    titles: np.ndarray  # object [n_items]


@dataclass(frozen=True)
class _Users:
    taste: np.ndarray  # float64 [n_users, n_categories], rows sum to 1
    brand_affinity: np.ndarray  # float64 [n_users, n_brands], > 0
    lengths: np.ndarray  # int64 [n_users], >= 5
    times: np.ndarray  # int64 [sum(lengths)], per user consecutive, strictly increasing
    offsets: np.ndarray  # int64 [n_users], start of each user's block in `times`


def synthesize(
    n_users: int = 2000,
    n_items: int = 1000,
    n_categories: int = 12,
    n_brands: int = 40,
    mean_length: float = 14,
    seed: int = 0,
    name: str = "synthetic",
) -> Dataset:
    """A deterministic synthetic dataset (same seed -> identical tables)."""
    if n_users < 1 or n_items < 20 or n_categories < 1 or n_brands < 1:
        raise ValueError("synthesize needs n_users >= 1, n_items >= 20, n_categories >= 1, n_brands >= 1")
    if mean_length < 5:
        raise ValueError(f"mean_length must be >= 5 (every user has at least 5 interactions), got {mean_length}")
    rng = np.random.default_rng(seed)
    catalog = _make_catalog(rng, n_items, n_categories, n_brands)
    transitions = _category_transitions(rng, n_categories)
    max_length = int(np.sum(catalog.created_at <= T0) // 2)
    users = _make_users(rng, n_users, n_categories, n_brands, mean_length, max_length)
    user, item, time = _simulate(rng, catalog, users, transitions)
    order = np.lexsort((time, user))
    log = pd.DataFrame(
        {
            "user": np.char.add("u", user[order].astype(str)).astype(object),
            "item": np.char.add("i", item[order].astype(str)).astype(object),
            "timestamp": time[order],
        }
    )
    return assemble(name, log, _item_meta(catalog), has_time=True, has_text=True, keep_catalog=True)


def _make_catalog(rng: np.random.Generator, n_items: int, n_categories: int, n_brands: int) -> _Catalog:
    category = rng.permutation(np.arange(n_items) % n_categories).astype(np.int64)
    home_count = np.array([len(range(c, n_brands, n_categories)) for c in range(n_categories)])
    own = (rng.random(n_items) < HOME_BRAND_SHARE) & (home_count[category] > 0)
    home_pick = category + n_categories * np.floor(rng.random(n_items) * home_count[category]).astype(np.int64)
    brand = np.where(own, home_pick, rng.integers(0, n_brands, n_items)).astype(np.int64)
    popularity = 1.0 / (rng.permutation(n_items) + 1.0) ** ZIPF_EXPONENT
    category_price = np.exp(rng.normal(3.0, 0.6, n_categories))
    brand_factor = np.exp(rng.normal(0.0, 0.35, n_brands))
    price = np.round(category_price[category] * brand_factor[brand] * np.exp(rng.normal(0, 0.2, n_items)), 2)
    return _Catalog(
        category=category,
        brand=brand,
        popularity=popularity / popularity.sum(),
        price=price,
        created_at=_creation_times(rng, n_items),
        titles=_titles(rng, category, brand, n_categories),
    )


def _creation_times(rng: np.random.Generator, n_items: int) -> np.ndarray:
    """Unix seconds; exact shares per period (CREATED_SHARES), assigned to random items."""
    n_late = int(round(CREATED_SHARES[2] * n_items))
    n_mid = int(round(CREATED_SHARES[1] * n_items))
    n_old = n_items - n_mid - n_late
    fractions = np.concatenate(
        [-rng.uniform(0.0, 1.0, n_old), rng.uniform(0.0, 0.8, n_mid), rng.uniform(0.8, 0.97, n_late)]
    )
    return (T0 + np.floor(rng.permutation(fractions) * SPAN)).astype(np.int64)


def _titles(rng: np.random.Generator, category: np.ndarray, brand: np.ndarray, n_categories: int) -> np.ndarray:
    """'cat{c} brand{b} attr{x} attr{y} attr{z}': two attributes of the category, one global."""
    n = len(category)
    first = rng.integers(0, ATTRS_PER_CATEGORY, n)
    second = (first + 1 + rng.integers(0, ATTRS_PER_CATEGORY - 1, n)) % ATTRS_PER_CATEGORY
    shared = ATTRS_PER_CATEGORY * n_categories + rng.integers(0, GLOBAL_ATTRS, n)
    base = category * ATTRS_PER_CATEGORY
    tokens = zip(category, brand, base + first, base + second, shared)
    return np.array([f"cat{c} brand{b} attr{x} attr{y} attr{z}" for c, b, x, y, z in tokens], dtype=object)


def _category_transitions(rng: np.random.Generator, n_categories: int) -> np.ndarray:
    """Row c: where a user goes after category c when leaving it (two related categories)."""
    matrix = np.zeros((n_categories, n_categories))
    if n_categories == 1:
        matrix[0, 0] = 1.0
        return matrix
    weights = np.array([0.7, 0.3])
    for c in range(n_categories):
        others = np.delete(np.arange(n_categories), c)
        targets = rng.choice(others, size=min(2, len(others)), replace=False)
        matrix[c, targets] = weights[: len(targets)] / weights[: len(targets)].sum()
    return matrix


def _make_users(
    rng: np.random.Generator, n_users: int, n_categories: int, n_brands: int, mean_length: float, max_length: int
) -> _Users:
    taste = rng.dirichlet(np.full(n_categories, 0.3), n_users)
    affinity = rng.gamma(0.5, 1.0, (n_users, n_brands)) + 0.05
    extra = rng.geometric(1.0 / (mean_length - 4.0), n_users) - 1 if mean_length > 5 else np.zeros(n_users, int)
    lengths = np.minimum(5 + extra, max(5, max_length)).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return _Users(taste, affinity, lengths, _user_times(rng, lengths), offsets)


def _user_times(rng: np.random.Generator, lengths: np.ndarray) -> np.ndarray:
    """Each user's events spread over an active window [start, end] of the range, in order."""
    n_users = len(lengths)
    start = rng.uniform(0.0, 0.85, n_users)
    end = start + (1.0 - start) * rng.uniform(0.2, 1.0, n_users)
    counts = lengths + 1  # one extra gap so the last event falls before `end`
    gaps = rng.exponential(1.0, int(counts.sum()))
    owner = np.repeat(np.arange(n_users), counts)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    running = np.cumsum(gaps)
    within = running - np.repeat(running[first] - gaps[first], counts)  # inclusive, per user
    fraction = within / np.repeat(within[first + counts - 1], counts)
    keep = np.ones(len(gaps), dtype=bool)
    keep[first + counts - 1] = False
    owner, fraction = owner[keep], fraction[keep]
    seconds = T0 + np.floor((start[owner] + (end - start)[owner] * fraction) * SPAN).astype(np.int64)
    position = np.arange(len(seconds)) - np.repeat(first - np.arange(n_users), lengths)
    shifted = owner * (4 * SPAN) + (seconds - T0) - position  # per-user running max, no cross-user leak
    return np.maximum.accumulate(shifted) - owner * (4 * SPAN) + position + T0


def _simulate(
    rng: np.random.Generator, catalog: _Catalog, users: _Users, transitions: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user, item, timestamp) of every event, simulated for chunks of users."""
    n_users = len(users.lengths)
    chunk = max(1, CELL_BUDGET // len(catalog.category))
    parts = [
        _simulate_chunk(rng, catalog, users, transitions, np.arange(start, min(start + chunk, n_users)))
        for start in range(0, n_users, chunk)
    ]
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))  # type: ignore[return-value]


def _simulate_chunk(
    rng: np.random.Generator, catalog: _Catalog, users: _Users, transitions: np.ndarray, members: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    base = users.brand_affinity[members][:, catalog.brand] * catalog.popularity  # (U, I)
    seen = np.zeros(base.shape, dtype=bool)
    current = np.full(len(members), -1, dtype=np.int64)
    lengths = users.lengths[members]
    out_user, out_item, out_time = [], [], []
    for step in range(int(lengths.max())):
        active = np.flatnonzero(lengths > step)  # rows of this chunk still producing events
        when = users.times[users.offsets[members[active]] + step]  # (A,)
        wanted = _next_category(rng, current[active], users.taste[members[active]], transitions)
        weights = base[active] * (catalog.created_at <= when[:, None])  # (A, I)
        weights[seen[active]] = 0.0
        in_category = weights * (catalog.category == wanted[:, None])
        empty = in_category.sum(axis=1) <= 0.0
        in_category[empty] = weights[empty]  # nothing left in that category: any category
        chosen = _sample_rows(rng, in_category)
        seen[active, chosen] = True
        current[active] = catalog.category[chosen]
        out_user.append(members[active])
        out_item.append(chosen)
        out_time.append(when)
    return np.concatenate(out_user), np.concatenate(out_item), np.concatenate(out_time)


def _next_category(
    rng: np.random.Generator, current: np.ndarray, taste: np.ndarray, transitions: np.ndarray
) -> np.ndarray:
    """Sticky Markov step; users with no current category (-1) draw from their taste."""
    draw = rng.random(len(current))
    follow = (draw >= STICKINESS) & (rng.random(len(current)) < FOLLOW) & (current >= 0)
    probabilities = taste.copy()
    probabilities[follow] = transitions[current[follow]]
    sampled = _sample_rows(rng, probabilities)
    return np.where((draw < STICKINESS) & (current >= 0), current, sampled)


def _sample_rows(rng: np.random.Generator, weights: np.ndarray) -> np.ndarray:
    """One column index per row, with probability proportional to the row's weights (> 0 sum)."""
    cumulative = np.cumsum(weights, axis=1)
    threshold = rng.random(len(weights)) * cumulative[:, -1]
    return np.argmax(cumulative > threshold[:, None], axis=1)


def _item_meta(catalog: _Catalog) -> pd.DataFrame:
    n_items = len(catalog.category)
    ids = np.arange(n_items)
    return pd.DataFrame(
        {
            "item": np.char.add("i", ids.astype(str)).astype(object),
            "title": catalog.titles,
            "categories": np.char.add("Root|cat", catalog.category.astype(str)).astype(object),
            "category": np.char.add("cat", catalog.category.astype(str)).astype(object),
            "brand": np.char.add("brand", catalog.brand.astype(str)).astype(object),
            "price": catalog.price,
            "created_at": catalog.created_at.astype(np.float64),
        }
    )


def synthesize_catalog(n_items: int, interactions_per_item: float = 10.0, mean_length: float = 8.0,
                       items_per_category: int = 500, max_length: int = 200, seed: int = 0,
                       name: str | None = None) -> Dataset:
    """A seeded catalog of any size in O(interactions) time and memory (the cost-growth benchmark,
    bench/catalog_growth.py: 10k to 1M items). Users and interactions scale with the catalog:
    n_items * interactions_per_item events over users of mean_length events (at least 5).

    The same items as `synthesize` (category, home brand, price, title tokens, Zipf popularity,
    creation time) with n_items / items_per_category categories; a user walks between two home
    categories and each category's two fixed neighbours (stay with probability STICKINESS, else a
    home category with probability 0.2, else a neighbour of the current one), and
    each item is drawn inside the current category by popularity alone. Unlike `synthesize` there
    is no per-user brand affinity and no 'not seen yet' rule (a repeat is possible, rare in a big
    catalog): that is what keeps it linear."""
    if n_items < 20 or items_per_category < 2 or interactions_per_item <= 0:
        raise ValueError("synthesize_catalog needs n_items >= 20, items_per_category >= 2, interactions_per_item > 0")
    if mean_length < 5:
        raise ValueError(f"mean_length must be >= 5 (every user has at least 5 interactions), got {mean_length}")
    rng = np.random.default_rng(seed)
    n_categories = max(2, n_items // items_per_category)
    catalog = _make_catalog(rng, n_items, n_categories, max(1, n_items // 50))
    # cdf[j] in (c, c + 1] over category c's items (sorted by category): c + u picks inside c
    order = np.argsort(catalog.category, kind="stable")
    cat_sorted = catalog.category[order]
    mass = np.cumsum(catalog.popularity[order])
    starts = np.flatnonzero(np.r_[True, cat_sorted[1:] != cat_sorted[:-1]])
    before = np.repeat(np.r_[0.0, mass[starts[1:] - 1]], np.diff(np.r_[starts, len(order)]))
    total = np.repeat(np.diff(np.r_[0.0, mass[np.r_[starts[1:] - 1, len(order) - 1]]]), np.diff(np.r_[starts, len(order)]))
    cdf = cat_sorted + (mass - before) / total
    n_users = max(1, int(round(n_items * interactions_per_item / mean_length)))
    extra = rng.geometric(1.0 / (mean_length - 4.0), n_users) - 1 if mean_length > 5 else np.zeros(n_users, int)
    lengths = np.minimum(5 + extra, max(5, max_length)).astype(np.int64)
    offsets = np.r_[0, np.cumsum(lengths)[:-1]].astype(np.int64)
    times = _user_times(rng, lengths)
    home = rng.integers(0, n_categories, (n_users, 2))
    neighbours = rng.integers(0, n_categories, (n_categories, 2))
    cats = np.empty(int(lengths.sum()), np.int64)
    current = home[:, 0].copy()
    for step in range(int(lengths.max())):
        active = np.flatnonzero(lengths > step)
        if step:
            draw = rng.random(len(active))
            pick = rng.integers(0, 2, len(active))
            to_home, to_next = home[active, pick], neighbours[current[active], pick]
            current[active] = np.where(draw < STICKINESS, current[active], np.where(draw < 0.8, to_home, to_next))
        cats[offsets[active] + step] = current[active]
    picked = np.minimum(np.searchsorted(cdf, cats + rng.random(len(cats)), side="right"), len(order) - 1)
    item = order[picked]
    user = np.repeat(np.arange(n_users), lengths)
    log = pd.DataFrame({"user": np.char.add("u", user.astype(str)).astype(object),
                        "item": np.char.add("i", item.astype(str)).astype(object), "timestamp": times})
    return assemble(name or f"catalog-{n_items}", log, _item_meta(catalog), has_time=True, has_text=True,
                    keep_catalog=True)
