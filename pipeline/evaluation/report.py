"""Evaluate a trained run: every channel alone and every pipeline arm on the same users.

report["arms"] holds one entry per channel (the channel alone, its list cut at max(ks)) and one
per pipeline arm; report["channels"] adds channel-only figures (recall at its budget, unique hits,
recall by popularity bucket, recall vs k); report["bootstrap"] compares every arm with the control.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pipeline.core import metrics as M
from pipeline.core.artifacts import atomic_write_json, atomic_write_parquet
from pipeline.evaluation.arms import build_arms, latency_summary, request_latency_ms
from pipeline.evaluation.bootstrap import compare_arms
from pipeline.evaluation.harness import (
    EvalSet, build_eval_set, channel_topk_fn, per_user, run_topk, score_lists, topk_frame,
)

CASCADE = "cascade"
BOOT_METRICS = ("R@10", "N@10")
TAIL = "tail_R@10"  # recall@10 on the targets outside the 20% most popular items
RECALL_CURVE = (1, 5, 10, 20, 50, 100, 200, 500)
N_BUCKETS = 5


def evaluate_run(run, max_users: int | None = None, out_dir: Path | None = None, with_cascade: bool = True,
                 arms=None, latency_requests: int = 200, engine: str | None = None) -> dict:
    """`engine`: 'local' (this process) or 'ray' (the top-k lists of every channel and arm on Ray
    Data actors that load the run folder; the same lists); None: the run's `train.backend`."""
    cfg, ev = run.config, run.config.eval
    ks = tuple(sorted(ev.ks))
    eval_args = {"max_history": cfg.data.max_history, "max_users": max_users or ev.max_users, "seed": cfg.run.seed,
                 "request_time": ev.request_time}
    evalset = build_eval_set(run.split, run.stage, **eval_args)
    popularity = M.item_popularity(run.split.history(run.stage)["item_id"].to_numpy(np.int64), run.dataset.n_items)
    ctx = _Context(run, evalset, ks, popularity, latency_requests)
    built = build_arms(run, arms) if with_cascade else []
    engine = engine or cfg.train.backend
    if engine == "ray":
        ctx.precompute(eval_args, arms, built)
    elif engine != "local":
        raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
    results, lists, budget_lists, channel_extra = {}, {}, {}, {}
    for ccfg in cfg.enabled_channels():
        res, topk, extra = ctx.channel(ccfg.name, ccfg.quota)
        results[ccfg.name], lists[ccfg.name], channel_extra[ccfg.name] = res, topk[:, : max(ks)], extra
        budget_lists[ccfg.name] = topk[:, : ccfg.quota]
    arm_names = []
    for arm in built:
        results[arm.name], lists[arm.name] = ctx.arm(arm)
        arm_names.append(arm.name)
    pu = {name: per_user(topk, evalset, BOOT_METRICS) for name, topk in lists.items()}  # for both comparisons
    in_tail = M.long_tail_mask(popularity)[evalset.targets]
    for name in pu:  # tail recall as a per-user mean, for the paired interval against the control
        pu[name][TAIL] = _tail_values(pu[name]["R@10"], in_tail)
    report = {
        "dataset": run.dataset.name, "stage": run.stage, "users": len(evalset), "ks": list(ks),
        "protocol": run_protocol(run),
        "arms": results, "pipeline_arms": arm_names,
        "channels": _channel_section(budget_lists, evalset, channel_extra),
        "overlap": _overlap(budget_lists, evalset),
        "bootstrap": _intervals(pu, results, arm_names, cfg, ev.n_boot),
        "arms_vs_channels": _arms_vs_channels(pu, arm_names, cfg, ev.n_boot),
        "unique_after_ranking": _unique_after_ranking(lists, budget_lists, evalset, ctx.arm_channels),
        "latency_samples_ms": ctx.latency_samples, "engine": engine,
    }
    if out_dir is not None:
        write_report(report, lists, evalset, run, Path(out_dir))
    return report


def run_protocol(run) -> dict:
    """Which protocol of SPEC section 9 this evaluation follows: the tie order of the data, the
    request time the ranker was trained with (from the run's manifest) and the one evaluated with."""
    from pipeline.workflow import protocol_name

    trained = (run.manifest.get("config", {}).get("eval", {}) or {}).get("request_time", "target")
    evaluated = run.config.eval.request_time
    name = protocol_name(run.config) if trained == evaluated else "custom"
    return {"name": name, "tie_order": run.dataset.tie_order, "train_request_time": trained,
            "eval_request_time": evaluated}


