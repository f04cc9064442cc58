"""A real multi-node cluster on this machine (ray.cluster_utils.Cluster: a head and a worker
node, 127.0.0.1): channel replicas spread over both nodes, and removing the worker node under
load fails no request (bench/multinode.py runs the same drill longer and records it)."""
from __future__ import annotations

import pytest

from bench.multinode import drill
from tests.test_serving_support import tiny_run

pytest.importorskip("ray.serve")


@pytest.mark.slow
def test_losing_a_worker_node_under_load_fails_no_request(tmp_path):
    out = drill(tiny_run(tmp_path / "run"), before_s=3.0, after_s=8.0, max_requests=3000)
    assert any("channel-" in name for name in out["worker_actors_before"]), out["worker_actors_before"]
    assert out["after_removal"] >= 5, out
    assert out["failed"] == 0 and out["statuses"] == [200], out


def test_placement_knobs_reach_the_deployment_options():
    from pipeline.serving.app import _options
    from pipeline.serving.config import parse_serve_config

    cfg = parse_serve_config({"ingress": {"resources": {"head": 0.01}},
                              "channel_defaults": {"replicas": 2, "max_replicas_per_node": 1},
                              "ranker": {"autoscaling": {"min_replicas": 1, "max_replicas": 3}, "max_replicas_per_node": 2}})
    ingress = _options(cfg.ingress, cfg, "ingress")
    assert ingress["ray_actor_options"] == {"num_cpus": cfg.ingress.num_cpus, "resources": {"head": 0.01}}
    assert "max_replicas_per_node" not in ingress
    channel = _options(cfg.channel_defaults, cfg, "channel-x")
    assert channel["num_replicas"] == 2 and channel["max_replicas_per_node"] == 1
    ranker = _options(cfg.ranker, cfg, "ranker")
    assert ranker["num_replicas"] == "auto" and ranker["max_replicas_per_node"] == 2


@pytest.mark.slow
def test_two_tower_trains_on_two_nodes(tmp_path):
    """Ray Train over a head and a worker node (1 CPU each, so one worker per node): the ranks
    meet over gloo on 127.0.0.1, rank 0 checkpoints to `train.storage` (one folder both nodes
    see: the same disk here, shared storage such as NFS on real machines)."""
    from pipeline.config import ChannelConfig, TrainConfig
    from pipeline.data import leave_one_out, synthesize
    from pipeline.scale import fit_channel
    from pipeline.workflow import fit_data
    from tests.helpers import two_node_cluster
    from tests.test_ray_train import TWO_TOWER

    with two_node_cluster(worker_cpus=1) as (cluster, worker):
        ds = synthesize(n_users=400, n_items=120, n_categories=6, n_brands=12, mean_length=10, seed=3)
        data = fit_data(ds, leave_one_out(ds.interactions), "test", seed=0)
        ccfg = ChannelConfig(name="tt", kind="two_tower", params=TWO_TOWER)
        here = fit_channel(ccfg, data, TrainConfig())
        there = fit_channel(ccfg, data, TrainConfig(backend="ray", workers=2, address=cluster.address,
                                                    storage=str(tmp_path / "checkpoints")))
        nodes = there.ray_train_["nodes"]
        assert len(nodes) == 2 and len(set(nodes)) == 2 and worker.node_id in nodes, nodes
        local, two_nodes = here.fit_report_["best"]["N@10"], there.fit_report_["best"]["N@10"]
        assert abs(two_nodes - local) < 0.25 * local, (local, two_nodes)
        assert any((tmp_path / "checkpoints").rglob("model.pt"))  # the checkpoint went to the named storage
