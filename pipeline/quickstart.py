"""The main job on the embedded default: synthetic data -> train every stage -> channel comparison
-> answer one request in process -> start the Ray Serve app, answer one request over HTTP, stop."""
from __future__ import annotations

import json
import os
import random
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import load_config
from pipeline.evaluation.report import evaluate_run, format_table
from pipeline.core.types import Request
from pipeline.resources import SERVING_CONFIG
from pipeline.workflow import load_run, train


def quickstart(config_path: str | Path, overrides: dict[str, Any] | None = None) -> int:
    cfg = load_config(config_path, overrides)
    t0 = time.perf_counter()
    print(f"[1/4] training every stage of {config_path} (stage '{cfg.eval.stage}')")
    run_path = train(cfg)
    run = load_run(run_path)
    print(f"      run folder: {run_path} ({time.perf_counter() - t0:.1f}s)")
    print("[2/4] channel comparison (leave-one-out, full catalog, seen items excluded)")
    report = evaluate_run(run, out_dir=run_path / f"eval-{run.stage}")
    print(format_table(report))
    print("[3/4] one request through the cascade (in process)")
    user = 0
    hist = run.split.history(run.stage)
    rows = hist[hist["user_id"] == user]
    request = Request(user=user, history=rows["item_id"].to_numpy(np.int64),
                      history_times=rows["timestamp"].to_numpy(np.int64), k=10)
    rec = run.cascade.recommend(request)
    print(f"      user {run.dataset.user_ids[user]}, {len(request.history)} history items, "
          f"pool {rec.pool_size}, degraded {rec.degraded}")
    for rank, (item, score, reasons) in enumerate(zip(rec.items, rec.scores, rec.reasons), 1):
        print(f"      {rank:>2}. {run.dataset.item_ids[item]:<12} {float(score):.5f}  {', '.join(reasons)}")
    print("      timings (ms): " + json.dumps({k: round(v, 3) for k, v in rec.timings_ms.items()}))
    print("[4/4] the same request over HTTP (Ray Serve on 127.0.0.1, configs/serving.yaml)")
    serve_one_request(run_path, str(run.dataset.user_ids[user]))
    print(f"done in {time.perf_counter() - t0:.1f}s")
    return 0


def free_port(low: int = 20000, high: int = 32000, tries: int = 200) -> int:
    """A TCP port free on 127.0.0.1 now, drawn below the kernel's ephemeral range (32768 and up
    on Linux), so no socket the system opens meanwhile is handed the same port; a server that
    must be told its port in advance (Ray Serve) is then far less likely to lose it before it binds."""
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(tries):
        port = rng.randrange(low, high)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port on 127.0.0.1 in [{low}, {high}) after {tries} tries")


def serve_one_request(run_path: Path, user_id: str, k: int = 10) -> dict[str, Any]:
    """Start the app for `run_path`, POST /recommend (a warm-up, then the request shown), print
    the answer, shut down."""
    import requests

    from pipeline.serving import app
    from pipeline.serving.config import load_serve_config

    t = time.perf_counter()
    cfg = load_serve_config(SERVING_CONFIG if SERVING_CONFIG.is_file() else None, {"http.port": free_port()})
    url = app.start(run_path, cfg)
    try:
        print(f"      app up at {url} ({time.perf_counter() - t:.1f}s); POST {url}/recommend")
        body = {"user_id": user_id, "k": k}
        # the first call into each fresh replica pays its imports (and, in a new venv, byte-compiling):
        # a warm-up request first, so that the answer shown is a steady one
        warm = requests.post(f"{url}/recommend", json=body, timeout=30)
        if warm.ok and warm.json().get("degraded"):
            print(f"      warm-up request: degraded {warm.json()['degraded']} (cold replicas)")
        response = requests.post(f"{url}/recommend", json=body, timeout=30)
        response.raise_for_status()
        answer = response.json()
        print(f"      request {json.dumps(body)} -> HTTP {response.status_code}, arm '{answer['arm']}', "
              f"degraded {answer['degraded']}")
        for item in answer["items"]:
            print(f"      {item['position'] + 1:>2}. {item['item_id']:<12} {item['score'] or 0.0:.5f}  {', '.join(item['reasons'])}")
        print("      timings (ms): " + json.dumps(answer["timings_ms"]))
        return answer
    finally:
        t = time.perf_counter()
        app.stop()
        print(f"      app stopped ({time.perf_counter() - t:.1f}s)")