class _Context:
    """What every arm and channel is scored against: the same users, popularity and buckets."""

    def __init__(self, run, evalset: EvalSet, ks, popularity, latency_requests: int) -> None:
        self.run, self.evalset, self.ks, self.popularity = run, evalset, ks, popularity
        self.buckets = M.popularity_buckets(popularity, N_BUCKETS)
        self.n_items = run.dataset.n_items
        self.latency_requests = latency_requests
        self.latency_samples: dict[str, list[float]] = {}
        self.arm_channels: dict[str, list[str]] = {}
        cat = run.dataset.items["category"].astype(str) if "category" in run.dataset.items else None
        self.categories = None if cat is None else cat.astype("category").cat.codes.to_numpy(np.int64)
        self.precomputed: dict[str, np.ndarray] | None = None
        self.precomputed_seconds = 0.0

    def precompute(self, eval_args: dict, arms, built) -> None:
        """Every channel's and arm's top-k lists in one pass on Ray Data (pipeline/scale.py)."""
        from pipeline.scale import ray_topk

        cfg, ks = self.run.config, self.ks
        wanted = {f"channel:{c.name}": max(c.quota, max(ks)) for c in cfg.enabled_channels()}
        wanted |= {f"arm:{a.name}": max(ks) for a in built}
        specs = None if arms is None else [a.model_dump(mode="json") for a in arms]
        start = time.perf_counter()
        self.precomputed = ray_topk(str(self.run.path), eval_args, specs, wanted, len(self.evalset), cfg.eval.batch_size,
                                    cfg.train)
        self.precomputed_seconds = (time.perf_counter() - start) / max(len(wanted), 1)  # an even share of the pass

    def _topk(self, key: str, fn, k: int, desc: str) -> tuple[np.ndarray, float]:
        if self.precomputed is not None:
            return self.precomputed[key], self.precomputed_seconds
        return run_topk(fn, self.evalset, k, self.run.config.eval.batch_size, desc=desc)

    def channel(self, name: str, quota: int):
        ch, ks, ev = self.run.channels[name], self.ks, self.evalset
        k = max(quota, max(ks))
        topk, secs = self._topk(f"channel:{name}", channel_topk_fn(ch), k, f"channel {name}")
        res = score_lists(topk[:, : max(ks)], ev, ks, self.popularity, self.n_items)
        ranks = M.target_ranks(topk, ev.targets)
        res[f"R@budget({quota})"] = float(M.recall_at(ranks, quota).mean())
        res["ms_per_user"], res["seconds"] = 1e3 * secs / max(len(ev), 1), secs
        res["latency"] = self._latency(name, channel_topk_fn(ch), quota)
        extra = {
            "budget": quota,
            "recall_vs_k": {str(c): float(M.recall_at(ranks, c).mean()) for c in RECALL_CURVE if c <= k},
            "recall_by_bucket": _buckets(M.recall_by_bucket(ranks, ev.targets, self.buckets, quota)),
            "coverage@budget": M.catalog_coverage(topk[:, :quota], self.n_items),
        }
        return res, topk, extra

    def arm(self, arm):
        ks, ev = self.ks, self.evalset
        topk, secs = self._topk(f"arm:{arm.name}", arm.cascade.topk, max(ks), f"arm {arm.name}")
        res = score_lists(topk, ev, ks, self.popularity, self.n_items)
        res["ms_per_user"], res["seconds"] = 1e3 * secs / max(len(ev), 1), secs
        if self.categories is not None:
            res["diversity@10"] = M.intra_list_diversity(topk[:, :10], categories=self.categories)
        res["latency"] = self._latency(arm.name, arm.cascade.topk, max(ks))
        self.arm_channels[arm.name] = [c.name for c in arm.cascade.channels]
        return res, topk

    def _latency(self, name: str, fn, k: int) -> dict:
        if self.latency_requests <= 0:
            return {}
        ms = request_latency_ms(fn, self.evalset.batch, self.latency_requests, k)
        self.latency_samples[name] = [round(float(v), 4) for v in ms]
        return latency_summary(ms)


def _tail_values(hits: np.ndarray, in_tail: np.ndarray) -> np.ndarray:
    """Per-user values whose mean is recall@10 on the tail targets: hit * [tail] * n / n_tail
    (the tail share held at its sample value, so the paired bootstrap resamples users as for R@10)."""
    n_tail = int(in_tail.sum())
    if n_tail == 0:
        return np.zeros(len(hits))
    return np.asarray(hits, np.float64) * in_tail * (len(hits) / n_tail)


def _unique_after_ranking(lists: dict, budget_lists: dict, evalset: EvalSet, arm_channels: dict) -> dict:
    """For each pipeline arm: per channel of the arm, how many users' target is in the arm's top 10
    and in that channel's pool list but in no other channel's of the arm (the hits only it brought)."""
    out = {}
    targets = evalset.targets[:, None]
    for arm, names in arm_channels.items():
        names = [n for n in names if n in budget_lists]
        if not names:
            continue
        hit = (lists[arm][:, :10] == targets).any(axis=1)
        found = {n: (budget_lists[n] == targets).any(axis=1) for n in names}
        count = np.sum(list(found.values()), axis=0)
        out[arm] = {n: int((hit & found[n] & (count == 1)).sum()) for n in names} | {"hits@10": int(hit.sum())}
    return out


