"""Serving on a Ray cluster of several nodes, and the loss of one node under load.

    python -m bench.multinode [--run DIR] [--seconds 20] [--record]

A head node (the HTTP proxy, ingress, ranker and re-ranker, pinned there by a custom `head`
resource) and a worker node, both on this machine (`ray.cluster_utils.Cluster`, 127.0.0.1, their
own ports). Each channel has 2 replicas with at most 1 per node, so one runs on each node. Under a
steady closed loop of /recommend requests the worker node is removed (its raylet and every actor
on it are killed); the drill counts the requests that failed (non-200 or no items), the ones
answered degraded, and how long until answers are whole again. Artifacts: the run folder is on
this machine's disk, which every node here shares (on a real cluster: shared storage or a copy
at the same path on every node). Records speed:multinode_node_loss_failed. tests/test_multinode.py
runs the same drill, shorter.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from bench.summary import RESULTS, record
from pipeline.core.artifacts import atomic_write_json

PLACEMENT = {"resources": {"head": 0.01}}


def drill_config(address: str, port: int) -> dict:
    return {
        "http": {"host": "127.0.0.1", "port": port},
        "ray": {"address": address},
        "ingress": PLACEMENT, "ranker": PLACEMENT, "reranker": PLACEMENT,
        "channel_defaults": {"replicas": 2, "max_replicas_per_node": 1, "num_cpus": 0.25, "budget_ms": 5000},
        "history": {"backend": "off"},
    }


def _actors_on(node_id: str) -> list[str]:
    from ray.util.state import list_actors

    return sorted(a.class_name for a in list_actors(filters=[("node_id", "=", node_id), ("state", "=", "ALIVE")]))


def drill(run: Path, before_s: float = 5.0, after_s: float = 15.0, max_requests: int = 5000) -> dict:
    """Start the cluster and the app, send traffic, remove the worker node; returns the counts."""
    import ray
    from ray.cluster_utils import Cluster

    from pipeline.quickstart import free_port
    from pipeline.serving import app
    from pipeline.serving.config import parse_serve_config

    saved_env = dict(os.environ)  # put back after: later subprocesses must not inherit the nodes' settings
    app.init_ray_env(parse_serve_config({}))  # the nodes start from this process: project on their path
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "resources": {"head": 1}})
    worker = cluster.add_node(num_cpus=2)
    try:
        cluster.wait_for_nodes()
        port = free_port()
        url = app.start(run, parse_serve_config(drill_config(cluster.address, port)))
        on_worker = _actors_on(worker.node_id)
        results: list[tuple[float, int, bool, list]] = []
        stop = threading.Event()

        def traffic() -> None:
            with requests.Session() as s:
                while not stop.is_set() and len(results) < max_requests:  # bounded
                    t = time.time()
                    try:
                        r = s.post(f"{url}/recommend", json={"history": ["i1", "i2"], "k": 5}, timeout=30)
                        body = r.json() if r.status_code == 200 else {}
                        results.append((t, r.status_code, bool(body.get("items")), body.get("degraded", [])))
                    except requests.RequestException:
                        results.append((t, -1, False, []))

        sender = threading.Thread(target=traffic)
        sender.start()
        time.sleep(before_s)
        removed_at = time.time()
        cluster.remove_node(worker)
        time.sleep(after_s)
        stop.set()
        sender.join()
        after = [r for r in results if r[0] >= removed_at]
        failed = [r for r in results if r[1] != 200 or not r[2]]
        degraded = [r for r in after if r[3]]
        whole_again = next((r[0] - removed_at for r in reversed(after) if r[3]), 0.0)
        return {"requests": len(results), "after_removal": len(after), "failed": len(failed),
                "statuses": sorted({r[1] for r in results}), "degraded_after_removal": len(degraded),
                "last_degraded_s_after_removal": round(whole_again, 2),
                "worker_actors_before": on_worker, "worker_node": worker.node_id}
    finally:
        try:
            app.stop(shutdown_ray=True)
        finally:
            if ray.is_initialized():
                ray.shutdown()
            cluster.shutdown()
            os.environ.clear()
            os.environ.update(saved_env)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default=None, help="a run folder (default: a small synthetic run trained here)")
    ap.add_argument("--before", type=float, default=5.0)
    ap.add_argument("--seconds", type=float, default=20.0, help="traffic after the node is removed")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args(argv)
    command = "python -m bench.multinode " + " ".join(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="multinode-") as tmp:
        run = Path(args.run) if args.run else _synthetic_run(Path(tmp) / "run")
        out = drill(run, args.before, args.seconds) | {"command": command, "run": str(args.run or "synthetic")}
    atomic_write_json(RESULTS / "multinode.json", out)
    print(json.dumps(out, indent=1))
    if args.record:
        record("speed", "multinode_node_loss_failed", {"value": out["failed"], "requests": out["requests"],
                                                       "after_removal": out["after_removal"], "command": command})
    return 0 if out["failed"] == 0 else 1


def _synthetic_run(path: Path) -> Path:
    from pipeline.config import parse_config
    from pipeline.workflow import train

    return train(parse_config({
        "data": {"source": "synthetic", "synthetic": {"n_users": 300, "n_items": 200, "seed": 5}},
        "channels": [{"name": "popularity", "kind": "popularity", "quota": 50},
                     {"name": "item2item", "kind": "item2item", "quota": 50}],
        "pool": {"budget": 100}, "eval": {"n_boot": 20}}), run_dir=path)


if __name__ == "__main__":
    sys.exit(main())
