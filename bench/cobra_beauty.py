"""Train the COBRA channel in one mode on Amazon Beauty and report it (SPEC section 9 protocol).

    nice -n 5 python -m bench.cobra_beauty --mode cobra [--set key=value ...] [--record]
    nice -n 5 python -m bench.cobra_beauty --dataset amazon-sports --no-tune --record   # defaults elsewhere

Parameters come from configs/amazon-beauty-cobra.yaml (the channel named like the mode), then
--set overrides. The channel is fitted for the test stage: trained on split.history('valid') with
early stopping on (a sample of) the validation users. Inference settings (beam size, BeamFusion
weights) are then tuned on the FULL validation set and the best (N@10) is evaluated once on test,
all users, full catalog, seen items excluded. Writes bench/results/cobra_<mode>_beauty.json, the
tokenizer report bench/results/cobra_<mode>_semantic_ids.json, saves the channel under runs/, and
with --record updates bench/results/summary.json. `--dataset` runs another Amazon set with the
Beauty configuration (`--no-tune` keeps Beauty's inference settings too); its files end in the set's
name (`cobra_cobra_sports.json`, ...).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from bench.summary import RESULTS, quality_entry, record
from channels.cobra.channel import CobraChannel
from pipeline.core import metrics as M
from pipeline.data import leave_one_out, load_dataset, shuffle_ties
from pipeline.evaluation.harness import build_eval_set, channel_topk_fn, run_topk
from pipeline.workflow import fit_data

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HYBRIDREC_DATA", ROOT.parent / "shared" / "data"))
CONFIG = ROOT / "configs" / "amazon-beauty-cobra.yaml"
KS = (5, 10, 20, 50)
DATASETS = {"amazon-beauty": "amazon-beauty-2014-5core", "amazon-sports": "amazon-sports-2014-5core",
            "amazon-toys": "amazon-toys-2014-5core"}
INFERENCE_GRID = {
    # The fused ranking depends on the weights only through dense_weight * psi / (sparse_weight * tau)
    # (the log-softmax normalisers are constant per request), so one ratio axis covers them.
    "cobra": {"beam_size": [20], "catalog_neighbors": [50, 200], "fusion_tau": [1.0], "fusion_psi": [1.0],
              "fusion_dense_weight": [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0], "neighbor_id_score": ["search", "own"]},
    "cobra_cosine": {"beam_size": [20], "catalog_neighbors": [20, 50], "fusion_tau": [0.5, 1.0, 2.0],
                     "fusion_psi": [10.0, 20.0], "fusion_dense_weight": [0.1, 0.25, 0.5, 1.0, 2.0]},
    "cobra_sparse": {"beam_size": [20, 50]},
    "tiger": {"beam_size": [20, 50]},
}


def channel_params(mode: str, overrides: list[str]) -> dict:
    raw = yaml.safe_load(CONFIG.read_text())
    params = next(c["params"] for c in raw["channels"] if c["name"] == mode)
    params = dict(params)
    for item in overrides:
        key, _, value = item.partition("=")
        params[key] = yaml.safe_load(value)
    return params


def evaluate(channel, evalset, k: int = max(KS)) -> dict:
    topk, secs = run_topk(channel_topk_fn(channel), evalset, k, 1024, desc="cobra eval")
    out = M.summarize(M.target_ranks(topk, evalset.targets), KS)
    out["seconds"] = secs
    return out


def _metrics(channel, blocks, evalset, k: int = max(KS)) -> dict:
    topk = np.concatenate([channel.score(c, k).items for c in blocks])
    return M.summarize(M.target_ranks(topk, evalset.targets), KS)


def tune(channel, grid: dict, valid_set, log: list, block: int = 1024) -> dict:
    """Grid over inference settings on validation; the beam search runs once per (beam_size,
    catalog_neighbors) and the BeamFusion weights only rescore its candidates."""
    search_keys = [k for k in ("beam_size", "catalog_neighbors") if k in grid]
    fusion_keys = [k for k in grid if k not in search_keys]
    best, best_params = None, None
    hist = valid_set.batch.history
    for svalues in itertools.product(*(grid[k] for k in search_keys)):
        channel.configure(**dict(zip(search_keys, svalues)))
        blocks = [channel.candidates(hist[lo : lo + block]) for lo in range(0, len(hist), block)]
        for fvalues in itertools.product(*(grid[k] for k in fusion_keys)):
            channel.configure(**dict(zip(fusion_keys, fvalues)))
            params = dict(zip(search_keys, svalues)) | dict(zip(fusion_keys, fvalues))
            res = _metrics(channel, blocks, valid_set)
            log.append({"params": params, "valid": {k: round(res[k], 4) for k in ("R@10", "N@10", "R@50")}})
            print(f"  valid {params}: R@10 {res['R@10']:.4f} N@10 {res['N@10']:.4f} R@50 {res['R@50']:.4f}", flush=True)
            if best is None or res["N@10"] > best["N@10"]:
                best, best_params = res, params
    channel.configure(**best_params)
    return {"params": best_params, "metrics": best}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=("cobra", "cobra_sparse", "tiger"), default="cobra")
    ap.add_argument("--set", action="append", default=[], help="channel parameter override key=value (YAML value)")
    ap.add_argument("--no-tune", action="store_true", help="skip the inference grid on validation")
    ap.add_argument("--record", action="store_true", help="write the result into bench/results/summary.json")
    ap.add_argument("--tag", default="", help="suffix of the result files (experiments)")
    ap.add_argument("--dataset", default="amazon-beauty", choices=sorted(DATASETS))
    ap.add_argument("--shuffle-ties", type=int, default=None, metavar="SEED",
                    help="protocol B: same-timestamp rows of a user in a seeded random order (default: file order, protocol A)")
    ap.add_argument("--no-test", action="store_true", help="validation only (ablations): the test split is not scored")
    args = ap.parse_args(argv)
    if args.record and args.no_test:
        ap.error("--record needs the test split (drop --no-test)")
    command = "python -m bench.cobra_beauty " + " ".join(argv if argv is not None else sys.argv[1:])
    params = channel_params(args.mode, args.set)
    ds = load_dataset("amazon", DATA / DATASETS[args.dataset])
    if args.shuffle_ties is not None:
        ds = shuffle_ties(ds, args.shuffle_ties)
    short = args.dataset.removeprefix("amazon-")
    split = leave_one_out(ds.interactions)
    t0 = time.perf_counter()
    channel = CobraChannel(name=args.mode, **params).fit(fit_data(ds, split, "test", 0))
    fit_seconds = time.perf_counter() - t0
    valid_set, test_set = build_eval_set(split, "valid", 50), build_eval_set(split, "test", 50)
    log: list = []
    grid_name = args.mode + ("_cosine" if args.mode == "cobra" and channel.similarity == "cosine" else "")
    grid = {} if args.no_tune else INFERENCE_GRID[grid_name]
    tuned = tune(channel, grid or {"beam_size": [channel.beam_size]}, valid_set, log)
    test = {k: float("nan") for k in ("R@5", "N@5", "R@10", "N@10", "R@20", "R@50")} if args.no_test else evaluate(channel, test_set)
    seconds = time.perf_counter() - t0
    name = f"cobra_{args.mode}{args.tag or ('' if args.shuffle_ties is None else '_b')}"  # protocol B files apart
    print(f"{name} test: " + " ".join(f"{k} {test[k]:.4f}" for k in ("R@5", "N@5", "R@10", "N@10", "R@50"))
          + f" (fit {fit_seconds:.0f}s, total {seconds:.0f}s)", flush=True)
    report = channel.tokenizer_report()
    result = {"mode": args.mode, "command": command, "params": channel._params(), "fit_seconds": round(fit_seconds, 1),
              "fit_report": channel.fit_report_, "tuning": log, "chosen": tuned["params"],
              "valid": {k: round(v, 4) for k, v in tuned["metrics"].items()},
              "test": None if args.no_test else {k: round(v, 4) for k, v in test.items()}, "users": len(test_set),
              "protocol": "A" if args.shuffle_ties is None else f"B (ties shuffled, seed {args.shuffle_ties})"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    ids_file = f"{name}_semantic_ids.json" if short == "beauty" else f"{name}_{short}_semantic_ids.json"
    (RESULTS / f"{name}_{short}.json").write_text(json.dumps(result, indent=1, default=float))
    (RESULTS / ids_file).write_text(json.dumps(report, indent=1))
    channel.save(ROOT / "runs" / f"{name}-{short}")
    if args.record:
        record(args.dataset + ("" if args.shuffle_ties is None else "-robust"), args.mode + args.tag, quality_entry(
            test, command, seconds, valid={"R@10": round(tuned["metrics"]["R@10"], 4), "N@10": round(tuned["metrics"]["N@10"], 4)},
            users=len(test_set), params=tuned["params"], fit_seconds=round(fit_seconds, 1)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
