"""The live history store: the local backend (durable log + atomic snapshots, restart), the Redis
backend on a real redis-server (127.0.0.1, a free port, started and stopped here), and the
ingress: POST /events changes the user's next /recommend; bad events get a 4xx naming the field;
a store outage degrades recommendations and refuses events with a retryable 503."""
from __future__ import annotations

import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from pipeline.serving.history import Event, LocalStore, RedisStore, StoreUnavailable

REDIS = shutil.which("redis-server")
needs_redis = pytest.mark.skipif(REDIS is None, reason="redis-server is not installed (.ci/run installs it: apt-get install redis-server)")


def ev(user: str, item: str, t: int, **kw) -> Event:
    return Event(user, item, t, **kw)


def test_local_store_dedupes_orders_by_time_and_survives_a_restart(tmp_path):
    store = LocalStore(tmp_path / "h", snapshot_every=3)
    assert store.add([ev("u1", "a", 10), ev("u1", "b", 5), ev("u2", "c", 7)]) == (3, 0)  # snapshot after 3
    assert store.add([ev("u1", "a", 10), ev("u1", "d", 12, event_id="x"), ev("u1", "e", 13, event_id="x")]) == (1, 2)
    assert store.recent("u1", 10) == [(5, "b"), (10, "a"), (12, "d")]
    assert store.recent("u1", 2) == [(10, "a"), (12, "d")] and store.recent("nobody", 5) == []
    del store  # a crash: no close(), the last event is only in the fsynced log
    again = LocalStore(tmp_path / "h", snapshot_every=3)
    assert again.recent("u1", 10) == [(5, "b"), (10, "a"), (12, "d")] and again.recent("u2", 10) == [(7, "c")]
    assert again.add([ev("u1", "d", 12, event_id="x")]) == (0, 1)  # ids survive snapshot and log
    with open(tmp_path / "h" / "events.log", "a") as f:
        f.write('["half-written", "u9"')  # a line cut by a crash mid-write: never acknowledged, skipped
    again.close()
    third = LocalStore(tmp_path / "h")
    assert third.n_events == 4 and third.recent("u9", 5) == []
    third.close()


