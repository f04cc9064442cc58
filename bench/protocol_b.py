"""Protocol B (SPEC section 9) for the classic channels and both cascades, beside protocol A.

    python -m bench.protocol_b --dataset amazon-beauty-2014-5core --seeds 1 2 3 --record
    python -m bench.protocol_b --dataset amazon-sports-2014-5core --seeds 1 --protocol-a --no-tune --record

Protocol B: each user's same-timestamp rows in a seeded random order (`data.shuffle_ties`), and
request time = the user's last history time at evaluation AND in every ranker label fold
(`eval.request_time: last`). For each seed: the cascade config (configs/amazon-beauty-cascade.yaml:
popularity + three co-visitation channels -> pool -> MTGR, with a LightGBM arm on the same pools)
is trained for the test stage and evaluated on all users; figures are the mean and standard
deviation over seeds, with the paired interval of each cascade against the best channel per seed.

Tuning: the co-visitation and popularity settings are chosen again on the VALIDATION split of the
first seed under protocol B (they were tuned on file order); `--no-tune` keeps the config's
(Beauty) settings, the generalisation check for Sports and Toys. `--protocol-a` adds one run of
the standard protocol (file order, request time = target time) under the plain dataset key.
`--only-a` runs protocol A alone (with `--peer`: the peer beside it), with the channel settings
chosen by the last protocol-B call (`tuned_on_valid` in bench/results/protocol_b_<key>.json), and
writes bench/results/protocol_a_<key>.json, leaving the protocol-B file and records as they are:

    python -m bench.protocol_b --only-a --peer --record
"""
from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from bench import peer as P
from bench.summary import RESULTS, record
from pipeline.config import apply_overrides, load_config
from pipeline.core import metrics as M
from pipeline.core.artifacts import atomic_write_json
from pipeline.evaluation.harness import build_eval_set, channel_topk_fn, run_topk
from pipeline.evaluation.report import evaluate_run, format_table
from pipeline.registry import build_channel
from pipeline.workflow import fit_data, load_run, make_split, prepare_data, train

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "amazon-beauty-cascade.yaml"
KEYS = {"amazon-beauty-2014-5core": "amazon-beauty", "amazon-sports-2014-5core": "amazon-sports",
        "amazon-toys-2014-5core": "amazon-toys"}
METRICS = ("R@5", "N@5", "R@10", "N@10", "R@20")
ARMS = [{"name": "cascade_mtgr"},
        {"name": "cascade_lgbm", "ranker": {"kind": "lgbm", "params": {"train_folds": 2, "holdout": 0.1}}}]
REPORTED = {"popularity": "popularity", "item2item": "item2item", "cascade_mtgr": "cascade_mtgr",
            "cascade_lgbm": "cascade_lgbm"}
I2I_GRID = {"window": [1, 3, 5], "backward_weight": [0.25, 1.0], "history_len": [3, 5], "history_decay": [0.3, 0.6]}
POP_GRID = {"half_life_days": [7, 30, 120]}


def protocol(seed: int | None) -> dict:
    """Overrides of protocol B with this tie seed, or of protocol A (seed None)."""
    if seed is None:
        return {"data.shuffle_ties": None, "eval.request_time": "target"}
    return {"data.shuffle_ties": seed, "eval.request_time": "last"}


def _grid(grid: dict) -> list[dict]:
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def tune(cfg) -> dict[str, dict]:
    """Best params (validation N@10) of the `item2item` and `popularity` channels under cfg."""
    dataset = prepare_data(cfg.data)
    split = make_split(dataset, cfg.data)
    data = fit_data(dataset, split, "valid", cfg.run.seed)
    evalset = build_eval_set(split, "valid", cfg.data.max_history, request_time=cfg.eval.request_time)
    chosen = {}
    for name, grid in (("item2item", I2I_GRID), ("popularity", POP_GRID)):
        base = next(c for c in cfg.channels if c.name == name)
        best = None
        for params in _grid(grid):
            ccfg = base.model_copy(update={"params": {**base.params, **params}})
            topk, _ = run_topk(channel_topk_fn(build_channel(ccfg).fit(data)), evalset, 10, cfg.eval.batch_size)
            score = M.summarize(M.target_ranks(topk, evalset.targets), (10,))
            print(f"  tune {name} {params}: valid R@10 {score['R@10']:.4f} N@10 {score['N@10']:.4f}", flush=True)
            if best is None or score["N@10"] > best[0]["N@10"]:
                best = (score, ccfg.params)
        chosen[name] = {"params": best[1], "valid_R@10": round(best[0]["R@10"], 4), "valid_N@10": round(best[0]["N@10"], 4)}
    return chosen


def run_once(cfg, out: Path, reuse: bool = False) -> tuple[dict, float]:
    t = time.perf_counter()
    if reuse and (out / "manifest.json").is_file():
        path = out  # trained by an earlier call with the same settings (--reuse)
    else:
        if out.exists():
            shutil.rmtree(out)
        path = train(cfg, "test", run_dir=out)
    report = evaluate_run(load_run(path), latency_requests=0)
    print(format_table(report), flush=True)
    return report, time.perf_counter() - t


