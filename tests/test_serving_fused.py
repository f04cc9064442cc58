"""The fused topology without Ray: every stage inside the ingress, concurrent requests computed as
one batch (`pipeline.serving.fused`). Its answers must be the split topology's, request by request."""
from __future__ import annotations

import asyncio
import shutil

import numpy as np
import pytest

from pipeline.config import ConfigError
from pipeline.serving.api import ItemIn, ItemsRequest, RecommendRequest
from pipeline.serving.app import cpu_demand
from pipeline.serving.components import Fault, LocalBackends
from pipeline.serving.config import parse_serve_config
from pipeline.serving.fused import FusedService, InProcessStages, MicroBatcher
from pipeline.serving.runview import RunView
from pipeline.serving.service import IngressState, RecommendService
from tests.test_serving_support import tiny_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("fused") / "run")


def _pair(run_dir, tmp_path):
    """A split service and a fused one over the same run, each with its own history store."""
    cfg = parse_serve_config({"topology": "fused", "ingress": {"max_batch_size": 8}, "logging": {"dir": str(tmp_path / "logs")},
                              "history": {"dir": str(tmp_path / "split-history")}})
    view = RunView.open(run_dir)
    split = RecommendService(IngressState.build(view, cfg, with_logs=False), LocalBackends(view, cfg), cfg)
    fcfg = cfg.model_copy(update={"history": cfg.history.model_copy(update={"dir": str(tmp_path / "fused-history")})})
    fused = FusedService(LocalBackends(view, fcfg), fcfg)
    fused.install(IngressState.build(view, fcfg, with_logs=False), InProcessStages(view, fcfg))
    return split, fused, view


def _bodies(view, n: int) -> list[RecommendRequest]:
    rng = np.random.default_rng(11)
    users, items = view.dataset.user_ids, view.dataset.item_ids
    out = []
    for i in range(n):
        kind = i % 4
        body = {"k": int(rng.integers(1, 20)), "now": 1_900_000_000 + i}
        if kind in (0, 1):
            body["user_id"] = str(users[int(rng.integers(len(users)))])
        if kind in (1, 2):
            body["history"] = [str(x) for x in rng.choice(items, size=int(rng.integers(1, 5)))] + (["nope"] if kind == 2 else [])
        if kind == 3 and i % 8 == 3:
            body["user_id"] = "someone-new"
        out.append(RecommendRequest.model_validate(body))
    return out


def _ids(answer) -> list[str]:
    return [i.item_id for i in answer.items]


def test_concurrent_requests_are_batched_and_answer_the_split_lists(run_dir, tmp_path):
    split, fused, view = _pair(run_dir, tmp_path)
    bodies = _bodies(view, 60)

    async def both():
        one_by_one = [await split.recommend(b) for b in bodies]
        together = await asyncio.gather(*(fused.recommend(b) for b in bodies))
        return one_by_one, together

    want, got = asyncio.run(both())
    for body, w, g in zip(bodies, want, got):
        assert _ids(g) == _ids(w), body
        assert [i.score for i in g.items] == pytest.approx([i.score for i in w.items], rel=1e-5, abs=1e-6)
        assert (g.degraded, g.fallback, g.history_used) == (w.degraded, w.fallback, w.history_used)
    assert fused.batcher.items == 60 and fused.batcher.batches < 20  # computed together, at most 8 at a time
    assert 'hybridrec_batch_rows_bucket{le="8.0"} ' in fused.metrics.render().decode()


def test_a_failing_channel_degrades_its_batch_and_the_rest_still_answers(run_dir, tmp_path):
    _, fused, view = _pair(run_dir, tmp_path)
    fused.stages[id(fused.state)].channels["item2item"].fault = Fault(error_rate=1.0)
    bodies = [RecommendRequest(user_id=str(u), k=5) for u in view.dataset.user_ids[:10]]

    async def go():
        return await asyncio.gather(*(fused.recommend(b) for b in bodies))

    for answer in asyncio.run(go()):
        assert answer.degraded == ["item2item"] and len(answer.items) == 5
        assert all(i.reasons == ["channel:popularity"] for i in answer.items)


def test_a_live_item_reaches_the_in_process_stages_before_the_next_batch(run_dir, tmp_path):
    _, fused, view = _pair(run_dir, tmp_path)
    stages = fused.stages[id(fused.state)]
    n = len(view.dataset.item_ids)

    async def go():
        added = await fused.add_items(ItemsRequest(items=[ItemIn(item_id="fresh-1", title="a new thing", price=3.0)]))
        answer = await fused.recommend(RecommendRequest(user_id=str(view.dataset.user_ids[0]), k=5))
        return added, answer

    added, answer = asyncio.run(go())
    assert added.added == ["fresh-1"] and len(answer.items) == 5
    assert stages.ranker.live.n_items == n + 1 and stages.reranker.live.n_items == n + 1
    assert all(c.live.n_items == n + 1 for c in stages.channels.values())


