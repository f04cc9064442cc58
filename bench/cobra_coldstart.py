"""Cold-start experiment on Amazon Beauty: items the model never saw an interaction of.

    nice -n 5 python -m bench.cobra_coldstart [--stage valid|test] [--quotas 0,10] [--fraction 0.05]
                                              [--set key=value ...] [--two-tower]

A seeded random 5% of the items lose every interaction from the fit data (train, validation
targets and the history before them). The COBRA channel is fitted on the rest with those items
absent from the catalog, then `add_items` gives them codes and dense vectors from their content
alone (no retraining). On the test users whose target is such an item (request histories as they
are), we report recall@10/50 of the COBRA channel against item-to-item co-visitation fitted on the
same data (which cannot know them) and, with --two-tower, the two-tower channel (its item tower
sees their content; they are in its catalog with no interactions). Also the recall@10 of every
channel on all test users, to show what the cold fit costs on warm items.

`--quotas`: COBRA's `cold_quota` values scored from the one fitted channel (the last places of
each answer kept for the items without interactions nearest to the ID-free history vector);
the first value is the one recorded. `--stage valid` runs the same experiment one step earlier
(fitted on the history before the validation targets, scored on the validation users whose target
is cold), which is where the quota is chosen; it writes cobra_coldstart_valid.{json,md} and records
nothing in the summary. Writes bench/results/cobra_coldstart.{json,md}.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from bench.cobra_beauty import channel_params
from bench.summary import RESULTS, record
from channels.cobra.channel import CobraChannel
from channels.item2item import ItemToItemChannel
from pipeline.core import metrics as M
from pipeline.data import leave_one_out, load_dataset
from pipeline.evaluation.harness import build_eval_set
from pipeline.workflow import fit_data

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HYBRIDREC_DATA", ROOT.parent / "shared" / "data"))


def without(frame, cold: np.ndarray):
    return None if frame is None else frame[~frame["item_id"].isin(cold)].reset_index(drop=True)


def recalls(channel, evalset, rows: np.ndarray, k: int = 50) -> dict:
    topk = np.concatenate([channel.retrieve(evalset.batch.take(slice(lo, lo + 1024)), k).items
                           for lo in range(0, len(evalset), 1024)])
    ranks = M.target_ranks(topk, evalset.targets)
    return {"cold_R@10": float(M.recall_at(ranks[rows], 10).mean()), "cold_R@50": float(M.recall_at(ranks[rows], 50).mean()),
            "all_R@10": float(M.recall_at(ranks, 10).mean()), "all_R@50": float(M.recall_at(ranks, 50).mean())}


def two_tower(data):
    from channels.two_tower.channel import TwoTowerChannel

    raw = yaml.safe_load((ROOT / "configs" / "amazon-beauty-two-tower.yaml").read_text())
    params = dict(raw["channels"][0]["params"]) | {"num_threads": 1, "progress": False}
    return TwoTowerChannel(**params).fit(data)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fraction", type=float, default=0.05)
    ap.add_argument("--mode", default="cobra")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--two-tower", action="store_true")
    ap.add_argument("--stage", choices=("valid", "test"), default="test")
    ap.add_argument("--quotas", default="0", help="comma-separated cold_quota values; the first is recorded")
    args = ap.parse_args(argv)
    quotas = [int(q) for q in args.quotas.split(",")]
    command = "nice -n 5 python -m bench.cobra_coldstart " + " ".join(argv if argv is not None else sys.argv[1:])
    ds = load_dataset("amazon", DATA / "amazon-beauty-2014-5core")
    split = leave_one_out(ds.interactions)
    rng = np.random.default_rng(0)
    cold = np.sort(rng.choice(ds.n_items, size=int(round(args.fraction * ds.n_items)), replace=False))
    full = fit_data(ds, split, args.stage, 0)
    data = dataclasses.replace(full, train=without(full.train, cold), valid=without(full.valid, cold),
                               valid_history=without(full.valid_history, cold))
    evalset = build_eval_set(split, args.stage, 50)
    rows = np.flatnonzero(np.isin(evalset.targets, cold))
    print(f"{len(cold)} cold items, {len(rows)} {args.stage} users with a cold target", flush=True)
    results, seconds = {}, {}
    t = time.perf_counter()
    params = channel_params(args.mode, args.set) | {"beam_size": 50}
    cobra = CobraChannel(name="cobra", **params).fit(dataclasses.replace(data, items=without(ds.items, cold)))
    cobra.add_items(ds.items[ds.items["item_id"].isin(cold)])
    seconds["cobra"] = time.perf_counter() - t
    for q in reversed(quotas):  # the recorded (first) quota last, so the channel's params say it
        cobra.configure(cold_quota=q)
        results["cobra" if q == quotas[0] else f"cobra_quota{q}"] = recalls(cobra, evalset, rows)
    print("cobra", {name: r for name, r in results.items()}, flush=True)
    t = time.perf_counter()
    results["item2item"] = recalls(ItemToItemChannel(window=3, history_len=3).fit(data), evalset, rows)
    seconds["item2item"] = time.perf_counter() - t
    print("item2item", results["item2item"], flush=True)
    if args.two_tower:
        t = time.perf_counter()
        results["two_tower"] = recalls(two_tower(data), evalset, rows)
        seconds["two_tower"] = time.perf_counter() - t
        print("two_tower", results["two_tower"], flush=True)
    out = {"command": command, "fraction": args.fraction, "cold_items": len(cold), "cold_test_users": len(rows),
           "cobra_params": cobra._params(), "results": results, "seconds": seconds,
           "cobra_fit_report": cobra.fit_report_}
    stem = "cobra_coldstart" + ("_valid" if args.stage == "valid" else "")
    (RESULTS / f"{stem}.json").write_text(json.dumps(out, indent=1, default=float))
    lines = [f"Cold start on Amazon Beauty ({args.stage} split): {len(cold)} items ({args.fraction:.0%}, seed 0) lose "
             f"every interaction from the fit data; {len(rows)} {args.stage} users have one of them as target. COBRA "
             f"gets them through `add_items` (content only, no retraining). `cobra`: cold_quota {quotas[0]}; "
             "`cobra_quotaQ`: the same fitted channel with cold_quota Q.", "",
             "| channel | cold R@10 | cold R@50 | all-users R@10 | all-users R@50 |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {r['cold_R@10']:.4f} | {r['cold_R@50']:.4f} | {r['all_R@10']:.4f} | {r['all_R@50']:.4f} |"
              for name, r in results.items()]
    lines += ["", f"`{command}`"]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    if args.stage == "valid":
        return 0
    record("amazon-beauty", "cobra_coldstart", {"cold_R@50": round(results["cobra"]["cold_R@50"], 4),
                                                "item2item_cold_R@50": round(results["item2item"]["cold_R@50"], 4),
                                                "cold_test_users": len(rows), "command": command,
                                                "seconds": round(sum(seconds.values()), 1)})
    record("amazon-beauty", "cobra_cold", {"R@10": round(results["cobra"]["cold_R@10"], 4),
                                           "R@50": round(results["cobra"]["cold_R@50"], 4),
                                           "all_R@10": round(results["cobra"]["all_R@10"], 4),
                                           "all_R@50": round(results["cobra"]["all_R@50"], 4),
                                           "cold_quota": quotas[0], "users": len(rows), "command": command})
    return 0


if __name__ == "__main__":
    sys.exit(main())