def summarize(reports: list[dict], seeds: list, command: str, seconds: float, notes: dict) -> dict[str, dict]:
    """{method: entry} with the mean over seeds, the spread, and per-seed figures."""
    out = {}
    for name, key in REPORTED.items():
        rows = [r["arms"][name] for r in reports if name in r["arms"]]
        if not rows:
            continue
        entry = {m: round(float(np.mean([row[m] for row in rows])), 4) for m in METRICS}
        entry |= {f"{m}_std": round(float(np.std([row[m] for row in rows], ddof=1)), 4) if len(rows) > 1 else None
                  for m in ("R@10", "N@10")}  # None: one seed, no spread to report
        entry |= {"seeds": seeds, "per_seed": [{m: round(row[m], 4) for m in ("R@10", "N@10")} for row in rows],
                  "command": command, "seconds": round(seconds, 1), "users": reports[0]["users"], **notes}
        if name.startswith("cascade"):
            entry["vs_channels"] = [_vs_best_channel(r, name) for r in reports]
        out[key] = entry
    return out


def peer_entry(rows: list[dict], reports: list[dict], seeds: list, command: str, epochs: int) -> dict:
    """The `peer_sasrec` entry: means over seeds, spread, and ours/peer ratios per seed (same split,
    same users, same harness, same command)."""
    for row, report in zip(rows, reports):
        if row["users"] != report["users"]:
            raise RuntimeError(f"the peer was scored on {row['users']} users, the cascade on {report['users']}")
    entry = {m: round(float(np.mean([r[m] for r in rows])), 4) for m in METRICS}
    entry |= {f"{m}_std": round(float(np.std([r[m] for r in rows], ddof=1)), 4) if len(rows) > 1 else None
              for m in ("R@10", "N@10")}
    ratios = {}
    for arm in ("cascade_mtgr", "cascade_lgbm"):
        per_seed = [{m: round(rep["arms"][arm][m] / r[m], 3) for m in ("R@10", "N@10")}
                    for r, rep in zip(rows, reports) if arm in rep["arms"]]
        if per_seed:
            ratios[arm] = {"per_seed": per_seed, **{m: round(float(np.mean([p[m] for p in per_seed])), 3)
                                                    for m in ("R@10", "N@10")}}
    return {**entry, "seeds": seeds, "per_seed": [{m: round(r[m], 4) for m in ("R@10", "N@10")} for r in rows],
            "command": command, "users": rows[0]["users"], "peer": "rectools 0.19.0 SASRecModel",
            "params": {**P.PARAMS, "epochs": epochs}, "epochs_chosen_on": "validation, protocol B seed 1",
            "train_seconds": [r["train_seconds"] for r in rows],
            "seconds": round(float(np.mean([r["train_seconds"] for r in rows])), 1), "ours_over_peer": ratios}


def _vs_best_channel(report: dict, arm: str) -> dict:
    against = report["arms_vs_channels"][arm]
    best = max(against, key=lambda ch: report["arms"][ch]["N@10"])
    return {"channel": best, **{m: {k: round(r[k], 4) for k in ("diff", "ci_low", "ci_high")}
                                for m, r in against[best].items()}}


def tuned_before(key: str) -> dict[str, dict]:
    """The channel settings the last protocol-B call chose on validation (for `--only-a`)."""
    path = RESULTS / f"protocol_b_{key}.json"
    if not path.is_file() or "tuned_on_valid" not in (done := json.loads(path.read_text())):
        raise SystemExit(f"--only-a: {path} holds no tuned_on_valid; run protocol B first, or pass --no-tune")
    return done["tuned_on_valid"]


def _run_a(args, cfg_b, python, epochs, command: str, key: str) -> tuple[dict, dict]:
    """One run of protocol A (and the peer on its split): (the result section, {method: entry})."""
    cfg_a = apply_overrides(cfg_b, protocol(None))
    out = ROOT / "runs" / f"protocol-a-{key}"
    report_a, seconds_a = run_once(cfg_a, out, args.reuse)
    section = {"seconds": round(seconds_a, 1), "arms": report_a["arms"], "arms_vs_channels": report_a["arms_vs_channels"]}
    standard = summarize([report_a], ["file order"], command, seconds_a, {"protocol": "A"})
    if args.peer:
        row = P.evaluate_peer(load_run(out).split, cfg_a, python, epochs, seed=1)
        print("  peer_sasrec protocol A: " + " ".join(f"{m} {row[m]:.4f}" for m in METRICS), flush=True)
        standard["peer_sasrec"] = peer_entry([row], [report_a], ["file order"], command, epochs) | {"protocol": "A"}
    return section, standard


