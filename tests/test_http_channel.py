"""The `http` channel against a small recall service on 127.0.0.1: id mapping, seen/unknown items,
response mappings, failures (degraded in the cascade), and a trained run that includes it."""
from __future__ import annotations

import numpy as np
import pytest

from channels.http_channel import HttpChannel, HttpChannelError, read_path
from channels.popularity import PopularityChannel
from pipeline.cascade import Cascade
from pipeline.config import ChannelConfig, ConfigError
from pipeline.core.types import PAD, Request
from pipeline.registry import build_channel
from tests.helpers import batch_of, tiny_fit_data
from tests.test_serving_support import StubRecall

MAPPING = {"items": "results[].id", "scores": "results[].score"}


def _channel(url, **kw):
    return HttpChannel(name="recall", url=url, response=MAPPING, **kw).fit(tiny_fit_data())


def test_maps_original_ids_drops_seen_unknown_and_duplicates():
    with StubRecall(["i5", "zz", "i1", "i5", "i0", "i3"]) as stub:
        got = _channel(stub.url).retrieve(batch_of([[1], []], users=[0, 1]), 4)
    # row 0 asks for 4 + 1 (its history): i1 is seen, zz unknown, i5 repeated
    assert got.items[0].tolist() == [5, 0, PAD, PAD]
    assert got.items[1].tolist() == [5, 1, PAD, PAD]
    assert np.all(np.diff(got.scores[1][:2]) <= 0)
    sent = sorted(stub.calls, key=lambda c: len(c["history"]))
    assert sent[0] == {"user_id": "u1", "history": [], "k": 4, "context": {}}
    assert sent[1]["user_id"] == "u0" and sent[1]["history"] == ["i1"] and sent[1]["k"] == 5


def test_request_mapping_and_order_without_scores():
    with StubRecall(["i2", "i4"]) as stub:
        ch = HttpChannel(name="r", url=stub.url, request={"user_id": "uid", "context": None, "k": "size"},
                         response={"items": "results[].id", "scores": "missing"}).fit(tiny_fit_data())
        got = ch.retrieve(batch_of([[0]]), 3)
    assert set(stub.calls[0]) == {"uid", "history", "size"}
    assert got.items[0].tolist() == [2, 4, PAD] and got.scores[0][:2].tolist() == [1.0, 0.5]


def test_slow_or_failing_service_raises_so_the_cascade_degrades_it():
    pop = PopularityChannel(half_life_days=None).fit(tiny_fit_data())
    for stub in (StubRecall(["i1"], delay_s=0.5), StubRecall(["i1"], status=500)):
        with stub:
            ch = _channel(stub.url, timeout_ms=100)
            with pytest.raises(HttpChannelError, match="every call"):
                ch.retrieve(batch_of([[0]]), 3)
            rec = Cascade([pop, ch], {"popularity": 3, "recall": 3}, fallback=pop).recommend(Request(user=0, history=np.array([0]), k=3))
            assert rec.degraded == ["recall"] and len(rec.items) == 3


def test_one_failing_row_is_empty_and_flagged_the_others_answer():
    per_user = {"u1": {"status": 500}, "u2": {"score": "high"}}  # an error status, a score that is no number
    with StubRecall(["i4", "i5"], per_user=per_user) as stub:
        ch = _channel(stub.url, max_workers=1)
        got = ch.retrieve(batch_of([[0], [0], [0]], users=[0, 1, 2]), 2)
        assert got.failed.tolist() == [False, True, True]
        assert got.items[0].tolist() == [4, 5] and (got.items[1:] == PAD).all()
        pop = PopularityChannel(half_life_days=None).fit(tiny_fit_data())
        cascade = Cascade([pop, ch], {"popularity": 3, "recall": 3}, fallback=pop)
        rec = cascade.recommend(Request(user=1, history=np.array([0]), k=3))
        assert rec.degraded == ["recall"] and len(rec.items) == 3  # flagged, answered by the rest
        assert cascade.recommend(Request(user=0, history=np.array([0]), k=3)).degraded == []


def test_the_batch_deadline_bounds_the_whole_call():
    slow = {f"u{u}": {"delay_s": 0.4} for u in (1, 2, 3)}
    with StubRecall(["i4"], per_user=slow) as stub:
        for workers in (1, 2):
            ch = _channel(stub.url, timeout_ms=1000, deadline_ms=300, max_workers=workers)
            got = ch.retrieve(batch_of([[0]] * 4, users=[0, 1, 2, 3]), 1)
            # every slow row (0.4 s, under its own 1 s timeout) is cut by the 300 ms batch deadline
            assert got.failed.tolist() == [False, True, True, True] and got.items[0, 0] == 4
    assert _channel("http://127.0.0.1:9/", timeout_ms=40).deadline_s() == pytest.approx(0.08)
    with pytest.raises(ValueError, match="deadline_ms must be > 0"):
        HttpChannel(name="x", url="http://127.0.0.1/", deadline_ms=0)