def test_batcher_hands_an_error_to_its_batch_only_and_skips_callers_that_gave_up():
    calls: list[list[int]] = []

    def compute(items):
        calls.append(list(items))
        if -1 in items:
            raise ValueError("bad batch")
        return [i * 10 for i in items]

    batcher = MicroBatcher(compute, max_batch_size=3)

    async def go():
        bad = await asyncio.gather(batcher.submit(-1), batcher.submit(2), return_exceptions=True)
        waiting = asyncio.ensure_future(batcher.submit(99))
        await asyncio.sleep(0)  # queued
        waiting.cancel()
        good = await asyncio.gather(*(batcher.submit(i) for i in range(7)))
        return bad, good

    bad, good = asyncio.run(go())
    batcher.close()
    assert [type(b).__name__ for b in bad] == ["ValueError", "ValueError"]
    assert good == [0, 10, 20, 30, 40, 50, 60]
    assert max(len(c) for c in calls) <= 3 and 99 not in sum(calls, [])


def test_fused_config_checks_and_reserves_the_ingress_only(run_dir):
    with pytest.raises(ConfigError, match="channel_groups: the fused topology"):
        parse_serve_config({"topology": "fused", "channel_groups": {"cheap": {"channels": ["popularity"]}}})
    with pytest.raises(ConfigError, match="topology"):
        parse_serve_config({"topology": "merged"})
    cfg = parse_serve_config({"topology": "fused", "ingress": {"replicas": 2, "num_cpus": 0.5}, "history": {"num_cpus": 0.1}})
    assert cpu_demand(cfg, ["popularity", "item2item"]) == {"ingress": 1.0, "history": 0.1}
    split = cpu_demand(cfg.model_copy(update={"topology": "split"}), ["popularity", "item2item"])
    assert {"channel-popularity", "channel-item2item", "ranker", "reranker"} <= set(split)


def _served(run_dir, tmp_path, **raw):
    """Start the fused app on this run; (urls to send to, in-process cascades, the state, the config)."""
    from pipeline.serving import app
    from tests.test_serving_support import free_port, in_process_cascades

    base = {"topology": "fused", "http": {"port": free_port()}, "logging": {"dir": str(tmp_path / "logs")},
            "ray": {"num_cpus": 2, "object_store_mb": 200, "app_name": "hybridrec-fused-test"},
            "ingress": {"replicas": 1, "num_cpus": 0.2},
            "history": {"num_cpus": 0.1, "dir": str(tmp_path / "history"), "budget_ms": 5000}}  # a busy box is load, not logic
    for key, value in raw.items():
        base[key] = {**base.get(key, {}), **value}
    cfg = parse_serve_config(base)
    view = RunView.open(run_dir)
    state = IngressState.build(view, cfg, with_logs=False)
    url = app.start(run_dir, cfg)
    urls = app.direct_urls(cfg, timeout_s=60) if cfg.http.direct_ingress else [url]
    return urls, in_process_cascades(view, state), state, view, url


def _same_as_in_process(urls, cascades, state, view, n: int = 40) -> None:
    """n requests from 8 client threads, spread over `urls`: each list is the in-process one."""
    import concurrent.futures

    import requests

    from pipeline.serving.service import resolve

    bodies = [b.model_dump(exclude_none=True) for b in _bodies(view, n)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda ib: requests.post(f"{urls[ib[0] % len(urls)]}/recommend", json=ib[1], timeout=60),
                                enumerate(bodies)))
    for body, answer in zip(bodies, answers):
        assert answer.status_code == 200, answer.text
        req = RecommendRequest.model_validate(body)
        want = cascades["default"].run(resolve(req, state).batch, req.k)
        assert [i["item_id"] for i in answer.json()["items"]] == view.dataset.item_ids[want.final[0].items[: req.k]].astype(str).tolist()
        assert answer.json()["degraded"] == want.degraded


def _event_reaches(post_to: str, read_from: str, view) -> None:
    import requests

    user, item = str(view.dataset.user_ids[5]), str(view.dataset.item_ids[7])
    before = requests.post(f"{read_from}/recommend", json={"user_id": user, "k": 5}, timeout=30).json()["history_used"]
    event = requests.post(f"{post_to}/events", json={"events": [{"user_id": user, "item_id": item, "time": 2_000_000_000}]}, timeout=30)
    assert event.status_code == 202
    after = requests.post(f"{read_from}/recommend", json={"user_id": user, "k": 5}, timeout=30).json()
    assert after["history_used"] == min(before + 1, view.config.data.max_history) and item not in [i["item_id"] for i in after["items"]]