def _run_b(args, result: dict, cfg_b, python, epochs, command: str, key: str, t0: float) -> dict[str, dict]:
    """Protocol B over args.seeds (and the peer on each split): {method: entry}; fills `result`."""
    reports, peer_rows = [], []
    for seed in args.seeds:
        cfg = apply_overrides(cfg_b, protocol(seed) | {"run.name": f"protocol-b-{key}-{seed}"})
        report, seconds = run_once(cfg, ROOT / "runs" / f"protocol-b-{key}-seed{seed}", args.reuse)
        reports.append(report)
        if args.peer:
            peer_rows.append(P.evaluate_peer(load_run(ROOT / "runs" / f"protocol-b-{key}-seed{seed}").split, cfg,
                                             python, epochs, seed=seed))
            print(f"  peer_sasrec seed {seed}: " + " ".join(f"{m} {peer_rows[-1][m]:.4f}" for m in METRICS), flush=True)
        result.setdefault("runs", []).append({"seed": seed, "seconds": round(seconds, 1), "protocol": report["protocol"],
                                              "arms": report["arms"], "arms_vs_channels": report["arms_vs_channels"]})
    notes = {"protocol": "B", "tie_order": ", ".join(r["protocol"]["tie_order"] for r in reports),
             "request_time": "last (evaluation and ranker folds)"}
    if not load_run(ROOT / "runs" / f"protocol-b-{key}-seed{args.seeds[0]}").dataset.has_time:
        notes["note"] = "no timestamps in this dataset: request time n/a and no ties to shuffle"
    wall = time.perf_counter() - t0
    robust = summarize(reports, args.seeds, command, wall, notes)
    if args.peer:
        robust["peer_sasrec"] = peer_entry(peer_rows, reports, args.seeds, command, epochs) | notes
        result["peer"] = {"robust": robust["peer_sasrec"]}
    return robust


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="amazon-beauty-2014-5core")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="tie-shuffle seeds of protocol B")
    ap.add_argument("--no-tune", action="store_true", help="keep the config's channel settings (generalisation)")
    ap.add_argument("--protocol-a", action="store_true", help="also one run of protocol A")
    ap.add_argument("--only-a", action="store_true", help="protocol A alone, with the channel settings "
                    "tuned by the last protocol-B call (bench/results/protocol_b_<key>.json)")
    ap.add_argument("--max-users", type=int, default=None, help="(smoke runs) evaluate a sample of users")
    ap.add_argument("--reuse", action="store_true", help="evaluate run folders left by an earlier call again")
    ap.add_argument("--peer", action="store_true", help="also RecTools' SASRec on the same splits (needs the "
                    "peers environment: scripts/install-peers.sh; epochs from `python -m bench.peer`)")
    ap.add_argument("--peer-epochs", type=int, default=None, help="override the epochs chosen on validation")
    ap.add_argument("--record", action="store_true", help="write the figures to bench/results/summary.json")
    args = ap.parse_args(argv)
    command = "python -m bench.protocol_b " + " ".join(argv if argv is not None else sys.argv[1:])
    t0 = time.perf_counter()
    key = KEYS.get(args.dataset, args.dataset)
    base = load_config(CONFIG, {"data.path": str(ROOT.parent / "shared" / "data" / args.dataset), "arms": ARMS,
                                "eval.max_users": args.max_users, "ranker.params.progress": False})
    result: dict = {"command": command, "dataset": args.dataset, "seeds": [] if args.only_a else args.seeds}
    cfg_b = base
    if not args.no_tune:
        chosen = tuned_before(key) if args.only_a else tune(apply_overrides(base, protocol(args.seeds[0])))
        result["tuned_on_valid"] = chosen
        cfg_b = apply_overrides(base, {f"channels.{name}.params": c["params"] for name, c in chosen.items()})
    python = epochs = None
    if args.peer:
        python = P.peer_python()
        epochs = args.peer_epochs or json.loads(P.TUNING.read_text())["epochs"]
    robust = {} if args.only_a else _run_b(args, result, cfg_b, python, epochs, command, key, t0)
    standard = {}
    if args.protocol_a or args.only_a:
        result["protocol_a"], standard = _run_a(args, cfg_b, python, epochs, command, key)
        if "peer_sasrec" in standard:
            result.setdefault("peer", {})["standard"] = standard["peer_sasrec"]
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    out = RESULTS / f"protocol_{'a' if args.only_a else 'b'}_{key}.json"
    if "protocol_a" not in result and out.is_file():  # a protocol-B-only call keeps the last protocol-A run
        earlier = json.loads(out.read_text())
        result |= {k: earlier[k] for k in ("protocol_a", "peer") if k in earlier and k not in result}
    atomic_write_json(out, result)
    shown = {name: part for name, part in (("robust", robust), ("standard", standard)) if part}
    brief = {name: {k: {m: v[m] for m in ("R@10", "R@10_std", "N@10", "N@10_std")} for k, v in part.items()}
             for name, part in shown.items()}
    brief["ours_over_peer"] = {name: part["peer_sasrec"]["ours_over_peer"] for name, part in shown.items()
                               if "peer_sasrec" in part}
    print(json.dumps(brief | {"wall_seconds": result["wall_seconds"]}, indent=1))
    if args.record:
        for name, entry in robust.items():
            record(f"{key}-robust", name, entry)
        for name in ("cascade_mtgr", "cascade_lgbm", "peer_sasrec"):
            if name in standard:
                record(key, name, standard[name])
    return 0


if __name__ == "__main__":
    sys.exit(main())
