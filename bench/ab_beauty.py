"""Offline A/B of the three typical arms on Amazon Beauty (SPEC sections 7 and 9; issue #8).

    python -m bench.ab_beauty [--config configs/amazon-beauty-ab.yaml] [--run RUN_DIR] [--record]
    python -m bench.ab_beauty --shuffle-ties 1 --record      # protocol B (bench/results/ab_beauty_b/)

Trains the run of the config (every channel for the test stage, the run's ranker and each arm's
own ranker; see configs/amazon-beauty-ab.yaml) unless --run names a trained one, then evaluates
every channel and every arm on all test users with paired bootstrap intervals against the control
arm. The full report (with per-user top-k Parquet) goes to <run>/eval-test; its Markdown, JSON and
plots are copied to bench/results/ab_beauty/. --record writes each arm as `ab_<arm>` into
summary.json, and the "+ COBRA" arm's paired differences with the existing stack (R@10, N@10,
tail R@10) as `ab_plus_cobra_vs_existing`; under protocol B also every channel alone.
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
    ap.add_argument("--shuffle-ties", type=int, default=None, metavar="SEED",
                    help="protocol B: ties shuffled with SEED and request time 'last' everywhere "
                         "(results under amazon-beauty-robust, files in bench/results/ab_beauty_b/)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    command = "python -m bench.ab_beauty " + " ".join(argv if argv is not None else sys.argv[1:])
    t0 = time.perf_counter()
    robust = args.shuffle_ties is not None
    overrides = {"data.shuffle_ties": args.shuffle_ties, "eval.request_time": "last"} if robust else {}
    out = OUT.with_name(OUT.name + "_b") if robust else OUT
    run_dir = Path(args.run) if args.run else train(load_config(args.config, overrides), stage="test")
    train_seconds = time.perf_counter() - t0
    run = load_run(run_dir)
    eval_dir = run_dir / "eval-test"
    report = evaluate_run(run, max_users=args.max_users, out_dir=eval_dir)
    print(format_table(report), flush=True)
    if args.max_users is None:
        out.mkdir(parents=True, exist_ok=True)
        for f in eval_dir.iterdir():
            if f.suffix in (".md", ".json", ".png"):
                shutil.copyfile(f, out / f.name)
    if args.record and args.max_users is None:
        dataset = "amazon-beauty-robust" if robust else "amazon-beauty"
        boot = report["bootstrap"]
        for arm in report["pipeline_arms"]:
            vs = {m: {k: round(r[k], 4) for k in ("diff", "ci_low", "ci_high")}
                  for m, r in boot.get("arms", {}).get(arm, {}).items()}
            record(dataset, f"ab_{arm}", quality_entry(
                report["arms"][arm], command, train_seconds, users=report["users"], control=boot.get("control"),
                vs_control=vs, report=f"bench/results/{out.name}/report.md",
                run_seconds=dict(run.manifest.get("seconds", {}))))
        if robust:  # the neural channels alone, same run, same users: COBRA vs the two-tower under B (the
            # classic channels' protocol-B rows come from bench/protocol_b.py: three seeds, re-tuned under B)
            for name in [a for a in ("two_tower", "cobra") if a in report["arms"]]:
                record(dataset, name, quality_entry(report["arms"][name], command, train_seconds, users=report["users"],
                                                    report=f"bench/results/{out.name}/report.md", source="ab run"))
        plus = boot.get("arms", {}).get("plus-cobra")
        if plus:  # the incremental value of the generative channel (issue 17's acceptance key)
            entry = {"command": command, "users": report["users"], "control": boot.get("control"),
                     "unique_after_ranking": report.get("unique_after_ranking", {}).get("plus-cobra")}
            for m, r in plus.items():
                entry |= {f"{m}_diff": round(r["diff"], 4), f"{m}_ci_low": round(r["ci_low"], 4),
                          f"{m}_ci_high": round(r["ci_high"], 4)}
            record(dataset, "ab_plus_cobra_vs_existing", entry)
    return 0


if __name__ == "__main__":
    sys.exit(main())
