import numpy as np
import pandas as pd
import pytest

from channels.item2item import ItemToItemChannel
from channels.popularity import PopularityChannel
from channels.table import CandidateTableChannel
from pipeline.cascade import Cascade
from pipeline.core.types import PAD, Request
from tests.helpers import DAY, batch_of, tiny_fit_data


class Broken:
    name = "broken"

    def fit(self, data):
        return self

    def retrieve(self, batch, k):
        raise RuntimeError("backend down")


def _cascade(*extra, **kw):
    data = tiny_fit_data()
    pop = PopularityChannel(half_life_days=None).fit(data)
    i2i = ItemToItemChannel(window=2).fit(data)
    return Cascade([pop, i2i, *extra], {"popularity": 3, "item2item": 3, "broken": 3}, fallback=pop, **kw)


def test_cascade_recommends_unseen_items_with_reasons():
    cascade = _cascade()
    rec = cascade.recommend(Request(user=0, history=np.array([0]), history_times=np.array([DAY]), k=3, now=50 * DAY))
    assert len(rec.items) == 3 and 0 not in rec.items.tolist()
    assert rec.items[0] == 1  # found by both channels: best fused score
    assert set(rec.reasons[0]) == {"channel:popularity", "channel:item2item"}
    assert {"retrieve", "pool", "rank", "rerank", "total"} <= set(rec.timings_ms)
    assert rec.degraded == []


def test_failing_channel_is_dropped_and_named():
    cascade = _cascade(Broken())
    rec = cascade.recommend(Request(user=0, history=np.array([0]), k=3))
    assert rec.degraded == ["broken"] and len(rec.items) == 3


def test_all_channels_down_falls_back_to_popularity():
    pop = PopularityChannel(half_life_days=None).fit(tiny_fit_data())
    cascade = Cascade([Broken()], {"broken": 5}, fallback=pop)
    rec = cascade.recommend(Request(user=0, history=np.array([3], np.int64), k=2))
    assert rec.degraded == ["broken"] and len(rec.items) == 2 and 3 not in rec.items
    assert rec.reasons[0] == ["channel:popularity"]


class Counting(PopularityChannel):
    """A popularity channel that records the batch sizes it was asked for."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.calls = []

    def retrieve(self, batch, k):
        self.calls.append(len(batch))
        return super().retrieve(batch, k)


def test_anonymous_rows_are_answered_by_the_fallback_alone():
    data = tiny_fit_data()
    personal = Counting(name="personal", half_life_days=30).fit(data)
    fallback = PopularityChannel(name="fallback", half_life_days=None).fit(data)
    cascade = Cascade([personal], {"personal": 3}, fallback=fallback)
    res = cascade.run(batch_of([[], [0, 1]], now=[50 * DAY] * 2, users=[-1, 0]), 3)
    assert personal.calls == [1]  # the channels only read the row that has a history
    assert res.final[0].reasons and all(r == ["channel:fallback"] for r in res.final[0].reasons)
    assert all("channel:personal" in r for r in res.final[1].reasons)
    anonymous = cascade.recommend(Request(user=None, k=2))
    assert len(anonymous.items) == 2 and anonymous.degraded == [] and personal.calls == [1]
    known = cascade.recommend(Request(user=2, k=2))  # a known user without history still reaches the channels
    assert personal.calls == [1, 1] and len(known.items) == 2


def test_a_batch_with_anonymous_rows_answers_every_row_as_it_would_alone():
    """The fallback is also a configured channel (the popularity object): its answer for the
    anonymous rows must not replace the channel's answer for the other rows of the batch."""
    cascade = _cascade()
    histories, users = [[0, 1], [], [2], []], [0, -1, 1, -1]
    batch = batch_of(histories, now=[50 * DAY] * 4, users=users)
    together = cascade.run(batch, 4)
    for r in range(4):
        alone = cascade.run(batch.take(np.array([r])), 4)
        assert together.final[r].items.tolist() == alone.final[0].items.tolist(), r
        assert together.pools[r].items.tolist() == alone.pools[0].items.tolist(), r
    assert all("channel:popularity" in r for r in together.final[0].reasons[:1])


def test_a_failing_fallback_gives_empty_lists_not_an_error():
    broken_fallback = Broken()
    broken_fallback.name = "fallback"
    cascade = Cascade([Broken()], {"broken": 5}, fallback=broken_fallback)
    rec = cascade.recommend(Request(user=0, history=np.array([3], np.int64), k=2))
    assert len(rec.items) == 0 and rec.degraded == ["broken", "fallback"]


def test_a_run_without_a_popularity_channel_still_has_a_fallback(tmp_path):
    from pipeline.config import parse_config
    from pipeline.workflow import load_run, train

    cfg = parse_config({"data": {"synthetic": {"n_users": 80, "n_items": 60, "seed": 1}},
                        "channels": [{"name": "item2item", "kind": "item2item", "quota": 20}]})
    run = load_run(train(cfg, run_dir=tmp_path / "run"))
    assert run.cascade.fallback is not None and run.cascade.fallback is not run.channels["item2item"]
    rec = run.cascade.recommend(Request(user=None, k=5))
    assert len(rec.items) == 5 and all(r == ["channel:fallback"] for r in rec.reasons)


def test_topk_shape_and_padding():
    cascade = _cascade()
    got = cascade.topk(batch_of([[0], [0, 1, 2, 3, 4]], now=[50 * DAY] * 2), 5)
    assert got.shape == (2, 5)
    assert set(got[1][got[1] != PAD].tolist()) == {5}  # only item 5 is unseen


def test_unique_names_required():
    pop = PopularityChannel()
    with pytest.raises(ValueError, match="unique"):
        Cascade([pop, pop], {})


def test_candidate_table_channel(tmp_path):
    path = tmp_path / "cands.parquet"
    pd.DataFrame({"user_id": ["u0", "u0", "u0", "u1", "nobody"], "item_id": ["i3", "i0", "i4", "i2", "i1"],
                  "score": [0.5, 0.9, 0.7, 1.0, 2.0]}).to_parquet(path)
    ch = CandidateTableChannel(name="table", path=str(path)).fit(tiny_fit_data())
    assert ch.dropped_rows_ == 1
    got = ch.retrieve(batch_of([[0], [], []], users=[0, 1, 3]), 3)
    assert got.items[0].tolist() == [4, 3, PAD]  # i0 seen, then by score
    assert got.items[1].tolist() == [2, PAD, PAD]
    assert (got.items[2] == PAD).all()  # user with no rows
    ch.save(tmp_path / "saved")
    back = CandidateTableChannel.load(tmp_path / "saved")
    np.testing.assert_array_equal(back.retrieve(batch_of([[0]], users=[0]), 3).items, got.items[:1])


@pytest.mark.parametrize("frame, message", [
    (pd.DataFrame({"user_id": ["u0"], "item_id": ["i0"]}), "lacks column"),
    (pd.DataFrame({"user_id": [], "item_id": [], "score": []}), "empty"),
    (pd.DataFrame({"user_id": ["u0"], "item_id": ["i0"], "score": ["high"]}), "must be numeric"),
])
def test_candidate_table_errors(tmp_path, frame, message):
    path = tmp_path / "bad.parquet"
    frame.to_parquet(path)
    with pytest.raises(ValueError, match=message):
        CandidateTableChannel(path=str(path)).fit(tiny_fit_data())
