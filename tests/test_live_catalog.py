"""The live catalog (POST /items): items added after training are served from the next request.

Unit level: the record format, the dense ids every stage derives from the same ordered records,
the rankers' attribute codes for new items, both stores (a real redis-server for Redis). Service
level, over HTTP (FastAPI's client on the real app, every stage in process): a run with COBRA and
the two-tower (which embed items from content), the MTGR ranker and the rule re-ranker takes a new
item, recommends it on the next request, keeps it after a restart, removes it on DELETE, and
refuses bad records with the field named."""
from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.serving.catalog import LiveItems, LiveSync, StageKey, first_records, items_frame, record_of, split_key
from pipeline.serving.history import LocalStore, RedisStore
from rankers.features import ItemAttributes
from tests.test_history import needs_redis, redis_server


def test_records_are_complete_and_live_ids_follow_first_appearance():
    rec = record_of("n1", {"title": "Lip balm", "categories": ["Beauty", "Lips"], "price": 3}, now=100)
    assert rec == {"item_id": "n1", "title": "Lip balm", "categories": "Beauty|Lips", "category": "Lips",
                   "brand": "", "price": 3.0, "created_at": 100}
    records = [record_of(i, {}, now=1) for i in ("a", "old", "b", "a", "c")]
    assert [r["item_id"] for r in first_records({"old": 0}, records)] == ["a", "b", "c"]
    frame = items_frame(first_records({"old": 0}, records), first_id=7)
    assert frame["item_id"].tolist() == [7, 8, 9] and np.isnan(frame["price"]).all()
    assert split_key("fp") == ("fp", None)
    live = LiveItems(2, tuple(records[:2]))
    assert split_key(StageKey("fp", live)) == ("fp", live)


def test_a_stage_applies_each_live_item_once_in_order():
    applied: list[tuple[list[int], list[str]]] = []
    sync = LiveSync(np.array(["x", "y"]), lambda frame, ids: applied.append((frame["item_id"].tolist(), ids)))
    records = [record_of(i, {}, now=1) for i in ("x", "n1", "n2", "n1", "n3")]
    assert sync.catch_up(records[:3]) == 2  # 'x' is trained: only its content is stored
    assert sync.catch_up(records[:3]) == 0  # the same version again: nothing
    asyncio.run(sync.sync(LiveItems(5, tuple(records))))
    assert applied == [([2, 3], ["n1", "n2"]), ([4], ["n3"])]
    assert sync.version == 5 and sync.n_items == 5
    assert not sync.behind(LiveItems(4, tuple(records[:4])))


def _items() -> pd.DataFrame:
    return pd.DataFrame({"item_id": np.arange(4), "category": ["a", "b", "a", ""], "brand": ["x", "y", "z", "x"],
                         "categories": ["r|a", "r|b", "r|a", ""], "price": [1.0, 5.0, 10.0, np.nan]})


def test_new_items_get_the_codes_and_price_buckets_of_trained_values():
    attrs = ItemAttributes.from_items(_items(), 4, ("category", "brand", "categories"), buckets=3)
    new = pd.DataFrame({"item_id": [4, 5], "category": ["b", "unseen"], "brand": ["x", ""], "categories": ["r|a", "q"],
                        "price": [5.0, np.nan]})
    grown = attrs.extend(new)
    for a in ("category", "brand", "categories"):
        assert np.array_equal(grown.codes[a][:4], attrs.codes[a])
    assert grown.codes["category"][4] == attrs.codes["category"][1]  # 'b' keeps its code
    assert grown.codes["brand"][4] == attrs.codes["brand"][0]
    assert grown.codes["categories"][4] == attrs.codes["categories"][0]
    assert [grown.codes[a][5] for a in ("category", "brand", "categories")] == [0, 0, 0]  # unknown values
    assert grown.price_bucket[4] == attrs.price_bucket[1] and grown.price_bucket[5] == 0
    assert grown.sizes == attrs.sizes  # the embedding tables keep their size
    with pytest.raises(ValueError, match="item_id 4..4 in order"):
        attrs.extend(new.iloc[1:])


