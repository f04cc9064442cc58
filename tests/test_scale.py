"""Offline steps on Ray (pipeline/scale.py): the ranker's label-fold pools and cross features
spread over Ray Data actors give the same arrays as the in-process pass."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import ConfigError, parse_config
from pipeline.data import synthesize
from pipeline.workflow import make_split, ranking_data
from rankers.features import FeatureConfig
from rankers.training_data import RankingData

CONFIG = {
    "data": {"source": "synthetic", "synthetic": {"n_users": 300, "n_items": 150, "seed": 5}, "max_history": 20},
    "channels": [
        {"name": "popularity", "kind": "popularity", "quota": 30, "params": {"half_life_days": 30}},
        {"name": "item2item", "kind": "item2item", "quota": 40},
    ],
    "pool": {"budget": 60},
    "eval": {"stage": "test", "batch_size": 32},  # small batches: each fold has several row ranges
}
ARRAYS = ("features", "items", "offsets", "positive", "users", "history", "history_times", "lengths", "now", "fold")


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_pools_equal_the_in_process_pools(ray_local):
    ds = synthesize(n_users=300, n_items=150, seed=5)
    local_cfg = parse_config(CONFIG)
    ray_cfg = parse_config(CONFIG | {"train": {"backend": "ray", "workers": 2}})
    split = make_split(ds, local_cfg.data)
    here = ranking_data(local_cfg, ds, split, "test", 2, FeatureConfig())
    there = ranking_data(ray_cfg, ds, split, "test", 2, FeatureConfig())
    assert len(here) > 50 and here.stats[0]["requests"] > 4 * 32  # more than one row range (4 batches) per fold
    for name in ARRAYS:
        np.testing.assert_array_equal(getattr(here, name), getattr(there, name), err_msg=name)
    assert here.names == there.names and here.stats == there.stats


def test_ray_evaluation_equals_the_in_process_evaluation(ray_local, tmp_path):
    """Offline evaluation with the top-k lists computed by Ray Data actors that load the run
    folder: every list, metric and interval is the in-process one; only timings differ."""
    from pipeline.evaluation.report import evaluate_run
    from pipeline.workflow import load_run, train

    cfg = parse_config(CONFIG | {"ranker": {"kind": "lgbm", "params": {"n_estimators": 20, "num_leaves": 7}},
                                 "eval": {"stage": "test", "batch_size": 32, "n_boot": 50},
                                 "run": {"root": str(tmp_path), "name": "eval"}})
    run = load_run(train(cfg, run_dir=tmp_path / "run"))
    here = evaluate_run(run, latency_requests=0, engine="local")
    there = evaluate_run(run, latency_requests=0, engine="ray")
    assert (here["engine"], there["engine"]) == ("local", "ray")
    timing = {"ms_per_user", "seconds", "latency"}
    assert set(here["arms"]) == {"popularity", "item2item", "cascade"}
    for name, res in here["arms"].items():
        assert {k: v for k, v in res.items() if k not in timing} == {k: v for k, v in there["arms"][name].items()
                                                                    if k not in timing}, name
    for key in ("channels", "overlap", "bootstrap", "unique_after_ranking", "users"):
        assert here[key] == there[key], key
    with pytest.raises(ValueError, match="engine"):
        evaluate_run(run, latency_requests=0, engine="spark")


def test_ranking_data_bytes_round_trip():
    data = RankingData(("a",), ("f0", "f1"), np.arange(6, dtype=np.float32).reshape(3, 2), np.array([4, 5, 6]),
                       np.array([0, 2, 3]), np.array([1, 0]), np.array([7, 8]), np.array([[-1, 3], [2, 3]]),
                       np.array([[0, 5], [4, 5]]), np.array([1, 2]), np.array([9, 9]), np.array([0, 0]))
    back = RankingData.from_bytes(data.to_bytes())
    for name in ARRAYS:
        np.testing.assert_array_equal(getattr(back, name), getattr(data, name))
    assert back.channels == ("a",) and back.names == ("f0", "f1")


def test_train_backend_is_checked_at_load():
    with pytest.raises(ConfigError, match="train.backend"):
        parse_config(CONFIG | {"train": {"backend": "spark"}})
    with pytest.raises(ConfigError, match="train.workers"):
        parse_config(CONFIG | {"train": {"workers": 0}})


@pytest.mark.slow
def test_pools_on_a_two_node_cluster_equal_the_in_process_pools(caplog):
    """A head node without CPUs and a worker node (3 CPUs) joined through `train.address`: the
    actors run on the worker node, and the arrays are the in-process ones. (With a CPU on the head,
    the actor placed there may take every row range, and the log would name the head only.)"""
    pytest.importorskip("ray")
    from tests.helpers import two_node_cluster

    with two_node_cluster(worker_cpus=3, head_cpus=0) as (cluster, worker):
        ds = synthesize(n_users=300, n_items=150, seed=5)
        local_cfg = parse_config(CONFIG)
        ray_cfg = parse_config(CONFIG | {"train": {"backend": "ray", "workers": 2, "address": cluster.address}})
        split = make_split(ds, local_cfg.data)
        here = ranking_data(local_cfg, ds, split, "test", 1, FeatureConfig())
        with caplog.at_level("INFO", logger="pipeline.scale"):
            there = ranking_data(ray_cfg, ds, split, "test", 1, FeatureConfig())
        for name in ARRAYS:
            np.testing.assert_array_equal(getattr(here, name), getattr(there, name), err_msg=name)
        nodes = [r.getMessage() for r in caplog.records if "row ranges" in r.getMessage()]
        assert nodes and worker.node_id in nodes[0]
