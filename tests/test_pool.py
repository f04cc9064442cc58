import numpy as np
import pytest

from pipeline.core.types import PAD, Retrieved
from pipeline.pool import PoolSpec, merge_pool
from tests.helpers import batch_of


def _ret(items, scores=None):
    items = np.array(items, np.int64)
    scores = np.array(scores if scores is not None else -np.arange(items.shape[1], dtype=np.float32)[None].repeat(items.shape[0], 0), np.float32)
    return Retrieved(items, scores)


def test_merge_dedups_and_keeps_provenance():
    batch = batch_of([[9]])
    outs = {"a": _ret([[1, 2, 3]]), "b": _ret([[3, 4, PAD]])}
    (pool,) = merge_pool(batch, outs, PoolSpec(quotas={"a": 3, "b": 3}, budget=10))
    assert sorted(pool.items.tolist()) == [1, 2, 3, 4]
    row3 = int(np.nonzero(pool.items == 3)[0][0])
    assert pool.found[row3].tolist() == [True, True]
    assert pool.channel_rank[row3].tolist() == [2, 0]
    row4 = int(np.nonzero(pool.items == 4)[0][0])
    assert pool.found_by(row4) == ["b"] and np.isnan(pool.channel_score[row4, 0])
    # item 3 was found by both channels: highest fused score
    assert pool.items[0] == 3


def test_seen_filter_quota_and_budget():
    batch = batch_of([[1, 5]])
    outs = {"a": _ret([[1, 2, 3, 4]]), "b": _ret([[5, 6, 7, 8]])}
    (pool,) = merge_pool(batch, outs, PoolSpec(quotas={"a": 3, "b": 2}, budget=10))
    assert set(pool.items.tolist()) == {2, 3, 6}  # seen 1,5 removed; quotas cut 4, 7, 8
    (small,) = merge_pool(batch, outs, PoolSpec(quotas={"a": 4, "b": 4}, budget=2))
    # budget keeps the best rank of any channel: rank 1 of a (2) and rank 1 of b (6)
    assert set(small.items.tolist()) == {2, 6}
    (keep_seen,) = merge_pool(batch, outs, PoolSpec(quotas={"a": 1, "b": 1}, exclude_seen=False))
    assert set(keep_seen.items.tolist()) == {1, 5}


def test_missing_channel_keeps_its_column_and_empty_pool():
    batch = batch_of([[1], [2]])
    outs = {"b": _ret([[3, 4], [5, PAD]])}
    pools = merge_pool(batch, outs, PoolSpec(quotas={}), channel_order=("a", "b"))
    assert pools[0].channels == ("a", "b") and not pools[0].found[:, 0].any()
    assert pools[1].items.tolist() == [5]
    empty = merge_pool(batch, {}, PoolSpec(quotas={}), channel_order=("a",))
    assert len(empty[0]) == 0 and empty[0].found.shape == (0, 1)


def test_retrieved_shape_check():
    with pytest.raises(ValueError, match="one 2-D shape"):
        Retrieved(np.zeros((2, 3), np.int64), np.zeros((2, 2), np.float32))


def test_an_empty_pool_has_the_columns_and_types_of_a_full_one():
    (empty,) = merge_pool(batch_of([[1]]), {}, PoolSpec(quotas={}), channel_order=("a", "b"))
    (full,) = merge_pool(batch_of([[1]]), {"a": _ret([[3, 4]])}, PoolSpec(quotas={"a": 2}), channel_order=("a", "b"))
    assert empty.channels == full.channels == ("a", "b")
    for field in ("items", "scores", "found", "channel_rank", "channel_score"):
        got, want = getattr(empty, field), getattr(full, field)
        assert got.dtype == want.dtype, field
        assert got.shape == (0,) + want.shape[1:], field
    assert empty.items.dtype == np.int64 and empty.scores.dtype == np.float32
    assert empty.found.dtype == bool and empty.channel_rank.dtype == np.int32 and empty.channel_score.dtype == np.float32