def test_the_rankers_feature_codes_for_new_items_survive_save_and_load(tmp_path):
    from pipeline.data import leave_one_out, synthesize
    from pipeline.workflow import fit_data
    from rankers.features import CrossFeatures

    ds = synthesize(n_users=60, n_items=40, seed=1)
    data = fit_data(ds, leave_one_out(ds.interactions), "test", 0)
    feats = CrossFeatures(("popularity",)).fit(data)
    feats.save(tmp_path / "f")
    copy = ds.items.iloc[[3]].assign(item_id=40)
    loaded = CrossFeatures.load(tmp_path / "f")
    for f in (feats, loaded):
        f.add_items(copy)
    for a in feats.config.attributes:  # a copy of item 3 gets item 3's codes, before and after a reload
        assert loaded.attrs_.codes[a][40] == feats.attrs_.codes[a][40] == feats.attrs_.codes[a][3]
    assert loaded.attrs_.price_bucket[40] == feats.attrs_.price_bucket[3]


@pytest.mark.parametrize("backend", ["local", pytest.param("redis", marks=needs_redis)])
def test_both_stores_keep_item_records_in_order(tmp_path, backend):
    from tests.test_serving_support import free_port

    records = [record_of(f"n{i}", {"title": f"t{i}"}, now=5) for i in range(3)]
    if backend == "local":
        store = LocalStore(tmp_path / "s")
        assert store.add_items(records[:2]) == 2 and store.add_items(records[2:]) == 3
        store.close()
        reopened = LocalStore(tmp_path / "s")  # durable: acknowledged records survive a restart
        assert reopened.items() == records and reopened.items(2) == records[2:]
        reopened.close()
        return
    port = free_port()
    with redis_server(port):
        a, b = RedisStore(f"redis://127.0.0.1:{port}/0"), RedisStore(f"redis://127.0.0.1:{port}/0")
        assert a.add_items(records[:2]) == 2 and b.add_items(records[2:]) == 3
        assert b.items() == records and a.items(1) == records[1:] and a.add_items([]) == 3


LIVE_RUN = {
    "data": {"source": "synthetic", "synthetic": {"n_users": 200, "n_items": 80, "seed": 3}},
    "channels": [
        {"name": "popularity", "kind": "popularity", "quota": 30},
        {"name": "two_tower", "kind": "two_tower", "quota": 100,
         "params": {"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32, "max_epochs": 2, "batch_size": 64,
                    "num_threads": 1, "seed": 0}},
        {"name": "cobra", "kind": "cobra", "quota": 20,
         "params": {"levels": [8, 4], "d_model": 16, "n_heads": 2, "d_ff": 32, "dense_dim": 16, "svd_dim": 8,
                    "collab_dim": 4, "max_tokens": 8, "max_epochs": 2, "patience": 1, "valid_users": None,
                    "num_threads": 1, "beam_size": 5, "batch_size": 32, "cold_quota": 3, "seed": 0}},
    ],
    "pool": {"budget": 200},
    "ranker": {"kind": "mtgr", "params": {"d_model": 16, "n_layers": 1, "max_epochs": 1, "batch_size": 64, "num_threads": 1}},
    "rerank": {"kind": "rules", "params": {"caps": [{"attribute": "category", "max_items": 100, "window": 100}], "lambda": 0.95}},
    "eval": {"n_boot": 20},
}


@pytest.fixture(scope="module")
def live_run(tmp_path_factory):
    from pipeline.config import parse_config
    from pipeline.workflow import train

    return train(parse_config(LIVE_RUN), run_dir=tmp_path_factory.mktemp("live") / "run")