def _buckets(by_bucket: dict) -> dict:
    return {str(b): v for b, v in by_bucket.items()}


def _channel_section(budget_lists: dict, evalset: EvalSet, extra: dict) -> dict:
    if not budget_lists:
        return {}
    hits = M.channel_hits(budget_lists, evalset.targets)
    return {name: hits[name] | extra[name] for name in budget_lists}


def _overlap(budget_lists: dict, evalset: EvalSet) -> dict:
    if not budget_lists:
        return {}
    names, matrix = M.overlap_matrix(budget_lists, evalset.targets)
    return {"channels": list(names), "hits_both": np.asarray(matrix).tolist()}


def _control(results: dict, arm_names: list[str], cfg) -> str:
    if cfg.control is not None and cfg.control in results:
        return cfg.control
    if cfg.arms and arm_names:
        return arm_names[0]
    channels = [a for a in results if a not in arm_names] or list(results)
    return max(channels, key=lambda a: (results[a].get("R@10", 0.0), results[a].get("N@10", 0.0)))


def _intervals(pu: dict, results: dict, arm_names: list[str], cfg, n_boot: int) -> dict:
    """Every arm and channel against the control; `pu`: per-user metrics by name."""
    if len(pu) < 2:
        return {}
    control = _control(results, arm_names, cfg)
    return {"control": control, "arms": compare_arms(pu, control, BOOT_METRICS + (TAIL,), n_boot=n_boot, seed=cfg.run.seed)}


def _arms_vs_channels(pu: dict, arm_names: list[str], cfg, n_boot: int) -> dict:
    """Each pipeline arm against every single channel it could be replaced by: {arm: {channel:
    {metric: bootstrap}}}, the arm as the treatment (diff > 0: the arm is ahead)."""
    channels = [name for name in pu if name not in arm_names]
    if not channels or not arm_names:
        return {}
    return {arm: {ch: compare_arms({ch: pu[ch], arm: pu[arm]}, ch, BOOT_METRICS, n_boot=n_boot,
                                   seed=cfg.run.seed)[arm] for ch in channels}
            for arm in arm_names}


def verdict(report: dict, arm: str) -> str:
    """One line: does `arm` beat every channel on every bootstrapped metric (paired 95% interval
    above 0)? Names the comparisons that fall short."""
    against = (report.get("arms_vs_channels") or {}).get(arm) or {}
    if not against:
        return f"{arm}: no channel to compare with"
    short = [f"{ch} {m} {r['diff']:+.4f} [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]"
             for ch, by_metric in against.items() for m, r in by_metric.items() if not r["ci_low"] > 0.0]
    metrics = " and ".join(BOOT_METRICS)
    if not short:
        return f"{arm} beats every channel on {metrics} (paired 95% intervals exclude 0)"
    return f"{arm} does NOT beat every channel on {metrics}: " + "; ".join(short)


def write_report(report: dict, lists: dict, evalset: EvalSet, run, out_dir: Path) -> None:
    k_lists = run.config.eval.k_lists
    for arm, topk in lists.items():
        frame = topk_frame(topk[:, :k_lists], evalset, run.dataset.user_ids, run.dataset.item_ids)
        atomic_write_parquet(out_dir / f"topk_{arm}.parquet", frame)
    atomic_write_json(out_dir / "report.json", report)
    from pipeline.evaluation.markdown import write_markdown

    write_markdown(report, out_dir)


def format_table(report: dict) -> str:
    """The channel and arm comparison as a fixed-width text table."""
    ks = report["ks"]
    cols = [f"R@{k}" for k in ks] + [f"N@{k}" for k in ks] + ["MRR", f"tail_R@{max(ks)}", f"coverage@{max(ks)}"]
    head = f"{'arm':<16}" + "".join(f"{c:>12}" for c in cols) + f"{'p50 ms':>9}"
    title = f"{report['dataset']} ({report['stage']}, {report['users']} users)"
    proto = report.get("protocol")
    if proto:
        title += (f", protocol {proto['name']}: ties {proto['tie_order']}, request time trained "
                  f"'{proto['train_request_time']}' / evaluated '{proto['eval_request_time']}'")
    lines = [title, head, "-" * len(head)]
    for arm, res in report["arms"].items():
        vals = [res.get(c, float("nan")) for c in cols]
        p50 = res.get("latency", {}).get("p50_ms", float("nan"))
        lines.append(f"{arm:<16}" + "".join(f"{v:>12.4f}" for v in vals) + f"{p50:>9.2f}")
    boot = report.get("bootstrap") or {}
    for arm, by_metric in (boot.get("arms") or {}).items():
        for metric, r in by_metric.items():
            lines.append(
                f"{arm} vs {boot['control']} {metric}: diff {r['diff']:+.4f} "
                f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] p={r['p_value']:.3f}"
            )
    lines += [verdict(report, arm) for arm in report.get("pipeline_arms", [])]
    return "\n".join(lines)
