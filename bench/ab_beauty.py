"""Offline A/B of the three typical arms on Amazon Beauty (SPEC sections 7 and 9; issue #8).

    python -m bench.ab_beauty [--config configs/amazon-beauty-ab.yaml] [--run RUN_DIR] [--record]
    python -m bench.ab_beauty --shuffle-ties 1 --record      # protocol B (bench/results/ab_beauty_b/)
    python -m bench.ab_beauty --shuffle-ties 1 --stage valid # the validation sweep (ab_beauty_b_valid/)
    python -m bench.ab_beauty --shuffle-ties 1 --lgbm-only --record   # the two LightGBM arms only

Trains the run of the config (every channel for the test stage, the run's ranker and each arm's
own ranker; see configs/amazon-beauty-ab.yaml) unless --run names a trained one, then evaluates
every channel and every arm on all test users with paired bootstrap intervals against the control
arm. The full report (with per-user top-k Parquet) goes to <run>/eval-test; its Markdown, JSON and
plots are copied to bench/results/ab_beauty/. --record writes each arm as `ab_<arm>` into
summary.json, and the "+ COBRA" arm's paired differences with the existing stack (R@10, N@10,
tail R@10) as `ab_plus_cobra_vs_existing`; under protocol B also every channel alone.

`--stage valid` is where the "+ COBRA" arm's settings are chosen (never on test): the channels
are fitted for the validation stage, the run's ranker is LightGBM (no MTGR fit), and the arms are
VALID_ARMS, the existing stack and COBRA added at several quotas, with the pool budget either
shared (today's 500: COBRA's items push out the other channels' tail) or grown by COBRA's quota
(the existing channels keep their whole pools). Nothing is recorded in summary.json.
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
LGBM = {"kind": "lgbm", "params": {"train_folds": 1, "holdout": 0.1}}
EXISTING = ["popularity", "item2item", "two_tower"]
VALID_ARMS = [  # validation only: which quota and budget the "+ COBRA" arm should use
    {"name": "existing-stack", "channels": EXISTING, "ranker": LGBM},
    {"name": "plus-cobra", "ranker": LGBM},  # COBRA quota 200 inside the shared budget of 500
    {"name": "plus-cobra-b700", "budget": 700, "ranker": LGBM},
    {"name": "plus-cobra-q100-b600", "quotas": {"cobra": 100}, "budget": 600, "ranker": LGBM},
    {"name": "plus-cobra-q50-b550", "quotas": {"cobra": 50}, "budget": 550, "ranker": LGBM},
    {"name": "plus-cobra-q100-b500", "quotas": {"cobra": 100}, "ranker": LGBM},
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/amazon-beauty-ab.yaml")
    ap.add_argument("--run", default=None, help="evaluate this trained run folder instead of training one")
    ap.add_argument("--record", action="store_true")
    ap.add_argument("--lgbm-only", action="store_true",
                    help="the run's ranker is LightGBM and the MTGR arm is left out (the existing stack and "
                         "'+ COBRA' only: about 30 minutes less)")
    ap.add_argument("--stage", choices=("test", "valid"), default="test",
                    help="valid: the sweep of VALID_ARMS on the validation stage (choices are made there)")
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
    if args.stage == "valid":
        if args.record:
            ap.error("--record is for the test stage; the validation sweep only writes its report")
        overrides |= {"eval.stage": "valid", "ranker": LGBM, "arms": VALID_ARMS,
                      "run.name": "amazon-beauty-ab-valid"}
        out = out.with_name(out.name + "_valid")
    elif args.lgbm_only:
        overrides |= {"ranker": LGBM, "arms": VALID_ARMS[:2]}
    run_dir = Path(args.run) if args.run else train(load_config(args.config, overrides), stage=args.stage)
    train_seconds = time.perf_counter() - t0
    run = load_run(run_dir)
    eval_dir = run_dir / f"eval-{run.stage}"
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