def _client(run: Path, store: Path, **history):
    from fastapi.testclient import TestClient

    from pipeline.serving.components import LocalBackends
    from pipeline.serving.config import parse_serve_config
    from pipeline.serving.routes import create_app
    from pipeline.serving.runview import RunView
    from pipeline.serving.service import IngressState, RecommendService

    cfg = parse_serve_config({"history": {"dir": str(store), **history}, "logging": {"dir": str(store.parent / "logs")}})
    view = RunView.open(run)
    backends = LocalBackends(view, cfg)
    service = RecommendService(IngressState.build(view, cfg), backends, cfg)
    return TestClient(create_app(service, cfg.limits.max_body_bytes)), view, backends


def _ids(answer) -> list[str]:
    return [i["item_id"] for i in answer.json()["items"]]


def test_a_posted_item_is_recommended_on_the_next_request_and_kept_across_a_restart(live_run, tmp_path):
    client, view, backends = _client(live_run, tmp_path / "store")
    user = str(view.dataset.user_ids[5])
    everything = {"user_id": user, "k": 100}
    assert "new-1" not in _ids(client.post("/recommend", json=everything))
    template = view.dataset.items.iloc[0]
    answer = client.post("/items", json={"items": [{"item_id": "new-1", "title": template["title"],
                                                    "categories": template["categories"], "brand": template["brand"],
                                                    "price": 12.5}]})
    assert answer.status_code == 202 and answer.json() == {"accepted": 1, "added": ["new-1"], "updated": [], "version": 1}
    served = client.post("/recommend", json=everything).json()
    assert served["degraded"] == []
    by_id = {i["item_id"]: i for i in served["items"]}
    assert "new-1" in by_id and {"channel:cobra", "channel:two_tower"} <= set(by_id["new-1"]["reasons"])
    # COBRA's cold quota puts it in a short list too, for any user
    assert "new-1" in _ids(client.post("/recommend", json={"user_id": str(view.dataset.user_ids[9]), "k": 20}))
    # a record for a trained item and a second one for the live item: stored, nothing re-indexed
    known = str(view.dataset.item_ids[2])
    again = client.post("/items", json={"items": [{"item_id": "new-1", "title": "renamed"}, {"item_id": known}]})
    assert again.json() == {"accepted": 2, "added": [], "updated": ["new-1", known], "version": 3}
    # an event on it: seen (never recommended to that user again), not a model input until retraining
    before = served["history_used"]
    assert client.post("/events", json={"events": [{"user_id": user, "item_id": "new-1"}]}).json()["unknown_items"] == []
    after = client.post("/recommend", json=everything).json()
    assert "new-1" not in [i["item_id"] for i in after["items"]] and after["history_used"] == before
    assert client.delete("/items/new-1").status_code == 202
    other = {"user_id": str(view.dataset.user_ids[9]), "k": 100}
    assert "new-1" not in _ids(client.post("/recommend", json=other))
    backends.close()
    restarted, _, backends = _client(live_run, tmp_path / "store")  # the store is durable; posting makes it available
    assert "new-1" not in _ids(restarted.post("/recommend", json=other))
    assert restarted.post("/items", json={"items": [{"item_id": "new-1"}]}).json()["updated"] == ["new-1"]
    assert "new-1" in _ids(restarted.post("/recommend", json=other))
    backends.close()


def test_bad_item_records_are_refused_with_the_field_and_a_full_catalog_with_409(live_run, tmp_path):
    client, _, backends = _client(live_run, tmp_path / "store", max_live_items=2)
    for body, field in [({"items": [{"title": "no id"}]}, "items.0.item_id"), ({"items": []}, "items"),
                        ({"items": [{"item_id": "x", "price": -1}]}, "items.0.price"),
                        ({"items": [{"item_id": "x", "colour": "red"}]}, "items.0.colour")]:
        bad = client.post("/items", json=body)
        assert bad.status_code == 422 and any(d.startswith(f"body.{field}") for d in bad.json()["detail"]), bad.json()
    assert client.post("/items", json={"items": [{"item_id": "a"}, {"item_id": "b"}]}).status_code == 202
    full = client.post("/items", json={"items": [{"item_id": "c"}]})
    assert full.status_code == 409 and "history.max_live_items" in full.json()["error"]
    backends.close()
