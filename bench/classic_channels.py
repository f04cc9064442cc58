"""Tune the classic channels on a dataset's VALIDATION split, then report them on TEST.

    python -m bench.classic_channels --dataset amazon-beauty-2014-5core [--quick]

Grid-searches item-to-item co-visitation and the popularity half-life on validation (N@10),
fits the best settings on train+valid, evaluates all users on test under the SPEC section 9
protocol, and records R@5/N@5/R@10/N@10 (+ R@200) in bench/results/summary.json.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

from bench.summary import RESULTS, quality_entry, record
from channels.item2item import ItemToItemChannel
from channels.popularity import PopularityChannel
from pipeline.data import load_dataset
from pipeline.core import metrics as M
from pipeline.evaluation.harness import build_eval_set, channel_topk_fn, run_topk
from pipeline.workflow import fit_data
from pipeline.data import leave_one_out

DATA = Path(os.environ.get("HYBRIDREC_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
KEYS = {"amazon-beauty-2014-5core": "amazon-beauty", "amazon-sports-2014-5core": "amazon-sports",
        "amazon-toys-2014-5core": "amazon-toys"}

I2I_GRID = {
    "window": [1, 3, 5],
    "backward_weight": [0.25, 1.0],
    "history_len": [1, 3, 5],
    "history_decay": [0.3, 0.6],
    "pop_alpha": [0.0, 0.3],
}
POP_GRID = {"half_life_days": [7, 30, 120, None]}


def _score(channel, data, evalset, k=200):
    channel.fit(data)
    topk, secs = run_topk(channel_topk_fn(channel), evalset, k, 2048)
    ranks = M.target_ranks(topk, evalset.targets)
    out = M.summarize(ranks, (5, 10, 20, 50, 200))
    out["seconds"] = secs
    return out


def _grid(grid: dict) -> list[dict]:
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def tune(cls, grid, data, evalset, log):
    best, best_params = None, None
    for params in _grid(grid):
        res = _score(cls(**params), data, evalset)
        log.append({"channel": cls.__name__, "params": params, "valid": {k: res[k] for k in ("R@10", "N@10")}})
        print(f"  {cls.__name__} {params}: valid R@10 {res['R@10']:.4f} N@10 {res['N@10']:.4f}", flush=True)
        if best is None or res["N@10"] > best["N@10"]:
            best, best_params = res, params
    return best_params, best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="amazon-beauty-2014-5core")
    ap.add_argument("--quick", action="store_true", help="a 2-point grid (smoke run)")
    ap.add_argument("--no-tune", action="store_true",
                    help="use the channels' defaults (tuned on Beauty) untouched: the generalisation check")
    args = ap.parse_args(argv)
    command = "python -m bench.classic_channels " + " ".join(argv if argv is not None else sys.argv[1:])
    ds = load_dataset("amazon", DATA / args.dataset)
    split = leave_one_out(ds.interactions)
    valid_data, test_data = fit_data(ds, split, "valid", 0), fit_data(ds, split, "test", 0)
    valid_set, test_set = build_eval_set(split, "valid", 50), build_eval_set(split, "test", 50)
    i2i_grid = {k: v[:1] for k, v in I2I_GRID.items()} if args.quick else I2I_GRID
    pop_grid = POP_GRID
    if args.no_tune:
        i2i_grid, pop_grid = {}, {}
    log: list = []
    key = KEYS.get(args.dataset, args.dataset)
    for name, cls, grid in (("popularity", PopularityChannel, pop_grid), ("item2item", ItemToItemChannel, i2i_grid)):
        params, best_valid = tune(cls, grid, valid_data, valid_set, log)
        t = time.perf_counter()
        res = _score(cls(**params), test_data, test_set)
        seconds = time.perf_counter() - t
        print(f"{name} test (params {params}): R@5 {res['R@5']:.4f} N@5 {res['N@5']:.4f} "
              f"R@10 {res['R@10']:.4f} N@10 {res['N@10']:.4f} R@200 {res['R@200']:.4f} "
              f"({len(test_set)} users, eval {res['seconds']:.1f}s, fit+eval {seconds:.1f}s)", flush=True)
        record(key, name, quality_entry(res, command, seconds, params=params,
                                        valid={"R@10": round(best_valid["R@10"], 4), "N@10": round(best_valid["N@10"], 4)},
                                        eval_seconds=round(res["seconds"], 2), users=len(test_set)))
    (RESULTS / f"classic_tuning_{key}.json").write_text(json.dumps(log, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
