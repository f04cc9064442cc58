"""The two-tower channel alone on Amazon Beauty: train through the workflow, report test and
validation figures under the SPEC section 9 protocol (full catalog, all users, seen excluded).

    python -m bench.two_tower_beauty [--config configs/amazon-beauty-two-tower.yaml] [--run DIR]
    python -m bench.two_tower_beauty --dataset amazon-toys     # the same defaults, untuned, on Toys

Fits for the test stage (early stopping on the validation targets while fitting on the history
before them; hyper-parameters were chosen on validation only), then evaluates the loaded run with
pipeline.evaluation.report.evaluate_run (test) and, with the same harness, the validation targets
(history before them: the data the model was fitted on, so these are early-stopping-selected
figures). Writes bench/results/two_tower_beauty.json and .md and records summary.json.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import yaml

from bench.summary import RESULTS, quality_entry, record
from pipeline.config import load_config
from pipeline.core import metrics as M
from pipeline.core.artifacts import atomic_write_json, atomic_write_text
from pipeline.evaluation.harness import build_eval_set, channel_topk_fn, run_topk, score_lists
from pipeline.evaluation.report import evaluate_run, format_table
from pipeline.workflow import load_run, train

DATASETS = {"amazon-beauty": "../shared/data/amazon-beauty-2014-5core",
            "amazon-sports": "../shared/data/amazon-sports-2014-5core",
            "amazon-toys": "../shared/data/amazon-toys-2014-5core"}
KEYS = ("R@5", "N@5", "R@10", "N@10", "R@20", "R@200")


def valid_metrics(run, name: str) -> dict:
    evalset = build_eval_set(run.split, "valid", run.config.data.max_history)
    topk, secs = run_topk(channel_topk_fn(run.channels[name]), evalset, 200, run.config.eval.batch_size)
    pop = M.item_popularity(run.split.history("valid")["item_id"].to_numpy(), run.dataset.n_items)
    out = score_lists(topk[:, :20], evalset, (5, 10, 20), pop, run.dataset.n_items)
    out["R@200"] = float(M.recall_at(M.target_ranks(topk, evalset.targets), 200).mean())
    out["seconds"] = secs
    return out


def markdown(res: dict) -> str:
    lines = [f"# Two-tower channel alone, {res['dataset']} (leave-one-out, full catalog, all users, seen excluded)", "",
             "| split | " + " | ".join(KEYS) + " |", "|---|" + "---|" * len(KEYS)]
    for split in ("valid", "test"):
        lines.append(f"| {split} | " + " | ".join(f"{res[split][k]:.4f}" for k in KEYS) + " |")
    fit = res["fit"]
    lines += ["", f"Training: {fit['train_seconds']:.0f} s wall ({fit['train_cpu_seconds']:.0f} s CPU) "
              f"for {fit['epochs_run']} epochs (best epoch {fit['best_epoch']}, {fit['seconds_per_epoch']:.0f} s/epoch incl. validation), "
              f"{res['threads']} threads, on {res['machine']}.",
              "Validation figures are those of the early-stopping target (selection-biased upward).", "",
              f"Command: `{res['command']}`", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/amazon-beauty-two-tower.yaml")
    p.add_argument("--run", default=None, help="evaluate this run folder instead of training a new one")
    p.add_argument("--channel", default="two_tower")
    p.add_argument("--machine", default="2-core CPU, shared (contended)")
    p.add_argument("--dataset", default="amazon-beauty", choices=sorted(DATASETS),
                   help="the generalisation check: the Beauty config, untouched, on another dataset")
    p.add_argument("--shuffle-ties", type=int, default=None, metavar="SEED",
                   help="protocol B: same-timestamp rows in a seeded random order (results keyed <dataset>-robust)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. channels.two_tower.params.refit=true (YAML value)")
    p.add_argument("--tag", default="", help="suffix of the result files and the summary key (experiments)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")  # per-epoch validation
    overrides = {} if args.dataset == "amazon-beauty" else {"data.path": DATASETS[args.dataset],
                                                            "run.name": f"{args.dataset}-two-tower"}
    if args.shuffle_ties is not None:
        overrides |= {"data.shuffle_ties": args.shuffle_ties, "eval.request_time": "last"}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    robust = "" if args.shuffle_ties is None else "-robust"
    cfg = load_config(args.config, overrides)
    t = time.perf_counter()
    run_dir = Path(args.run) if args.run else train(cfg, stage="test")
    total = time.perf_counter() - t
    run = load_run(run_dir)
    channel = run.channels[args.channel]
    report = evaluate_run(run, out_dir=run_dir / "eval-test", with_cascade=False)
    print(format_table(report))
    test = dict(report["arms"][args.channel])
    test["R@200"] = test.pop(f"R@budget({[c.quota for c in cfg.channels if c.name == args.channel][0]})")
    valid = valid_metrics(run, args.channel)
    fit = channel.fit_report_
    n_epochs = len(fit["epochs"])
    command = "python -m bench.two_tower_beauty " + " ".join(sys.argv[1:])
    res = {
        "dataset": run.dataset.name, "users": report["users"], "command": command, "run": str(run_dir),
        "params": next(c.params for c in cfg.channels if c.name == args.channel),
        "test": {k: test[k] for k in KEYS}, "valid": {k: valid[k] for k in KEYS},
        "fit": {"train_seconds": fit["seconds"], "train_cpu_seconds": fit.get("cpu_seconds"),
                "epochs_run": n_epochs, "best_epoch": fit["best_epoch"],
                "seconds_per_epoch": fit["seconds"] / max(n_epochs, 1), "epochs": fit["epochs"],
                "workflow_seconds": run.manifest["seconds"].get(f"fit.{args.channel}", total)},
        "threads": channel.num_threads, "machine": args.machine,
        "eval_ms_per_user": test.get("ms_per_user"),
    }
    stem = ("two_tower_beauty" if args.dataset == "amazon-beauty" else f"two_tower_{args.dataset}") + robust.replace("-", "_") + args.tag
    atomic_write_json(RESULTS / f"{stem}.json", res)
    atomic_write_text(RESULTS / f"{stem}.md", markdown(res))
    record(args.dataset + robust, "two_tower" + args.tag, quality_entry(
        test, command, fit["seconds"], valid={k: round(valid[k], 4) for k in ("R@10", "N@10")},
        params=res["params"], best_epoch=fit["best_epoch"], users=report["users"]))
    print(markdown(res))


if __name__ == "__main__":
    main()
