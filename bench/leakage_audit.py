"""Audit of the cascade's test figures: how much comes from knowing WHEN the user came back?

Under the SPEC protocol our evaluation requests carry the target's timestamp as the request time
(a served request happens at the moment the user comes back), and every time-dependent part
(point-in-time popularity channel, the rankers' item-popularity-by-window, item-age and
recency features) sees only interactions strictly before it. The published sequential models use
no time at all. This audit re-evaluates trained test runs with the request time set to the
user's LAST HISTORY timestamp instead, so nothing about the target's time reaches the pipeline,
and reports both with a paired bootstrap interval of the difference.

    python -m bench.leakage_audit --run runs/beauty-cascade-mtgr-test [--run runs/beauty-cascade-lgbm-test]

Writes bench/results/leakage_audit.{json,md}; with --record adds the last-history-time figures
to the cascade entry of summary.json (key 'audit_request_time_last').
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from bench.summary import RESULTS, SUMMARY, record
from pipeline.core import metrics as M
from pipeline.core.artifacts import atomic_write_json, atomic_write_text
from pipeline.evaluation.bootstrap import paired_bootstrap
from pipeline.evaluation.harness import build_eval_set, run_topk
from pipeline.workflow import load_run

KEYS = ("R@5", "N@5", "R@10", "N@10")


def cascade_ranks(run, request_time: str, k: int = 50) -> np.ndarray:
    cfg = run.config
    ev = build_eval_set(run.split, run.stage, cfg.data.max_history, None, cfg.run.seed, request_time)
    topk, _ = run_topk(run.cascade.topk, ev, k, cfg.eval.batch_size, desc=f"cascade ({request_time})")
    return M.target_ranks(topk, ev.targets)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", action="append", required=True, help="a trained test-stage cascade run folder")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args(argv)
    command = "python -m bench.leakage_audit " + " ".join(argv if argv is not None else sys.argv[1:])
    out = {"command": command, "runs": {}}
    for path in args.run:
        run = load_run(Path(path))
        if run.stage != "test":
            raise SystemExit(f"{path}: a test-stage run is needed, this one was fitted for {run.stage!r}")
        ranks = {t: cascade_ranks(run, t) for t in ("target", "last")}
        row = {t: {k: round(float(v), 4) for k, v in M.summarize(r, (5, 10)).items() if k in KEYS} for t, r in ranks.items()}
        for metric in ("R@10", "N@10"):
            a, b = M.per_user_metric(ranks["target"], metric), M.per_user_metric(ranks["last"], metric)
            d = paired_bootstrap(a, b, n_boot=1000, seed=0, metric=metric).to_dict()
            row[f"last_minus_target_{metric}"] = {k: round(float(d[k]), 4) for k in ("diff", "ci_low", "ci_high")}
        row["ranker"] = run.config.ranker.kind
        out["runs"][str(path)] = row
        print(path, row, flush=True)
        if args.record:
            key = f"cascade_{run.config.ranker.kind}"
            entry = dict(json.loads(SUMMARY.read_text())["amazon-beauty"][key])
            entry["audit_request_time_last"] = {**row["last"], "command": command}
            record("amazon-beauty", key, entry)
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULTS / "leakage_audit.json", out)
    atomic_write_text(RESULTS / "leakage_audit.md", markdown(out))
    print(markdown(out))
    return 0


def markdown(out: dict) -> str:
    lines = ["# Audit: request time = target time vs last history time (Amazon Beauty, test, all users)", "",
             "| run | ranker | request time | R@5 | N@5 | R@10 | N@10 |", "|---|---|---|---|---|---|---|"]
    for path, row in out["runs"].items():
        for t in ("target", "last"):
            lines.append(f"| {path} | {row['ranker']} | {t} | " + " | ".join(f"{row[t][k]:.4f}" for k in KEYS) + " |")
    lines += ["", "Difference last - target (paired bootstrap 95% interval):", ""]
    for path, row in out["runs"].items():
        for metric in ("R@10", "N@10"):
            d = row[f"last_minus_target_{metric}"]
            lines.append(f"- {path} {metric}: {d['diff']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]")
    lines += ["", f"`{out['command']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
