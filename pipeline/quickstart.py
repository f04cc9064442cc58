"""The main job on the embedded default: synthetic data -> train every stage -> channel comparison
-> answer one request."""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import load_config
from pipeline.evaluation.report import evaluate_run, format_table
from pipeline.types import Request
from pipeline.workflow import load_run, train


def quickstart(config_path: str | Path, overrides: dict[str, Any] | None = None) -> int:
    cfg = load_config(config_path, overrides)
    t0 = time.perf_counter()
    print(f"[1/3] training every stage of {config_path} (stage '{cfg.eval.stage}')")
    run_path = train(cfg)
    run = load_run(run_path)
    print(f"      run folder: {run_path} ({time.perf_counter() - t0:.1f}s)")
    print("[2/3] channel comparison (leave-one-out, full catalog, seen items excluded)")
    report = evaluate_run(run, out_dir=run_path / f"eval-{run.stage}")
    print(format_table(report))
    print("[3/3] one request through the cascade")
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
    print(f"done in {time.perf_counter() - t0:.1f}s")
    return 0
