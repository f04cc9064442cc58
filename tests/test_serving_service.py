"""The ingress logic without Ray: the FastAPI app around `RecommendService` with every stage in
process (`LocalBackends`), driven by a TestClient. Budgets, degradation, fallback, limits, logs."""
from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from pipeline.config import ConfigError
from pipeline.core.types import RequestBatch
from pipeline.serving.api import RecommendRequest
from pipeline.serving.components import Fault, LocalBackends, stack_batches
from pipeline.serving.config import load_serve_config, parse_serve_config
from pipeline.serving.eventlog import EventLog, read_events
from pipeline.serving.routes import create_app
from pipeline.serving.runview import RunView
from pipeline.serving.service import IngressState, RecommendService, resolve
from tests.test_serving_support import tiny_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("svc") / "run")


def _service(run_dir, tmp_path, **raw):
    cfg = parse_serve_config({"logging": {"dir": str(tmp_path / "logs")}, **raw})
    view = RunView.open(run_dir, cfg.extra_channels)
    state = IngressState.build(view, cfg)
    backends = LocalBackends(view, cfg)
    service = RecommendService(state, backends, cfg)
    return service, backends, TestClient(create_app(service, cfg.limits.max_body_bytes)), view


def test_answer_matches_the_in_process_cascade(run_dir, tmp_path):
    from pipeline.core.types import Request
    from pipeline.workflow import load_run

    service, _, client, view = _service(run_dir, tmp_path)  # the ingress asks at wall-clock time
    run = load_run(run_dir)
    hist = view.split.history(view.stage)
    rows = hist[hist["user_id"] == 4]
    body = client.post("/recommend", json={"user_id": str(view.dataset.user_ids[4]), "k": 10}).json()
    rec = run.cascade.recommend(Request(user=4, history=rows["item_id"].to_numpy(np.int64),
                                        history_times=rows["timestamp"].to_numpy(np.int64), k=10, now=int(time.time())))
    assert [i["item_id"] for i in body["items"]] == view.dataset.item_ids[rec.items].astype(str).tolist()
    assert body["arm"] == "default" and body["experiment"] is None
    service.state.served_log.close()


def test_slow_channel_is_dropped_within_its_budget(run_dir, tmp_path):
    service, backends, client, _ = _service(run_dir, tmp_path, channels={"item2item": {"budget_ms": 80}})
    backends.channels["item2item"].fault = Fault(delay_ms=2000)
    body = client.post("/recommend", json={"user_id": "nobody", "history": ["i1", "i2"], "k": 5}).json()
    assert body["degraded"] == ["item2item"] and len(body["items"]) == 5 and not body["fallback"]
    assert body["timings_ms"]["channel.item2item"] < 500 and body["timings_ms"]["total"] < 1000
    assert all(i["reasons"] == ["channel:popularity"] for i in body["items"])
    metrics = client.get("/metrics").text
    assert 'hybridrec_degraded_total{component="item2item",reason="timeout"} 1.0' in metrics


def test_every_channel_down_popularity_answers_from_the_ingress(run_dir, tmp_path):
    service, backends, client, _ = _service(run_dir, tmp_path)
    for component in backends.channels.values():
        component.fault = Fault(error_rate=1.0)
    body = client.post("/recommend", json={"history": ["i1"], "k": 7}).json()
    assert sorted(body["degraded"]) == ["item2item", "popularity"] and body["fallback"] is True
    assert len(body["items"]) == 7 and body["items"][0]["reasons"] == ["channel:popularity"]


def test_anonymous_requests_are_answered_by_popularity_alone(run_dir, tmp_path):
    service, backends, client, _ = _service(run_dir, tmp_path)
    for component in backends.channels.values():  # would flag them if they were called
        component.fault = Fault(error_rate=1.0)
    body = client.post("/recommend", json={"k": 6}).json()
    assert body["degraded"] == [] and body["fallback"] is True and len(body["items"]) == 6
    assert all(i["reasons"][0] == "channel:popularity" for i in body["items"])


