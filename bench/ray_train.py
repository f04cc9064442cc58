"""A torch channel trained in process vs under Ray Train with 1 and 2 workers (train.backend: ray).

    python -m bench.ray_train [--config configs/amazon-beauty-two-tower.yaml] [--arms local,1,2] [--record]

The config's first torch channel (default: the Beauty two-tower) under protocol B (seed 1), test
stage: early stopping on the validation targets while fitting on the history before them, exactly
as `hybridrec train` does. Each arm fits the same channel from the same seed; Ray arms split every
batch over the workers and average gradients (pipeline/core/data_parallel.py), so the global batch and
the steps per epoch stay those of the config. Reports the best validation R@10 / N@10, the epochs
and the wall time of each arm (Ray arms include starting the workers and the checkpoint round trip).
Writes bench/results/ray_train.{json,md}; records speed:ray_train_two_tower_2workers.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from bench.protocol_b import protocol
from bench.summary import RESULTS, record
from pipeline.config import TrainConfig, apply_overrides, load_config
from pipeline.core.artifacts import atomic_write_json, atomic_write_text
from pipeline.registry import build_channel
from pipeline.scale import fit_channel, trains_on_ray
from pipeline.workflow import fit_data, make_split, prepare_data

ROOT = Path(__file__).resolve().parents[1]


def parse_arms(text: str) -> list[str]:
    arms = [a.strip() for a in text.split(",") if a.strip()]
    bad = [a for a in arms if a != "local" and not a.isdigit()]
    if bad or not arms:
        raise SystemExit(f"--arms: a comma list of 'local' and worker counts, got {text!r}")
    return arms


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "amazon-beauty-two-tower.yaml"))
    ap.add_argument("--arms", default="local,1,2", help="'local' and Ray worker counts, in order")
    ap.add_argument("--tie-seed", type=int, default=1, help="protocol B tie-shuffle seed")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args(argv)
    arms = parse_arms(args.arms)
    command = "python -m bench.ray_train " + " ".join(argv if argv is not None else sys.argv[1:])
    cfg = apply_overrides(load_config(args.config), protocol(args.tie_seed))
    ccfg = next((c for c in cfg.enabled_channels() if trains_on_ray(build_channel(c), TrainConfig(backend="ray"))), None)
    if ccfg is None:
        raise SystemExit(f"{args.config}: no channel that trains under Ray Train (two_tower, cobra)")
    dataset = prepare_data(cfg.data)
    data = fit_data(dataset, make_split(dataset, cfg.data), "test", cfg.run.seed)
    rows = []
    for arm in arms:
        train_cfg = TrainConfig() if arm == "local" else TrainConfig(backend="ray", workers=int(arm))
        t, cpu = time.perf_counter(), time.process_time()
        channel = fit_channel(ccfg, data, train_cfg)
        seconds = time.perf_counter() - t
        report = channel.fit_report_
        best = report["best"]
        row = {"arm": "in process" if arm == "local" else f"Ray Train, {arm} worker{'s' if arm != '1' else ''}",
               "workers": 0 if arm == "local" else int(arm), "seconds": round(seconds, 1),
               "valid_R@10": round(best.get("R@10", best.get("valid_R@10", float("nan"))), 4),
               "valid_N@10": round(best.get("N@10", best.get("valid_N@10", float("nan"))), 4),
               "best_epoch": report["best_epoch"], "epochs": len(report["epochs"]),
               "epoch_seconds": round(sum(e["train_seconds"] for e in report["epochs"]) / max(len(report["epochs"]), 1), 1),
               "threads_per_worker": getattr(channel, "ray_train_", {}).get("threads_per_worker", channel.num_threads),
               "driver_cpu_seconds": round(time.process_time() - cpu, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"command": command, "config": os.path.relpath(args.config, ROOT), "channel": ccfg.name,
              "protocol": f"B (ties shuffled with seed {args.tie_seed}, request time last)", "cpus": os.cpu_count(),
              "users": dataset.n_users, "items": dataset.n_items, "rows": rows,
              "note": "epoch_seconds: the mean wall time of one training epoch (validation excluded), as rank 0 saw it; "
                      "Ray arms' seconds include the worker start and the checkpoint round trip"}
    by = {r["workers"]: r for r in rows}
    if 1 in by and 2 in by:
        result["two_over_one_seconds"] = round(by[2]["seconds"] / by[1]["seconds"], 2)
        result["two_minus_one_valid_R@10"] = round(by[2]["valid_R@10"] - by[1]["valid_R@10"], 4)
    atomic_write_json(RESULTS / "ray_train.json", result)
    head = "| arm | threads/worker | valid R@10 | valid N@10 | best epoch | epochs | s/epoch | seconds |"
    lines = [f"# {ccfg.name} training: in process vs Ray Train", "", f"`{command}` ({os.cpu_count()} cores, "
             f"{result['protocol']})", "", head, "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['arm']} | {r['threads_per_worker']} | {r['valid_R@10']} | {r['valid_N@10']} | {r['best_epoch']} | "
              f"{r['epochs']} | {r['epoch_seconds']} | {r['seconds']} |" for r in rows]
    atomic_write_text(RESULTS / "ray_train.md", "\n".join(lines + ["", result["note"], ""]))
    if args.record and 1 in by and 2 in by:
        record("speed", f"ray_train_{ccfg.kind}_2workers", {
            "valid_R@10_1worker": by[1]["valid_R@10"], "valid_R@10_2workers": by[2]["valid_R@10"],
            "valid_N@10_1worker": by[1]["valid_N@10"], "valid_N@10_2workers": by[2]["valid_N@10"],
            "seconds_1worker": by[1]["seconds"], "seconds_2workers": by[2]["seconds"],
            "seconds_in_process": by.get(0, {}).get("seconds"), "protocol": "B", "command": command})
    return 0


if __name__ == "__main__":
    sys.exit(main())