@contextmanager
def redis_server(port: int):
    proc = subprocess.Popen([REDIS, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import redis

        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1)
        for _ in range(100):  # bounded wait for PING
            try:
                if client.ping():
                    break
            except redis.RedisError:
                time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@needs_redis
def test_redis_store_dedupes_across_clients_and_reports_an_outage():
    from tests.test_serving_support import free_port

    port = free_port()
    with redis_server(port):
        a, b = (RedisStore(f"redis://127.0.0.1:{port}/0", prefix="t") for _ in range(2))  # two replicas
        assert a.add([ev("u1", "x", 3), ev("u1", "y", 1)]) == (2, 0)
        assert b.add([ev("u1", "x", 3), ev("u1", "z", 2, event_id="k")]) == (1, 1)
        assert b.recent("u1", 10) == a.recent("u1", 10) == [(1, "y"), (2, "z"), (3, "x")]
        assert a.recent("u1", 1) == [(3, "x")] or a.recent("u1", 1) == [(2, "z")]  # the last one pushed
    with pytest.raises(StoreUnavailable, match="redis"):
        a.add([ev("u1", "w", 4)])
    with pytest.raises(StoreUnavailable, match="redis"):
        a.recent("u1", 5)


def _client(tmp_path: Path, history: dict):
    from fastapi.testclient import TestClient

    from pipeline.serving.components import LocalBackends
    from pipeline.serving.config import parse_serve_config
    from pipeline.serving.routes import create_app
    from pipeline.serving.runview import RunView
    from pipeline.serving.service import IngressState, RecommendService
    from tests.test_serving_support import tiny_run

    run = tiny_run(tmp_path / "run")
    cfg = parse_serve_config({"history": history, "logging": {"dir": str(tmp_path / "logs")}})
    view = RunView.open(run)
    backends = LocalBackends(view, cfg)
    service = RecommendService(IngressState.build(view, cfg), backends, cfg)
    return TestClient(create_app(service, cfg.limits.max_body_bytes)), view, backends


def test_an_event_changes_the_next_recommendation_and_bad_events_are_refused(tmp_path):
    client, view, backends = _client(tmp_path, {"dir": str(tmp_path / "store")})
    user = str(view.dataset.user_ids[4])
    before = client.post("/recommend", json={"user_id": user, "k": 10}).json()
    item = before["items"][0]["item_id"]
    answer = client.post("/events", json={"events": [{"user_id": user, "item_id": item, "time": 2_000_000_000},
                                                     {"user_id": user, "item_id": "not-in-the-run"}]})
    assert answer.status_code == 202 and answer.json() == {"accepted": 2, "duplicates": 0, "unknown_items": ["not-in-the-run"]}
    after = client.post("/recommend", json={"user_id": user, "k": 10}).json()
    assert after["history_used"] == before["history_used"] + 1  # the known item joined the sequence
    assert item not in [i["item_id"] for i in after["items"]]  # and is now seen
    assert client.post("/events", json={"events": [{"user_id": user, "item_id": item, "time": 2_000_000_000}]}).json()["duplicates"] == 1
    # a brand-new user with events is served from them
    new = client.post("/events", json={"events": [{"user_id": "newcomer", "item_id": item}]})
    assert new.status_code == 202
    assert client.post("/recommend", json={"user_id": "newcomer", "k": 5}).json()["history_used"] == 1
    for body, field in [({"events": [{"user_id": user}]}, "events.0.item_id"), ({"events": []}, "events"),
                        ({"events": [{"user_id": user, "item_id": item, "time": -1}]}, "events.0.time"),
                        ({"events": [{"user_id": user, "item_id": item, "type": "Bad Type"}]}, "events.0.type")]:
        bad = client.post("/events", json=body)
        assert bad.status_code == 422 and any(d.startswith(f"body.{field}") for d in bad.json()["detail"]), bad.json()
    backends.close()


@needs_redis
def test_a_redis_outage_degrades_to_the_trained_history_and_refuses_events_retryably(tmp_path):
    from tests.test_serving_support import free_port

    port = free_port()
    with redis_server(port):
        client, view, backends = _client(tmp_path, {"backend": "redis", "redis_url": f"redis://127.0.0.1:{port}/0"})
        user = str(view.dataset.user_ids[2])
        item = str(view.dataset.item_ids[0])
        assert client.post("/events", json={"events": [{"user_id": user, "item_id": item}]}).status_code == 202
        live = client.post("/recommend", json={"user_id": user, "k": 5}).json()
        assert live["degraded"] == []
    down = client.post("/recommend", json={"user_id": user, "k": 5}).json()
    assert down["degraded"] == ["history_store"] and len(down["items"]) == 5
    assert down["history_used"] == live["history_used"] - 1  # the trained history alone
    refused = client.post("/events", json={"events": [{"user_id": user, "item_id": item}]})
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1" and "retry" in refused.json()["error"]
    with redis_server(port):  # back (empty: --save ""): accepted again, no longer degraded
        assert client.post("/events", json={"events": [{"user_id": user, "item_id": item}]}).status_code == 202
        assert client.post("/recommend", json={"user_id": user, "k": 5}).json()["degraded"] == []


def test_a_removed_item_leaves_every_list_until_it_is_put_back(tmp_path):
    client, view, backends = _client(tmp_path, {"dir": str(tmp_path / "store"), "catalog_ttl_s": 60})
    user = str(view.dataset.user_ids[6])
    top = client.post("/recommend", json={"user_id": user, "k": 10}).json()["items"][0]["item_id"]
    anonymous_top = client.post("/recommend", json={"k": 10}).json()["items"][0]["item_id"]
    for item in {top, anonymous_top}:
        gone = client.delete(f"/items/{item}")
        assert gone.status_code == 202 and gone.json() == {"item_id": item, "available": False}
    for body in ({"user_id": user, "k": 50}, {"k": 50}, {"history": [str(view.dataset.item_ids[3])], "k": 50}):
        items = [i["item_id"] for i in client.post("/recommend", json=body).json()["items"]]
        assert len(items) == 50 and top not in items and anonymous_top not in items
    assert client.put(f"/items/{top}/available").json() == {"item_id": top, "available": True}
    assert client.post("/recommend", json={"user_id": user, "k": 10}).json()["items"][0]["item_id"] == top
    missing = client.delete("/items/not-an-item")
    assert missing.status_code == 404 and "not in the served catalog" in missing.json()["error"]
    backends.close()
    reopened = LocalStore(tmp_path / "store")  # the removal is durable
    assert reopened.unavailable() == ({anonymous_top} - {top})
    reopened.close()