def test_a_failing_fallback_answers_an_empty_list_not_a_5xx(run_dir, tmp_path):
    service, backends, client, _ = _service(run_dir, tmp_path)
    for component in backends.channels.values():
        component.fault = Fault(error_rate=1.0)

    def down(*a, **k):
        raise RuntimeError("popularity table unreadable")

    service.state.fallback.retrieve = down
    r = client.post("/recommend", json={"history": ["i1"], "k": 5})
    assert r.status_code == 200
    body = r.json()
    assert body["items"] == [] and "fallback" in body["degraded"]


def test_failing_ranker_and_reranker_keep_the_pool_order(run_dir, tmp_path):
    service, backends, client, _ = _service(run_dir, tmp_path)

    def boom(*a, **k):
        raise RuntimeError("model server down")

    backends.ranker.score_many = boom
    backends.reranker.rerank_many = boom
    body = client.post("/recommend", json={"history": ["i3"], "k": 5}).json()
    assert body["degraded"] == ["ranker", "reranker"] and len(body["items"]) == 5
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)


def test_short_lists_are_topped_up_from_popularity(run_dir, tmp_path):
    service, _, client, _ = _service(run_dir, tmp_path, experiment={"name": "x", "salt": "s", "arms": [
        {"name": "i2i-only", "weight": 1, "channels": ["item2item"], "budget": 3}]})
    body = client.post("/recommend", json={"history": ["i1"], "k": 8}).json()  # a pool of 3 for a list of 8
    backfilled = [i for i in body["items"] if i["reasons"] == ["backfill:popularity"]]
    assert len(body["items"]) == 8 and len(backfilled) == 5
    assert all(i["score"] is None for i in backfilled)


