"""The full cascade on Amazon Beauty (SPEC section 9): channels -> pool -> trained ranker.

    python -m bench.cascade_beauty --ranker lgbm --stage both --record
    python -m bench.cascade_beauty --ranker mtgr --stage both --record
    python -m bench.cascade_beauty --ranker mtgr --stage valid --set ranker.params.d_model=96   # tuning

For each stage: the channels are fitted on split.history(stage); the ranker is trained on label
folds strictly before the stage (pipeline.workflow.ranking_data; cached under runs/cache, keyed by
everything that shapes it) with a user holdout for early stopping; then every channel alone and the
cascade are evaluated on all users with paired bootstrap intervals against the best single
channel. Tune on `--stage valid` only; `--record` writes the test figures to summary.json.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import yaml

from bench.summary import RESULTS, quality_entry, record
from pipeline.config import load_config
from pipeline.core.artifacts import atomic_write_json
from pipeline.evaluation.report import evaluate_run, format_table
from pipeline.registry import RANKER_KINDS, build_stage
from pipeline.workflow import fit_data, load_run, make_split, prepare_data, ranking_data, train
from rankers.training_data import RankingData

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "runs" / "cache"


def _overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        out[key] = yaml.safe_load(value)
    return out


def _cache_key(cfg, dataset, stage: str, ranker) -> str:
    shape = {"channels": [c.model_dump(mode="json") for c in cfg.enabled_channels()],
             "pool": cfg.pool.model_dump(mode="json"), "data": cfg.data.model_dump(mode="json"),
             "fingerprint": dataset.fingerprint(), "stage": stage, "folds": int(ranker.train_folds),
             "features": repr(ranker.feature_config), "seed": cfg.run.seed, "version": 2}
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]


def labelled_data(cfg, dataset, split, stage, ranker, data) -> RankingData:
    path = CACHE / f"ranking-{stage}-{_cache_key(cfg, dataset, stage, ranker)}.npz"
    if path.exists():
        return RankingData.load(path)
    labelled = ranking_data(cfg, dataset, split, stage, int(ranker.train_folds), ranker.feature_config, data)
    CACHE.mkdir(parents=True, exist_ok=True)
    labelled.save(path)
    return labelled


def run_stage(cfg, dataset, split, stage: str, max_users: int | None) -> tuple[dict, dict, float, Path]:
    """Train a run folder for `stage` (label data from the cache) and evaluate it."""
    t0 = time.perf_counter()
    ranker = build_stage(cfg.ranker, RANKER_KINDS, "ranker")
    labelled = labelled_data(cfg, dataset, split, stage, ranker, fit_data(dataset, split, stage, cfg.run.seed))
    print(f"[{stage}] ranking data: {len(labelled)} groups, {len(labelled.items)} rows, {labelled.stats} "
          f"({time.perf_counter() - t0:.0f}s)", flush=True)
    path = train(cfg, stage, run_dir=ROOT / "runs" / f"beauty-cascade-{cfg.ranker.kind}-{stage}", dataset=dataset,
                 labelled=labelled)
    seconds = time.perf_counter() - t0
    run = load_run(path)  # the saved run, as `hybridrec evaluate --run` would see it
    entry = run.manifest["ranker"]
    print(f"[{stage}] run {path} trained ({seconds:.0f}s): {json.dumps(entry.get('report'), default=str)[:2000]}", flush=True)
    report = evaluate_run(run, max_users=max_users)
    print(format_table(report), flush=True)
    return report, entry, seconds, path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(ROOT / "configs" / "amazon-beauty-cascade.yaml"))
    ap.add_argument("--ranker", choices=["mtgr", "lgbm"], default="mtgr")
    ap.add_argument("--stage", choices=["valid", "test", "both"], default="both")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--max-users", type=int, default=None)
    ap.add_argument("--record", action="store_true", help="write the test figures to bench/results/summary.json")
    args = ap.parse_args(argv)
    command = "python -m bench.cascade_beauty " + " ".join(argv if argv is not None else sys.argv[1:])
    overrides = {"ranker.kind": args.ranker, **_overrides(args.set)}
    base = load_config(args.config)
    if base.ranker.kind != args.ranker:  # another ranker: keep only the training-scheme settings
        shared = {k: v for k, v in base.ranker.params.items() if k in ("train_folds", "holdout", "seed")}
        overrides = {"ranker.params": shared, **overrides}
    cfg = load_config(args.config, overrides)
    dataset = prepare_data(cfg.data)
    split = make_split(dataset, cfg.data)
    stages = ["valid", "test"] if args.stage == "both" else [args.stage]
    results = {}
    for stage in stages:
        report, entry, seconds, path = run_stage(cfg, dataset, split, stage, args.max_users)
        results[stage] = {"report": report, "ranker": entry, "seconds": seconds, "run": str(path.relative_to(ROOT))}
    key = f"cascade_{args.ranker}"
    out = {"command": command, "config": cfg.model_dump(mode="json"), "stages": results}
    atomic_write_json(RESULTS / f"{key}_beauty.json", out)
    if args.record and "test" in results:
        test = results["test"]["report"]
        boot = test["bootstrap"]
        valid = results.get("valid", {}).get("report", {}).get("arms", {}).get("cascade", {})
        record("amazon-beauty", key, quality_entry(
            test["arms"]["cascade"], command, results["test"]["seconds"], users=test["users"],
            valid={k: round(valid[k], 4) for k in ("R@10", "N@10") if k in valid},
            vs_best_channel={"control": boot.get("control"),
                             **{m: {k: round(r[k], 4) for k in ("diff", "ci_low", "ci_high")}
                                for m, r in boot.get("arms", {}).get("cascade", {}).items()}},
            ranker=cfg.ranker.model_dump(mode="json"), channels=[c.name for c in cfg.enabled_channels()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