def test_unreachable_service_and_bad_params():
    ch = _channel("http://127.0.0.1:9/none", timeout_ms=50)  # discard port: connection refused
    with pytest.raises(HttpChannelError):
        ch.retrieve(batch_of([[0], [1]]), 2)
    with pytest.raises(ValueError, match="url must start"):
        HttpChannel(name="x", url="ftp://host/")
    with pytest.raises(ValueError, match="unknown request/response mapping keys"):
        HttpChannel(name="x", url="http://127.0.0.1/", response={"ids": "x"})
    with pytest.raises(RuntimeError, match="call fit"):
        HttpChannel(name="x", url="http://127.0.0.1/").retrieve(batch_of([[0]]), 1)


def test_read_path():
    body = {"a": {"b": [1, 2]}, "rows": [{"id": "x"}, {"id": "y"}]}
    assert read_path(body, "a.b") == [1, 2] and read_path(body, "rows[].id") == ["x", "y"]
    with pytest.raises(HttpChannelError, match="no field 'c'"):
        read_path(body, "a.c")
    with pytest.raises(HttpChannelError, match="not a list"):
        read_path(body, "a[].b")


def test_registry_kind_and_trained_run(tmp_path):
    from pipeline.config import parse_config
    from pipeline.workflow import load_run, train

    with StubRecall([f"i{i}" for i in range(20)]) as stub:
        ch = build_channel(ChannelConfig(name="recall", kind="http", params={"url": stub.url, "response": MAPPING}))
        assert isinstance(ch, HttpChannel)
        cfg = parse_config({
            "data": {"source": "synthetic", "synthetic": {"n_users": 100, "n_items": 50, "seed": 1}},
            "channels": [{"name": "popularity", "kind": "popularity", "quota": 10},
                         {"name": "recall", "kind": "http", "quota": 10, "params": {"url": stub.url, "response": MAPPING}}],
        })
        run = load_run(train(cfg, run_dir=tmp_path / "run"))
        rec = run.cascade.recommend(Request(user=0, history=np.zeros(0, np.int64), k=10))
    assert rec.degraded == [] and any("channel:recall" in r for r in rec.reasons)
    with pytest.raises(ConfigError, match="bad parameters"):
        build_channel(ChannelConfig(name="recall", kind="http", params={"uri": "x"}))


def test_defaults_https_headers_and_anonymous_payload():
    ch = HttpChannel(url="https://recall.example/")  # https is accepted; nothing is called here
    assert (ch.name, ch.headers, ch.timeout_ms) == ("http", {}, 50.0)
    with StubRecall(["i2"]) as stub:
        got = _channel(stub.url, headers={"X-Api-Key": "k1"}).retrieve(batch_of([[]], users=[PAD]), 1)
    assert got.items[0].tolist() == [2]
    assert stub.calls[0]["user_id"] is None  # an anonymous row is sent without a user
    assert stub.headers[0].get("X-Api-Key") == "k1"


def test_the_per_call_timeout_is_in_milliseconds():
    with StubRecall(["i1"], per_user={"u1": {"delay_s": 0.4}}) as stub:
        ch = _channel(stub.url, timeout_ms=100, deadline_ms=5000, max_workers=1)
        got = ch.retrieve(batch_of([[0], [0]], users=[0, 1]), 1)
    assert got.failed.tolist() == [False, True]  # 0.4 s is past a 100 ms call timeout


def test_failed_rows_are_logged_with_the_channel_and_the_reason(caplog):
    import logging

    with StubRecall(["i4"], per_user={"u1": {"score": "inf"}}) as stub:
        with caplog.at_level(logging.WARNING, logger="channels.http_channel"):
            _channel(stub.url, max_workers=1).retrieve(batch_of([[0], [0]], users=[0, 1]), 1)
    messages = [r.getMessage() for r in caplog.records]
    assert "channel recall: row 1 failed: score 'inf' of item 'i4' is not a finite number" in messages


def test_read_path_of_a_top_level_list():
    assert read_path([{"id": "a"}, {"id": "b"}], "[].id") == ["a", "b"]
    with pytest.raises(HttpChannelError, match="response field 'rows' is not a list"):
        read_path({"rows": {"id": "a"}}, "rows[].id")
