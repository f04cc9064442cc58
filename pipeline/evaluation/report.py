"""Evaluate a trained run: every channel alone and the whole cascade on the same users, with
per-channel recall at its budget, unique hits, long-tail recall and paired bootstrap intervals."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.artifacts import atomic_write_json, atomic_write_parquet
from pipeline.evaluation import metrics as M
from pipeline.evaluation.bootstrap import compare_arms
from pipeline.evaluation.harness import (
    EvalSet, build_eval_set, channel_topk_fn, per_user, run_topk, score_lists, topk_frame,
)

CASCADE = "cascade"
BOOT_METRICS = ("R@10", "N@10")


def evaluate_run(run, max_users: int | None = None, out_dir: Path | None = None, with_cascade: bool = True) -> dict:
    cfg = run.config
    ev = cfg.eval
    ks = tuple(sorted(ev.ks))
    evalset = build_eval_set(run.split, run.stage, cfg.data.max_history, max_users or ev.max_users, cfg.run.seed)
    hist_items = run.split.history(run.stage)["item_id"].to_numpy(np.int64)
    popularity = M.item_popularity(hist_items, run.dataset.n_items)
    n_items = run.dataset.n_items
    arms, lists, budget_lists = {}, {}, {}
    for ccfg in cfg.enabled_channels():
        channel = run.channels[ccfg.name]
        k = max(ccfg.quota, max(ks))
        topk, secs = run_topk(channel_topk_fn(channel), evalset, k, ev.batch_size, desc=f"channel {ccfg.name}")
        res = score_lists(topk[:, : max(ks)], evalset, ks, popularity, n_items)
        ranks = M.target_ranks(topk, evalset.targets)
        res[f"R@budget({ccfg.quota})"] = float(M.recall_at(ranks, ccfg.quota).mean())
        res["ms_per_user"] = 1e3 * secs / max(len(evalset), 1)
        res["seconds"] = secs
        arms[ccfg.name], lists[ccfg.name], budget_lists[ccfg.name] = res, topk[:, : max(ks)], topk[:, : ccfg.quota]
    if with_cascade:
        topk, secs = run_topk(run.cascade.topk, evalset, max(ks), ev.batch_size, desc="cascade")
        res = score_lists(topk, evalset, ks, popularity, n_items)
        res["ms_per_user"], res["seconds"] = 1e3 * secs / max(len(evalset), 1), secs
        cats = _category_codes(run.dataset)
        res["diversity@10"] = M.intra_list_diversity(topk[:, :10], categories=cats)
        arms[CASCADE], lists[CASCADE] = res, topk
    report = {
        "dataset": run.dataset.name, "stage": run.stage, "users": len(evalset), "ks": list(ks),
        "arms": arms,
        "channels": _channel_stats(budget_lists, evalset),
        "bootstrap": _intervals(lists, evalset, arms, ev.n_boot, cfg.run.seed),
    }
    if out_dir is not None:
        write_report(report, lists, evalset, run, Path(out_dir))
    return report


def _category_codes(dataset) -> np.ndarray | None:
    if "category" not in dataset.items:
        return None
    return dataset.items["category"].astype(str).astype("category").cat.codes.to_numpy(np.int64)


def _channel_stats(budget_lists: dict, evalset: EvalSet) -> dict:
    """Hits, recall and unique hits of each channel at its own budget (its quota)."""
    if not budget_lists:
        return {}
    return M.channel_hits(budget_lists, evalset.targets)


def _intervals(lists: dict, evalset: EvalSet, arms: dict, n_boot: int, seed: int) -> dict:
    """Paired bootstrap of every arm against the best single channel (by R@10) as control."""
    channels = [a for a in arms if a != CASCADE]
    if len(lists) < 2 or not channels:
        return {}
    control = max(channels, key=lambda a: (arms[a].get("R@10", 0.0), arms[a].get("N@10", 0.0)))
    pu = {arm: per_user(topk, evalset, BOOT_METRICS) for arm, topk in lists.items()}
    return {"control": control, "arms": compare_arms(pu, control, BOOT_METRICS, n_boot=n_boot, seed=seed)}


def write_report(report: dict, lists: dict, evalset: EvalSet, run, out_dir: Path) -> None:
    k_lists = run.config.eval.k_lists
    for arm, topk in lists.items():
        frame = topk_frame(topk[:, :k_lists], evalset, run.dataset.user_ids, run.dataset.item_ids)
        atomic_write_parquet(out_dir / f"topk_{arm}.parquet", frame)
    atomic_write_json(out_dir / "report.json", report)


def format_table(report: dict) -> str:
    """The channel comparison as a fixed-width text table."""
    ks = report["ks"]
    cols = [f"R@{k}" for k in ks] + [f"N@{k}" for k in ks] + ["MRR", f"tail_R@{max(ks)}", f"coverage@{max(ks)}", "ms/user"]
    head = f"{'arm':<14}" + "".join(f"{c:>13}" for c in cols)
    lines = [f"{report['dataset']} ({report['stage']}, {report['users']} users)", head, "-" * len(head)]
    for arm, res in report["arms"].items():
        vals = [res.get(c.replace("ms/user", "ms_per_user"), float("nan")) for c in cols]
        lines.append(f"{arm:<14}" + "".join(f"{v:>13.4f}" for v in vals))
    boot = report.get("bootstrap") or {}
    for arm, by_metric in (boot.get("arms") or {}).items():
        for metric, r in by_metric.items():
            lines.append(
                f"{arm} vs {boot['control']} {metric}: diff {r['diff']:+.4f} "
                f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] p={r['p_value']:.3f}"
            )
    return "\n".join(lines)
