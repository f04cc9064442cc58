"""The ranker's label-fold pools and cross features in process vs on Ray Data (train.backend: ray).

    python -m bench.ray_pools [--dataset amazon-beauty-2014-5core] [--workers 2] [--folds 2] [--record]

Beauty cascade config under protocol B (seed 1), test stage: for each fold the channels are fitted
once (in the driver, both ways), then the pools and features of every fold request are computed
either in this process or by `--workers` Ray Data actors. The arrays must be identical. Writes
bench/results/ray_pools.{json,md}; records speed:ray_data_pools_equal and
speed:ray_data_pools_seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from bench.protocol_b import CONFIG, protocol
from bench.summary import RESULTS, record
from pipeline.config import apply_overrides, load_config
from pipeline.core.artifacts import atomic_write_json, atomic_write_text
from pipeline.workflow import make_split, prepare_data, ranking_data
from rankers.features import FeatureConfig

ROOT = Path(__file__).resolve().parents[1]
ARRAYS = ("features", "items", "offsets", "positive", "users", "history", "history_times", "lengths", "now", "fold")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="amazon-beauty-2014-5core")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args(argv)
    command = "python -m bench.ray_pools " + " ".join(argv if argv is not None else sys.argv[1:])
    cfg = apply_overrides(load_config(CONFIG, {"data.path": str(ROOT.parent / "shared" / "data" / args.dataset)}),
                          protocol(1))
    dataset = prepare_data(cfg.data)
    split = make_split(dataset, cfg.data)
    timings, data = {}, {}
    for backend in ("local", "ray"):
        run_cfg = apply_overrides(cfg, {"train.backend": backend, "train.workers": args.workers})
        t = time.perf_counter()
        data[backend] = ranking_data(run_cfg, dataset, split, "test", args.folds, FeatureConfig())
        timings[backend] = round(time.perf_counter() - t, 1)
        print(f"{backend}: {timings[backend]} s, {len(data[backend])} groups", flush=True)
    equal = all(np.array_equal(getattr(data["local"], a), getattr(data["ray"], a)) for a in ARRAYS) \
        and data["local"].stats == data["ray"].stats
    result = {"command": command, "dataset": args.dataset, "folds": args.folds, "workers": args.workers,
              "groups": len(data["local"]), "rows": int(data["local"].items.shape[0]), "identical_arrays": bool(equal),
              "seconds": timings, "ray_over_local": round(timings["ray"] / timings["local"], 2), "cpus": os.cpu_count(),
              "note": "both timings include fitting the fold channels in the driver (the same work both ways); "
                      "the Ray one includes starting the local cluster and the actors"}
    atomic_write_json(RESULTS / "ray_pools.json", result)
    atomic_write_text(RESULTS / "ray_pools.md", "\n".join([
        "# Ranker label-fold pools: in process vs Ray Data", "", f"`{command}` ({os.cpu_count()} cores)", "",
        "| backend | seconds | groups | identical |", "|---|---|---|---|",
        f"| in process | {timings['local']} | {len(data['local'])} | - |",
        f"| Ray Data, {args.workers} actors | {timings['ray']} | {len(data['ray'])} | {equal} |", "",
        result["note"], ""]))
    print(json.dumps(result, indent=1))
    if args.record:
        record("speed", "ray_data_pools_equal", {"value": bool(equal), "command": command})
        record("speed", "ray_data_pools_seconds", {"local": timings["local"], "ray": timings["ray"],
                                                   "workers": args.workers, "command": command})
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
