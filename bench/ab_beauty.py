"""Offline A/B of the three typical arms on Amazon Beauty (SPEC sections 7 and 9; issue #8).

    python -m bench.ab_beauty [--config configs/amazon-beauty-ab.yaml] [--run RUN_DIR] [--record]

Trains the run of the config (every channel for the test stage, the run's ranker and each arm's
own ranker; see configs/amazon-beauty-ab.yaml) unless --run names a trained one, then evaluates
every channel and every arm on all test users with paired bootstrap intervals against the control
arm. The full report (with per-user top-k Parquet) goes to <run>/eval-test; its Markdown, JSON and
plots are copied to bench/results/ab_beauty/. --record writes each arm as `ab_<arm>` into
summary.json.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path

from bench.summary import RESULTS, quality_entry, record
from pipeline.config import load_config
from pipeline.evaluation.report import evaluate_run, format_table
from pipeline.workflow import load_run, train

OUT = RESULTS / "ab_beauty"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/amazon-beauty-ab.yaml")
    ap.add_argument("--run", default=None, help="evaluate this trained run folder instead of training one")
    ap.add_argument("--record", action="store_true")
    ap.add_argument("--max-users", type=int, default=None, help="a seeded sample of users (smoke runs only)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    command = "python -m bench.ab_beauty " + " ".join(argv if argv is not None else sys.argv[1:])
    t0 = time.perf_counter()
    run_dir = Path(args.run) if args.run else train(load_config(args.config), stage="test")
    train_seconds = time.perf_counter() - t0
    run = load_run(run_dir)
    eval_dir = run_dir / "eval-test"
    report = evaluate_run(run, max_users=args.max_users, out_dir=eval_dir)
    print(format_table(report), flush=True)
    if args.max_users is None:
        OUT.mkdir(parents=True, exist_ok=True)
        for f in eval_dir.iterdir():
            if f.suffix in (".md", ".json", ".png"):
                shutil.copyfile(f, OUT / f.name)
    if args.record and args.max_users is None:
        boot = report["bootstrap"]
        for arm in report["pipeline_arms"]:
            vs = {m: {k: round(r[k], 4) for k in ("diff", "ci_low", "ci_high")}
                  for m, r in boot.get("arms", {}).get(arm, {}).items()}
            record("amazon-beauty", f"ab_{arm}", quality_entry(
                report["arms"][arm], command, train_seconds, users=report["users"], control=boot.get("control"),
                vs_control=vs, report="bench/results/ab_beauty/report.md",
                run_seconds=dict(run.manifest.get("seconds", {}))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
