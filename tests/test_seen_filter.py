"""Seen items are excluded over the WHOLE history, not only the last `max_history` items the
models read (a user with a long history must never be recommended what they already have)."""
from __future__ import annotations

import numpy as np

from channels.popularity import PopularityChannel
from pipeline.cascade import Cascade
from pipeline.core.types import PAD, Request, RequestBatch, Retrieved
from pipeline.pool import PoolSpec, merge_pool
from rankers.passthrough import PassThroughRanker
from rerank.passthrough import PassThroughReRanker
from tests.helpers import tiny_fit_data

WINDOW = 3


def _long_batch():
    # row 0: items 0..6 seen, the model window holds only 4, 5, 6; row 1 is short
    return RequestBatch.from_sequences([0, 1], [np.arange(7), np.array([2])], max_len=WINDOW)


def test_batch_keeps_every_seen_item_and_take_slices_it():
    batch = _long_batch()
    assert batch.history.tolist() == [[4, 5, 6], [PAD, PAD, 2]]
    assert batch.seen_of(0).tolist() == list(range(7)) and batch.seen_of(1).tolist() == [2]
    rows, items = batch.seen_pairs()
    assert rows.tolist() == [0] * 7 + [1] and items.tolist() == list(range(7)) + [2]
    flipped = batch.take(np.array([1, 0]))
    assert flipped.seen_of(0).tolist() == [2] and flipped.seen_of(1).tolist() == list(range(7))
    assert batch.max_seen() == 7
    short = RequestBatch.from_sequences([0], [np.array([1, 2])], max_len=WINDOW)
    assert short.seen_offsets is None and short.seen_of(0).tolist() == [1, 2]  # nothing cut: the matrix


def test_channel_masks_items_older_than_the_window():
    channel = PopularityChannel().fit(tiny_fit_data())
    out = channel.retrieve(_long_batch(), 6)
    got = out.items[0][out.items[0] != PAD]
    assert not set(got.tolist()) & set(range(6))  # popularity would rank 0, 1, 5 first otherwise
    assert set(out.items[1].tolist()) - {PAD} == {0, 1, 3, 4, 5}


def test_pool_filters_items_older_than_the_window():
    batch = _long_batch()
    outs = {"a": Retrieved(np.array([[0, 1, 7], [0, 2, 7]]), np.zeros((2, 3), np.float32))}
    pools = merge_pool(batch, outs, PoolSpec(quotas={"a": 3}, budget=10))
    assert pools[0].items.tolist() == [7]
    assert sorted(pools[1].items.tolist()) == [0, 7]


def test_cascade_request_with_a_long_history_gets_no_seen_item():
    data = tiny_fit_data()
    cascade = Cascade([PopularityChannel(name="popularity").fit(data)], {"popularity": 6},
                      ranker=PassThroughRanker(), reranker=PassThroughReRanker(), budget=10, max_history=2)
    history = np.array([0, 1, 5, 2], np.int64)  # 0, 1 are the most popular and older than the window
    rec = cascade.recommend(Request(user=0, history=history, history_times=np.arange(4) * 86400, k=3))
    assert not set(rec.items.tolist()) & set(history.tolist())
    assert len(rec.items) == 2  # only items 3 and 4 are left unseen