def test_the_fused_app_over_http_answers_the_in_process_lists_and_live_events(run_dir, tmp_path):
    """Ray Serve, real HTTP through Serve's proxy, concurrent clients: the fused ingress batches
    them and every list is the in-process cascade's; an event posted is in the user's next list."""
    pytest.importorskip("ray.serve")
    import requests

    from pipeline.serving import app

    urls, cascades, state, view, _ = _served(run_dir, tmp_path)
    try:
        _same_as_in_process(urls, cascades, state, view)
        _event_reaches(urls[0], urls[0], view)
        assert "hybridrec_batch_rows_count" in requests.get(f"{urls[0]}/metrics", timeout=10).text
    finally:
        app.stop()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed (.ci/run installs it)")
def test_the_throughput_setup_direct_ingress_on_redis_shares_events_between_replicas(run_dir, tmp_path):
    """configs/serving-throughput.yaml's setup: two fused replicas, each on its own port (no proxy
    hop) and each reading Redis itself. An event posted to one replica is in the next list the
    OTHER one serves; the proxy port still answers; Ray's environment is left as it was."""
    pytest.importorskip("ray.serve")
    import os

    import requests

    from pipeline.serving import app
    from tests.test_history import redis_server
    from tests.test_serving_support import free_port

    port = free_port()
    with redis_server(port):
        urls, cascades, state, view, proxy = _served(
            run_dir, tmp_path, http={"direct_ingress": True, "direct_port_from": free_port()}, ingress={"replicas": 2},
            history={"backend": "redis", "redis_url": f"redis://127.0.0.1:{port}/0", "prefix": "fused-test"})
        try:
            assert len(urls) == 2 and proxy not in urls and all(u.startswith("http://127.0.0.1:") for u in urls)
            _same_as_in_process(urls, cascades, state, view)
            _event_reaches(urls[0], urls[1], view)
            assert requests.post(f"{proxy}/recommend", json={"k": 3}, timeout=30).status_code == 200
            assert os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "1"
        finally:
            app.stop()
    assert "RAY_SERVE_ENABLE_DIRECT_INGRESS" not in os.environ  # the next node (or `serve` command) gets Serve's defaults


def test_the_shipped_throughput_config_is_fused_direct_on_redis_and_loopback():
    from pipeline.resources import CONFIG_DIR
    from pipeline.serving.config import load_serve_config

    cfg = load_serve_config(CONFIG_DIR / "serving-throughput.yaml")
    assert (cfg.topology, cfg.http.direct_ingress, cfg.history.backend) == ("fused", True, "redis")
    assert cfg.http.host == "127.0.0.1" and not cfg.history_deployment
    assert cpu_demand(cfg, ["popularity"]) == {"ingress": 2 * cfg.ingress.num_cpus}


def test_a_run_installed_mid_traffic_serves_the_next_batches_and_keeps_two_runs_at_most(run_dir, tmp_path):
    """A rolling update in place: requests already resolved finish on the previous run, the next
    ones use the new run; only the current and the previous runs stay loaded, so a request
    resolved two updates ago gets a retryable 503 (alone, not its whole batch)."""
    _, fused, view = _pair(run_dir, tmp_path)
    first = fused.state
    bodies = [RecommendRequest(user_id=str(u), k=5) for u in view.dataset.user_ids[:12]]

    def update():
        fused.install(IngressState.build(view, fused.cfg, with_logs=False), InProcessStages(view, fused.cfg))

    async def go():
        once = [asyncio.ensure_future(fused.recommend(b)) for b in bodies]
        await asyncio.sleep(0)  # resolved on the first run, waiting for the stores
        update()
        once = await asyncio.gather(*once, return_exceptions=True)
        twice = [asyncio.ensure_future(fused.recommend(b)) for b in bodies]
        await asyncio.sleep(0)
        update()
        update()
        late = [asyncio.ensure_future(fused.recommend(b)) for b in bodies]  # computed with the stale ones
        return once, await asyncio.gather(*twice, return_exceptions=True), await asyncio.gather(*late)

    once, twice, late = asyncio.run(go())
    assert all(not isinstance(a, Exception) for a in once) and [_ids(a) for a in once] == [_ids(a) for a in late]
    assert all(getattr(e, "status", None) == 503 and "no longer loaded" in str(e) for e in twice)
    assert len(fused.stages) == 2 and id(first) not in fused.stages