def test_configured_limits_below_the_schema_are_enforced(run_dir, tmp_path):
    _, _, client, _ = _service(run_dir, tmp_path, limits={"max_k": 20, "max_history": 3, "max_body_bytes": 2048})
    assert client.post("/recommend", json={"k": 21}).status_code == 422
    r = client.post("/recommend", json={"history": ["a", "b", "c", "d"]})
    assert r.status_code == 422 and "at most 3" in r.text and "history" in r.text
    r = client.post("/recommend", content=b'{"history": ["' + b"x" * 3000 + b'"]}', headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_configured_limits_above_the_defaults_take_effect(run_dir, tmp_path):
    limits = {"max_k": 500, "max_history": 300, "max_context_keys": 40, "max_id_length": 8, "max_body_bytes": 1 << 20}
    service, _, client, view = _service(run_dir, tmp_path, limits=limits)
    items = [str(i) for i in view.dataset.item_ids[:150]] * 2  # 300 > the default 200
    r = client.post("/recommend", json={"history": items, "k": 150})  # k above the default 100
    assert r.status_code == 200 and r.json()["history_used"] > 0
    context = {f"c{i}": i for i in range(30)}  # above the default 16 keys
    assert client.post("/recommend", json={"context": context, "k": 3}).status_code == 200
    r = client.post("/recommend", json={"user_id": "x" * 9})
    assert r.status_code == 422 and "user_id" in r.text
    assert client.post("/feedback", json={"request_id": "r", "item_id": "y" * 9}).status_code == 422
    schema = client.get("/openapi.json").json()["components"]["schemas"]["RecommendRequest"]["properties"]
    assert schema["k"]["maximum"] == 500 and schema["history"]["maxItems"] == 300
    service.state.served_log.close()


def test_chunked_body_over_the_limit_is_413(run_dir, tmp_path):
    _, _, client, _ = _service(run_dir, tmp_path, limits={"max_body_bytes": 1024})

    def chunks():
        for _ in range(10):
            yield b" " * 500

    r = client.post("/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "1024 bytes" in r.json()["error"]


def test_served_lists_are_logged_with_positions(run_dir, tmp_path):
    service, _, client, view = _service(run_dir, tmp_path)
    ids = [client.post("/recommend", json={"user_id": str(u), "k": 3}).json()["request_id"] for u in view.dataset.user_ids[:5]]
    fb = client.post("/feedback", json={"request_id": ids[0], "item_id": "i1", "user_id": "u0"})
    assert fb.status_code == 202 and fb.json() == {"accepted": True}
    service.state.served_log.close()
    service.state.feedback_log.close()
    served = list(read_events(tmp_path / "logs", "served"))
    assert [r["request_id"] for r in served] == ids
    assert served[0]["positions"] == [0, 1, 2] and len(served[0]["items"]) == 3 and served[0]["arm"] == "default"
    assert [r["item_id"] for r in read_events(tmp_path / "logs", "feedback")] == ["i1"]


def test_event_log_rotates_and_never_blocks(tmp_path):
    log = EventLog(tmp_path, "served", rotate_bytes=200, queue_size=100000)
    for n in range(50):
        assert log.write({"n": n, "pad": "x" * 20})
    log.close()
    assert len(log.files()) > 3
    assert [r["n"] for r in read_events(tmp_path, "served")] == list(range(50))
    # a full queue behind a stuck writer: tests/test_eventlog.py


def test_resolve_appends_sent_history_and_reports_unknown_ids(run_dir, tmp_path):
    service, _, _, view = _service(run_dir, tmp_path)
    req = RecommendRequest(user_id=str(view.dataset.user_ids[2]), history=["i5", "nope", 7])
    res = resolve(req, service.state, now=10**10)
    stored = service.state.histories.of_user(2)[0]
    assert res.user == 2 and res.ignored == ["nope", "7"]
    assert res.batch.history_of(0).tolist() == (stored.tolist() + [view.dataset.item_ids.tolist().index("i5")])[-50:]
    assert res.batch.now[0] == 10**10


def test_stack_batches_repads_rows():
    a = RequestBatch.from_sequences([1], [np.array([3, 4])], [np.array([10, 20])], now=[30])
    b = RequestBatch.from_sequences([None], [np.array([5, 6, 7])], [np.array([1, 2, 3])], now=[4])
    both = stack_batches([a, b])
    assert both.history.shape == (2, 3) and both.history_of(0).tolist() == [3, 4] and both.history_of(1).tolist() == [5, 6, 7]
    assert both.users.tolist() == [1, -1] and both.now.tolist() == [30, 4] and both.history_times[0].tolist() == [0, 10, 20]


def test_serving_config_errors_name_the_key(tmp_path, run_dir):
    with pytest.raises(ConfigError, match="ingres: unknown key"):
        parse_serve_config({"ingres": {}})
    with pytest.raises(ConfigError, match="channel_defaults.num_cpus"):
        parse_serve_config({"channel_defaults": {"num_cpus": -1}})
    with pytest.raises(ConfigError, match="arm names must be unique"):
        parse_serve_config({"experiment": {"name": "e", "salt": "s", "arms": [{"name": "a", "weight": 1}, {"name": "a", "weight": 1}]}})
    with pytest.raises(ConfigError, match="config file not found"):
        load_serve_config(tmp_path / "missing.yaml")
    assert load_serve_config("configs/serving.yaml").http.host == "127.0.0.1"
    bad_arm = parse_serve_config({"experiment": {"name": "e", "salt": "s", "arms": [{"name": "a", "weight": 1, "channels": ["ghost"]}]}})
    with pytest.raises(ConfigError, match="unknown channel"):
        IngressState.build(RunView.open(run_dir), bad_arm, with_logs=False)


def test_channels_named_in_config_must_exist(run_dir):
    pytest.importorskip("ray.serve")
    from pipeline.serving.app import check

    with pytest.raises(ConfigError, match="not in the run"):
        check(run_dir, parse_serve_config({"channels": {"ghost": {}}}))


def test_cpu_demand_must_fit_the_local_node(run_dir):
    pytest.importorskip("ray.serve")
    from pipeline.serving.app import check_cpus, cpu_demand

    cfg = parse_serve_config({"channel_defaults": {"num_cpus": 0.5}, "ingress": {"replicas": 2, "num_cpus": 0.25}})
    channels = RunView.open(run_dir).channel_configs()
    demand = cpu_demand(cfg, channels)
    assert demand["ingress"] == 0.5 and demand["ranker"] == 0.25
    assert sum(v for k, v in demand.items() if k.startswith("channel-")) == 0.5 * len(channels)
    total = sum(demand.values())
    check_cpus(demand, total)  # an exact fit is fine
    with pytest.raises(ConfigError, match=rf"reserve {total:g} CPUs .*ingress 0.5.* but the Ray node has 1; lower num_cpus"):
        check_cpus(demand, 1.0)


def test_warmup_touches_every_stage(run_dir, tmp_path):
    service, backends, _, _ = _service(run_dir, tmp_path)
    calls = []
    original = backends.retrieve

    async def counting(channel, batch, k, run):
        calls.append(channel)
        return await original(channel, batch, k, run)

    backends.retrieve = counting
    assert asyncio.run(service.warmup(max_rounds=5)) == 2  # a clean second round ends it
    assert sorted(calls) == ["item2item", "item2item", "popularity", "popularity"]
    assert not list((tmp_path / "logs").glob("served-*.jsonl"))  # warm-up is not logged


def test_openapi_schema_documents_the_api(run_dir, tmp_path):
    _, _, client, _ = _service(run_dir, tmp_path)
    schema = client.get("/openapi.json").json()
    req = schema["components"]["schemas"]["RecommendRequest"]
    assert req["additionalProperties"] is False and req["properties"]["k"]["maximum"] == 100
    assert "422" in schema["paths"]["/recommend"]["post"]["responses"]
    json.dumps(schema)


def test_a_run_swapped_in_keeps_answering_and_drops_stages_built_from_other_data(run_dir, tmp_path):
    from pipeline.config import parse_config
    from pipeline.workflow import train
    from tests.test_serving_support import TINY

    service, _, client, view = _service(run_dir, tmp_path)
    other = dict(TINY, data={"source": "synthetic", "synthetic": {"n_users": 120, "n_items": 90, "seed": 9}})
    new_view = RunView.open(train(parse_config(other), run_dir=tmp_path / "other"))
    old = service.swap(IngressState.build(new_view, service.cfg, with_logs=False))
    assert old is not None and old.fingerprint != new_view.fingerprint
    body = client.post("/recommend", json={"user_id": str(new_view.dataset.user_ids[1]), "k": 5}).json()
    assert sorted(body["degraded"]) == ["item2item", "popularity", "ranker", "reranker"] and body["fallback"] is True
    assert len(body["items"]) == 5 and {i["item_id"] for i in body["items"]} <= set(new_view.dataset.item_ids.astype(str))
    assert client.get("/healthz").json()["run"] == str(new_view.path)
    service.swap(old)
    assert client.post("/recommend", json={"k": 5}).json()["degraded"] == []


def test_the_runs_trained_ranker_serves_and_matches_the_in_process_cascade(tmp_path):
    pytest.importorskip("lightgbm")
    from pipeline.config import parse_config
    from pipeline.core.types import Request
    from pipeline.workflow import load_run, train
    from tests.test_serving_support import TINY

    run_dir = train(parse_config(dict(TINY, ranker={"kind": "lgbm", "params": {"n_estimators": 30}})), run_dir=tmp_path / "run")
    arms = [{"name": "trained", "weight": 1}, {"name": "plain", "weight": 1, "ranker": {"kind": "passthrough"}}]
    service, _, client, view = _service(run_dir, tmp_path, experiment={"name": "e", "salt": "s", "arms": arms})
    user = str(view.dataset.user_ids[3])
    trained = client.post("/recommend", json={"user_id": user, "k": 5, "arm": "trained"}).json()
    plain = client.post("/recommend", json={"user_id": user, "k": 5, "arm": "plain"}).json()
    assert trained["degraded"] == [] == plain["degraded"]
    hist = view.split.history(view.stage)
    rows = hist[hist["user_id"] == 3]
    rec = load_run(run_dir).cascade.recommend(Request(user=3, history=rows["item_id"].to_numpy(np.int64),
                                                      history_times=rows["timestamp"].to_numpy(np.int64), k=5, now=int(time.time())))
    assert [i["item_id"] for i in trained["items"]] == view.dataset.item_ids[rec.items].astype(str).tolist()
    assert [i["item_id"] for i in trained["items"]] != [i["item_id"] for i in plain["items"]]
    with pytest.raises(ConfigError, match="must be trained"):
        view.build_ranker(parse_config(dict(TINY, ranker={"kind": "lgbm"})).ranker.model_copy(update={"params": {"n_estimators": 5}}))


def test_an_online_arm_serves_a_ranker_trained_for_an_offline_arm(tmp_path):
    from pipeline.config import parse_config
    from pipeline.serving.app import check
    from pipeline.workflow import train
    from tests.test_serving_support import TINY

    lgbm = {"kind": "lgbm", "params": {"n_estimators": 10, "num_leaves": 7, "min_child_samples": 5, "holdout": 0.2}}
    run = train(parse_config(TINY | {"arms": [{"name": "base"}, {"name": "gbdt", "ranker": lgbm}]}), run_dir=tmp_path / "run")
    arms = {"name": "e", "salt": "s", "arms": [{"name": "control", "weight": 1}, {"name": "t", "weight": 1, "ranker": lgbm}]}
    cfg = parse_serve_config({"logging": {"dir": str(tmp_path / "logs")}, "experiment": arms})
    check(run, cfg)  # the arm's ranker is in the run: accepted before any Ray work
    service, backends, client, view = _service(run, tmp_path, experiment=arms)
    assert type(backends.ranker.by_arm["t"]).__name__ == "LightGBMRanker"
    assert type(backends.ranker.by_arm["control"]).__name__ == "PassThroughRanker"
    body = client.post("/recommend", json={"history": ["i1", "i2"], "k": 5, "arm": "t"}).json()
    assert body["arm"] == "t" and body["degraded"] == [] and len(body["items"]) == 5
    service.state.served_log.close()
    untrained = {"name": "e", "salt": "s", "arms": [{"name": "control", "weight": 1},
                                                    {"name": "m", "weight": 1, "ranker": {"kind": "mtgr"}}]}
    with pytest.raises(ConfigError, match="experiment arm 'm': ranker 'mtgr' .* must be trained"):
        check(run, parse_serve_config({"experiment": untrained}))


def test_grouped_channels_are_asked_in_one_call_and_fail_alone():
    """channel_groups: the channels of a group share one deployment call per request; one that
    raises inside the group is dropped alone."""
    import asyncio

    from pipeline.core.types import Retrieved
    from pipeline.serving.ab import ArmPlan
    from pipeline.serving.service import ArmStages

    class GroupBackends:
        group_of = {"a": "cheap", "b": "cheap"}

        def __init__(self):
            self.calls = []

        async def retrieve_group(self, group, names, batch, ks, run):
            self.calls.append((group, tuple(names), dict(ks)))
            await asyncio.sleep(0.01)
            return {"a": Retrieved(np.array([[1, 2]]), np.array([[2.0, 1.0]], np.float32)), "b": RuntimeError("b is down")}

        async def retrieve(self, channel, batch, k, run):
            return Retrieved(np.array([[7]]), np.array([[1.0]], np.float32))

    plan = ArmPlan("default", ("a", "b", "c"), {"a": 2, "b": 3, "c": 1}, 10, True, None, None)
    backends = GroupBackends()
    stages = ArmStages(backends, "default", "fp", plan)

    async def all_three():
        return await asyncio.gather(*(stages.retrieve(c, None, plan.quotas[c]) for c in plan.channels), return_exceptions=True)

    a, b, c = asyncio.run(all_three())
    assert backends.calls == [("cheap", ("a", "b"), {"a": 2, "b": 3})]
    assert a.items.tolist() == [[1, 2]] and isinstance(b, RuntimeError) and c.items.tolist() == [[7]]


def test_channel_groups_are_checked_and_drop_names_the_run_does_not_serve():
    with pytest.raises(ConfigError, match="in both 'g1' and 'g2'"):
        parse_serve_config({"channel_groups": {"g1": {"channels": ["a", "b"]}, "g2": {"channels": ["b"]}}})
    cfg = parse_serve_config({"channel_groups": {"cheap": {"channels": ["popularity", "i2i_long"]}, "none": {"channels": ["x"]}}})
    assert cfg.groups_of(("popularity", "item2item")) == {"cheap": ["popularity"]}


# --- the live endpoints (POST /items, /events, DELETE|PUT /items/{id}, /feedback) on the local store


def _live(run_dir, tmp_path, **history):
    """A service whose local history store lives in this test's folder (the default folder is the
    shared run's)."""
    return _service(run_dir, tmp_path, history={"dir": str(tmp_path / "store"), **history})


def _count(client, line: str) -> float:
    """A sample of GET /metrics by its name and labels (0 when absent)."""
    for row in client.get("/metrics").text.splitlines():
        if row.startswith(line + " "):
            return float(row.rsplit(" ", 1)[1])
    return 0.0


def _down(*_a, **_k):
    raise ConnectionError("store unreachable")


def test_posted_items_name_what_is_new_and_what_is_known(run_dir, tmp_path):
    service, backends, client, view = _live(run_dir, tmp_path)
    known = str(view.dataset.item_ids[2])
    body = {"items": [{"item_id": "fresh-1", "title": "a"}, {"item_id": known}, {"item_id": "fresh-1", "title": "b"}]}
    first = client.post("/items", json=body)
    assert first.status_code == 202
    assert first.json() == {"accepted": 3, "added": ["fresh-1"], "updated": [known], "version": 3}
    assert service.state.maps.item_index["fresh-1"] == len(view.dataset.item_ids)  # served from the next request
    assert [r["item_id"] for r in service.state.live_records] == ["fresh-1", known, "fresh-1"]
    again = client.post("/items", json={"items": [{"item_id": "fresh-1"}]}).json()
    assert again == {"accepted": 1, "added": [], "updated": ["fresh-1"], "version": 4}
    assert _count(client, "hybridrec_live_items_total") == 4.0
    assert client.post("/recommend", json={"k": 5}).json()["degraded"] == []
    backends.close()


def test_posting_a_removed_item_makes_it_available_again(run_dir, tmp_path):
    service, backends, client, view = _live(run_dir, tmp_path, catalog_ttl_s=60)
    top = client.post("/recommend", json={"k": 5}).json()["items"][0]["item_id"]  # caches the (empty) removed set
    assert client.delete(f"/items/{top}").json() == {"item_id": top, "available": False}
    assert backends.store.unavailable() == {top}
    assert top not in [i["item_id"] for i in client.post("/recommend", json={"k": 5}).json()["items"]]  # the cache was dropped
    assert client.post("/items", json={"items": [{"item_id": top}]}).json()["updated"] == [top]
    assert backends.store.unavailable() == set()
    assert client.post("/recommend", json={"k": 5}).json()["items"][0]["item_id"] == top
    assert client.put(f"/items/{top}/available").json() == {"item_id": top, "available": True}
    backends.close()


def test_a_store_that_refuses_items_answers_a_retryable_503_and_changes_nothing(run_dir, tmp_path):
    service, backends, client, _ = _live(run_dir, tmp_path)
    backends.add_items = _down
    r = client.post("/items", json={"items": [{"item_id": "fresh-2"}]})
    assert r.status_code == 503 and r.headers["Retry-After"] == "1" and "retry later" in r.json()["error"]
    assert "fresh-2" not in service.state.maps.item_index and backends.store.items(0) == []
    assert _count(client, "hybridrec_live_items_total") == 0.0
    backends.close()


def test_a_full_live_catalog_answers_409_before_storing(run_dir, tmp_path):
    _, backends, client, _ = _live(run_dir, tmp_path, max_live_items=3)
    assert client.post("/items", json={"items": [{"item_id": "a"}, {"item_id": "b"}]}).status_code == 202
    assert client.post("/items", json={"items": [{"item_id": "c"}]}).json()["version"] == 3  # exactly full is fine
    full = client.post("/items", json={"items": [{"item_id": "d"}]})
    assert full.status_code == 409
    assert full.json()["error"].startswith("the live catalog holds 3 records and takes at most 3 (history.max_live_items)")
    assert len(backends.store.items(0)) == 3
    backends.close()


def test_events_count_their_outcomes_and_default_to_the_time_received(run_dir, tmp_path):
    service, backends, client, view = _live(run_dir, tmp_path)
    user, item = str(view.dataset.user_ids[1]), str(view.dataset.item_ids[4])
    t0 = int(time.time())
    body = {"events": [{"user_id": user, "item_id": item}, {"user_id": user, "item_id": "ghost", "event_id": "e1"},
                       {"user_id": user, "item_id": "ghost", "event_id": "e2", "value": 3}]}
    first = client.post("/events", json=body)
    assert first.status_code == 202 and first.json() == {"accepted": 3, "duplicates": 0, "unknown_items": ["ghost"]}
    stored = backends.store.recent(user, 10)
    assert [i for _, i in stored] == [item, "ghost", "ghost"] and t0 <= stored[0][0] <= int(time.time())
    again = client.post("/events", json={"events": [{"user_id": user, "item_id": "ghost", "event_id": "e1"}]}).json()
    assert again == {"accepted": 0, "duplicates": 1, "unknown_items": ["ghost"]}
    assert [_count(client, f'hybridrec_events_total{{outcome="{o}"}}') for o in ("accepted", "duplicate", "unknown_item")] == [3, 1, 3]
    backends.close()


def test_a_store_that_refuses_events_answers_503_and_counts_them(run_dir, tmp_path):
    service, backends, client, view = _live(run_dir, tmp_path)
    backends.add_events = _down
    events = [{"user_id": "u", "item_id": str(view.dataset.item_ids[0])}, {"user_id": "u", "item_id": "x"}]
    r = client.post("/events", json={"events": events})
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    assert r.json()["error"] == "the history store is unavailable; nothing was stored, retry later"
    assert _count(client, 'hybridrec_events_total{outcome="refused"}') == 2.0
    assert _count(client, 'hybridrec_events_total{outcome="accepted"}') == 0.0
    backends.close()


def test_availability_changes_need_a_served_item_and_a_working_store(run_dir, tmp_path):
    service, backends, client, view = _live(run_dir, tmp_path)
    item = str(view.dataset.item_ids[7])
    missing = client.put("/items/nope/available")
    assert missing.status_code == 404 and missing.json()["error"] == "item 'nope' is not in the served catalog"
    backends.set_available = _down
    r = client.delete(f"/items/{item}")
    assert r.status_code == 503 and r.headers["Retry-After"] == "1" and "nothing was changed" in r.json()["error"]
    assert backends.store.unavailable() == set()
    backends.close()


def test_without_a_history_store_the_live_endpoints_answer_404(run_dir, tmp_path):
    service, _, client, view = _service(run_dir, tmp_path, history={"backend": "off"})
    item = str(view.dataset.item_ids[0])
    for r in (client.post("/items", json={"items": [{"item_id": "z"}]}),
              client.post("/events", json={"events": [{"user_id": "u", "item_id": item}]}),
              client.delete(f"/items/{item}"), client.put(f"/items/{item}/available")):
        assert r.status_code == 404 and "history.backend: off" in r.json()["error"]
    assert client.post("/recommend", json={"user_id": "u", "k": 3}).json()["degraded"] == []
    service.state.served_log.close()


def test_the_removed_set_is_reread_after_its_ttl_and_kept_when_the_store_fails(run_dir, tmp_path):
    top_of = lambda c: [i["item_id"] for i in c.post("/recommend", json={"k": 5}).json()["items"]]  # noqa: E731
    service, backends, client, _ = _live(run_dir, tmp_path, catalog_ttl_s=60)
    top = top_of(client)[0]
    backends.store.set_available([top], False)  # behind the service's back: its cached set still holds
    assert top_of(client)[0] == top
    backends.close()
    service, backends, client, _ = _live(run_dir, tmp_path / "b", catalog_ttl_s=0)
    assert top_of(client)[0] == top
    backends.store.set_available([top], False)
    assert top not in top_of(client)
    backends.unavailable = _down  # a failing store keeps the last set read
    assert top not in top_of(client)
    backends.close()


def test_live_records_are_read_after_their_ttl_and_a_failing_read_keeps_them(run_dir, tmp_path):
    service, backends, client, _ = _live(run_dir, tmp_path, catalog_ttl_s=60)
    client.post("/recommend", json={"k": 3})
    backends.store.add_items([{"item_id": "side-door", "title": "", "categories": "", "category": "", "brand": "",
                               "price": None, "created_at": 1}])
    client.post("/recommend", json={"k": 3})
    assert service.state.live_records == []  # read at most once a minute here
    service.state.live_checked = 0.0
    client.post("/recommend", json={"k": 3})
    assert [r["item_id"] for r in service.state.live_records] == ["side-door"]
    service.state.live_checked = 0.0
    backends.live_items = _down
    assert client.post("/recommend", json={"k": 3}).status_code == 200
    assert [r["item_id"] for r in service.state.live_records] == ["side-door"] and "side-door" in service.state.maps.item_index
    backends.close()


def test_a_failing_or_slow_history_store_degrades_the_request_with_its_reason(run_dir, tmp_path):
    service, backends, client, view = _live(run_dir, tmp_path, budget_ms=30)
    user = str(view.dataset.user_ids[3])
    backends.history = _down
    down = client.post("/recommend", json={"user_id": user, "k": 4}).json()
    assert down["degraded"] == ["history_store"] and len(down["items"]) == 4

    async def slow(user_id, limit):
        await asyncio.sleep(0.5)
        return []

    backends.history = slow
    assert client.post("/recommend", json={"user_id": user, "k": 4}).json()["degraded"] == ["history_store"]
    assert _count(client, 'hybridrec_degraded_total{component="history_store",reason="error"}') == 1.0
    assert _count(client, 'hybridrec_degraded_total{component="history_store",reason="timeout"}') == 1.0
    backends.close()


def test_feedback_with_a_user_joins_their_history_and_is_logged_when_the_store_is_down(run_dir, tmp_path):
    service, backends, client, view = _live(run_dir, tmp_path)
    item = str(view.dataset.item_ids[5])
    ok = client.post("/feedback", json={"request_id": "r1", "item_id": item, "user_id": "fan", "event": "click"})
    assert ok.status_code == 202 and ok.json() == {"accepted": True}
    assert [i for _, i in backends.store.recent("fan", 5)] == [item]
    repeat = client.post("/feedback", json={"request_id": "r1", "item_id": item, "user_id": "fan", "event": "click"})
    assert repeat.json() == {"accepted": True} and len(backends.store.recent("fan", 5)) == 1  # one id per click
    backends.add_events = _down
    logged = client.post("/feedback", json={"request_id": "r2", "item_id": item, "user_id": "fan"})
    assert logged.status_code == 202 and logged.json() == {"accepted": True}
    assert client.post("/feedback", json={"request_id": "r3", "item_id": item}).json() == {"accepted": True}  # no user: log only
    service.state.feedback_log.close()
    assert [r["request_id"] for r in read_events(tmp_path / "logs", "feedback")] == ["r1", "r1", "r2", "r3"]
    assert _count(client, 'hybridrec_events_total{outcome="refused"}') == 1.0
    service.state.feedback_log = None
    assert client.post("/feedback", json={"request_id": "r4", "item_id": item}).json() == {"accepted": False}
    service.state.served_log.close()
    backends.close()
