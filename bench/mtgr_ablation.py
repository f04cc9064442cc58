"""MTGR ablations on Amazon Beauty: the full ranker against the same ranker without cross features,
without Group LayerNorm (one LayerNorm for all token types) and without the dynamic mask
(candidates also attend to each other), each trained on the same cached label folds and evaluated
as the full cascade on the test split (all users), with paired bootstrap intervals vs the full one.

    python -m bench.mtgr_ablation --full-run runs/beauty-cascade-mtgr-test   # after bench.cascade_beauty --ranker mtgr
    python -m bench.mtgr_ablation [--variants full,no_cross,no_group_norm,no_dynamic_mask] [--set ranker.params.max_epochs=4]

Writes bench/results/mtgr_ablation.{json,md}. The variants share every other setting of
configs/amazon-beauty-cascade.yaml; no variant is tuned on its own.
"""
from __future__ import annotations

import argparse
import sys
import time

from bench.cascade_beauty import ROOT, _overrides, labelled_data
from bench.summary import RESULTS
from pipeline.config import load_config
from pipeline.core import metrics as M
from pipeline.core.artifacts import atomic_write_json, atomic_write_text
from pipeline.evaluation.bootstrap import compare_arms
from pipeline.evaluation.harness import build_eval_set, per_user, run_topk
from pipeline.registry import RANKER_KINDS, build_channel, build_stage
from pipeline.workflow import build_cascade, fit_data, fit_ranker, load_run, make_split, prepare_data

VARIANTS = {
    "full": {},
    "no_cross": {"cross_features": False},
    "no_group_norm": {"group_norm": False},
    "no_dynamic_mask": {"mask": "full"},
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(ROOT / "configs" / "amazon-beauty-cascade.yaml"))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--stage", choices=["valid", "test"], default="test")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--full-run", default=None, help="take the 'full' variant from this run folder (bench.cascade_beauty's)")
    args = ap.parse_args(argv)
    command = "python -m bench.mtgr_ablation " + " ".join(argv if argv is not None else sys.argv[1:])
    cfg = load_config(args.config, {"ranker.kind": "mtgr", **_overrides(args.set)})
    dataset = prepare_data(cfg.data)
    split = make_split(dataset, cfg.data)
    data = fit_data(dataset, split, args.stage, cfg.run.seed)
    channels = {c.name: build_channel(c).fit(data) for c in cfg.enabled_channels()}
    evalset = build_eval_set(split, args.stage, cfg.data.max_history)
    base = build_stage(cfg.ranker, RANKER_KINDS, "ranker")
    labelled = labelled_data(cfg, dataset, split, args.stage, base, data)
    rows, lists = {}, {}
    for name in args.variants.split(","):
        t = time.perf_counter()
        if name == "full" and args.full_run:  # the already trained cascade_mtgr run: same data, same settings
            run = load_run(args.full_run)
            ranker, entry = run.cascade.ranker, run.manifest["ranker"]
        else:
            params = {**cfg.ranker.params, **VARIANTS[name]}
            ranker = build_stage(cfg.ranker.model_copy(update={"params": params}), RANKER_KINDS, "ranker")
            entry = fit_ranker(ranker, cfg, dataset, split, args.stage, data, labelled=labelled)
        cascade = build_cascade(cfg, channels, ranker)
        topk, secs = run_topk(cascade.topk, evalset, 10, cfg.eval.batch_size)
        res = M.summarize(M.target_ranks(topk, evalset.targets), (5, 10))
        rows[name] = {**{k: res[k] for k in ("R@5", "N@5", "R@10", "N@10")}, "params": VARIANTS[name],
                      "holdout_ndcg10": entry["report"]["best_holdout_ndcg10"], "epochs": entry["report"]["epochs"],
                      "train_seconds": entry["report"]["seconds"], "seconds": time.perf_counter() - t}
        lists[name] = topk
        print(name, {k: round(v, 4) if isinstance(v, float) else v for k, v in rows[name].items()}, flush=True)
    boot = {}
    if "full" in lists and len(lists) > 1:
        pu = {n: per_user(t, evalset, ("R@10", "N@10")) for n, t in lists.items()}
        boot = compare_arms(pu, "full", ("R@10", "N@10"), n_boot=cfg.eval.n_boot, seed=cfg.run.seed)
    out = {"stage": args.stage, "users": len(evalset), "variants": rows, "bootstrap_vs_full": boot, "command": command}
    atomic_write_json(RESULTS / "mtgr_ablation.json", out)
    atomic_write_text(RESULTS / "mtgr_ablation.md", _markdown(out))
    print(_markdown(out))
    return 0


def _markdown(out: dict) -> str:
    lines = [f"# MTGR ablation (Amazon Beauty, {out['stage']} split, {out['users']} users, full cascade)", "",
             "| variant | R@5 | N@5 | R@10 | N@10 | N@10 diff vs full [95% CI] | holdout N@10 in pool | epochs |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in out["variants"].items():
        b = (out["bootstrap_vs_full"].get(name) or {}).get("N@10")
        diff = f"{b['diff']:+.4f} [{b['ci_low']:+.4f}, {b['ci_high']:+.4f}]" if b else "-"
        lines.append(f"| {name} | {r['R@5']:.4f} | {r['N@5']:.4f} | {r['R@10']:.4f} | {r['N@10']:.4f} | {diff} | "
                     f"{r['holdout_ndcg10']:.4f} | {r['epochs']} |")
    lines += ["", f"`{out['command']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
