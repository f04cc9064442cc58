"""MTGR scoring speed: one pass over [user | history | K candidates] vs the per-candidate (DLRM)
reference, ranker latency for one request's pool, and achieved GFLOP/s vs the measured matmul peak.

    python -m bench.mtgr_speed                      # random weights, Beauty-sized model
    python -m bench.mtgr_speed --run runs/<folder>  # the trained ranker of a run (latency incl. features)

All figures in one process, one after the other, so that ratios compare like with like; the machine
load average at the start and end is recorded with them. Writes bench/results/mtgr_speed.{json,md}
and the `speed` entries of bench/results/summary.json.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

from bench.summary import RESULTS, record
from pipeline.core.artifacts import atomic_write_json, atomic_write_text
from rankers.mtgr import MTGR, MTGRConfig, MTGRInputs, forward_flops


def _timings(fn, repeats: int, warmup: int = 3) -> np.ndarray:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return np.array(out) * 1e3  # ms


def matmul_peak(n: int = 1024, repeats: int = 20) -> float:
    """Best fp32 GFLOP/s of an n x n matmul in this process's thread setting."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    ms = _timings(lambda: a @ b, repeats)
    return 2 * n**3 / (ms.min() / 1e3) / 1e9


def random_inputs(cfg: MTGRConfig, history: int, k: int, seed: int = 0) -> MTGRInputs:
    g = torch.Generator().manual_seed(seed)
    return MTGRInputs(
        torch.randn(1, 3, generator=g), torch.randint(1, cfg.n_items + 1, (1, history), generator=g),
        torch.arange(history, 0, -1)[None], torch.sort(torch.rand(1, history, generator=g) * 3e7, descending=True).values,
        torch.randint(1, cfg.n_items + 1, (1, k), generator=g), torch.randn(1, k, cfg.n_cross, generator=g))


def model_speed(model: MTGR, history: int, k: int, repeats: int, ref_repeats: int) -> dict:
    inp = random_inputs(model.cfg, history, k)
    with torch.no_grad():
        one = _timings(lambda: model(inp), repeats)
        batched = _timings(lambda: model.forward_reference(inp, batched=True), ref_repeats, warmup=1)
        loop = _timings(lambda: model.forward_reference(inp), max(ref_repeats // 2, 2), warmup=1)
        fast, _ = model(inp)
        ref, _ = model.forward_reference(inp, batched=True)
    flops = forward_flops(model.cfg, 1 + history, k)
    return {
        "k": k, "history": history,
        "one_pass_ms_p50": float(np.median(one)), "one_pass_ms_p99": float(np.percentile(one, 99)),
        "per_candidate_batched_ms_p50": float(np.median(batched)), "per_candidate_loop_ms_p50": float(np.median(loop)),
        "speedup_vs_batched": float(np.median(batched) / np.median(one)),
        "speedup_vs_loop": float(np.median(loop) / np.median(one)),
        "max_abs_diff": float((fast - ref).abs().max()),
        "gflop": flops / 1e9, "gflops_achieved": flops / (np.median(one) / 1e3) / 1e9,
    }


def pad_pool(pool, k: int, n_items: int, seen: np.ndarray, rng: np.random.Generator):
    """The pool grown to k candidates with random unseen items that no channel found."""
    from pipeline.core.types import CandidateSet

    extra_n = k - len(pool)
    if extra_n <= 0:
        return pool.select(np.arange(k))
    free = np.setdiff1d(np.arange(n_items), np.concatenate([pool.items, seen]))
    extra = rng.choice(free, size=extra_n, replace=False)
    c = len(pool.channels)
    return CandidateSet(np.concatenate([pool.items, extra]), np.concatenate([pool.scores, np.zeros(extra_n, np.float32)]),
                        pool.channels, np.concatenate([pool.found, np.zeros((extra_n, c), bool)]),
                        np.concatenate([pool.channel_rank, np.full((extra_n, c), -1, np.int32)]),
                        np.concatenate([pool.channel_score, np.full((extra_n, c), np.nan, np.float32)]))


def ranker_latency(run_dir: str, repeats: int, k: int) -> dict:
    """p50/p99 of `ranker.score` (cross features + model) for one request at a time: the run's
    real test pools, grown to exactly k candidates with random unseen items."""
    from pipeline.evaluation.harness import build_eval_set
    from pipeline.workflow import load_run

    run = load_run(run_dir)
    ev = build_eval_set(run.split, run.stage, run.config.data.max_history)
    ranker = run.cascade.ranker
    rng = np.random.default_rng(0)
    rows = rng.choice(len(ev), size=repeats, replace=False)
    res = run.cascade.run(ev.batch.take(rows), 10)
    lat, sizes = [], []
    for i, r in enumerate(rows):
        one = ev.batch.take(np.array([r]))
        sizes.append(len(res.pools[i]))
        pool = pad_pool(res.pools[i], k, run.dataset.n_items, one.history_of(0), rng)
        for _ in range(2 if i == 0 else 0):
            ranker.score(one, [pool])
        t = time.perf_counter()
        ranker.score(one, [pool])
        lat.append((time.perf_counter() - t) * 1e3)
    lat = np.array(lat)
    return {"ranker_score_ms_p50": float(np.median(lat)), "ranker_score_ms_p99": float(np.percentile(lat, 99)),
            "candidates": k, "real_pool_size_mean": float(np.mean(sizes)), "requests": int(repeats),
            "run": str(run_dir)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--run", default=None, help="a run folder with a trained MTGR ranker (latency incl. features)")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args(argv)
    command = "python -m bench.mtgr_speed " + " ".join(argv if argv is not None else sys.argv[1:])
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    torch.manual_seed(0)
    cfg = MTGRConfig(n_items=12101, attr_sizes=(7, 2078, 246), n_price_buckets=11, n_cross=46, dropout=0.0)
    model = MTGR(cfg, torch.zeros(cfg.n_items, 3, dtype=torch.long), torch.zeros(cfg.n_items, dtype=torch.long)).eval()
    peak = matmul_peak()
    rows = [model_speed(model, 50, k, args.repeats if k <= 500 else 50, 10) for k in (100, 500)]
    out = {"threads": args.threads, "matmul_peak_gflops": peak, "config": cfg.__dict__, "by_k": rows}
    main500 = rows[-1]
    out["gflops_vs_peak"] = main500["gflops_achieved"] / peak
    if args.run:
        out["ranker"] = ranker_latency(args.run, args.repeats, 500)
    out["load_average"] = {"start": load_start, "end": os.getloadavg()[0], "cores": os.cpu_count()}
    out["command"] = command
    atomic_write_json(RESULTS / "mtgr_speed.json", out)
    atomic_write_text(RESULTS / "mtgr_speed.md", _markdown(out))
    print(_markdown(out))
    if args.record:
        record("speed", "mtgr_one_pass_speedup_500", {"value": round(main500["speedup_vs_batched"], 1), "unit": "x",
               "vs": "per-candidate passes stacked in one batch", "loop_speedup": round(main500["speedup_vs_loop"], 1),
               "command": command})
        record("speed", "mtgr_one_pass_ms_p50_500", {"value": round(main500["one_pass_ms_p50"], 2), "unit": "ms",
               "p99": round(main500["one_pass_ms_p99"], 2), "command": command})
        record("speed", "mtgr_gflops_500", {"value": round(main500["gflops_achieved"], 1), "unit": "GFLOP/s",
               "matmul_peak": round(peak, 1), "command": command})
        if "ranker" in out:
            record("speed", "mtgr_ranker_ms_p50_500", {"value": round(out["ranker"]["ranker_score_ms_p50"], 2), "unit": "ms",
                   "p99": round(out["ranker"]["ranker_score_ms_p99"], 2), "candidates": out["ranker"]["candidates"],
                   "command": command})
    return 0


def _markdown(out: dict) -> str:
    lines = [f"# MTGR scoring speed ({out['threads']} threads; load average {out['load_average']['start']:.1f} -> "
             f"{out['load_average']['end']:.1f} on {out['load_average']['cores']} cores)", "",
             f"fp32 matmul peak (1024^3): {out['matmul_peak_gflops']:.1f} GFLOP/s", "",
             "| K | one pass p50 / p99 ms | per-candidate, batched p50 ms | per-candidate, loop p50 ms | speed-up (batched / loop) | GFLOP/s (% of peak) | max abs diff |",
             "|---|---|---|---|---|---|---|"]
    for r in out["by_k"]:
        lines.append(f"| {r['k']} | {r['one_pass_ms_p50']:.2f} / {r['one_pass_ms_p99']:.2f} | {r['per_candidate_batched_ms_p50']:.1f} | "
                     f"{r['per_candidate_loop_ms_p50']:.1f} | {r['speedup_vs_batched']:.1f}x / {r['speedup_vs_loop']:.1f}x | "
                     f"{r['gflops_achieved']:.1f} ({100 * r['gflops_achieved'] / out['matmul_peak_gflops']:.0f}%) | {r['max_abs_diff']:.1e} |")
    if "ranker" in out:
        r = out["ranker"]
        lines += ["", f"Ranker.score (cross features + model), one request at a time, {r['candidates']} candidates (real "
                      f"test pools, mean {r['real_pool_size_mean']:.0f}, grown with random unseen items): p50 "
                      f"{r['ranker_score_ms_p50']:.2f} ms, p99 {r['ranker_score_ms_p99']:.2f} ms ({r['requests']} requests; {r['run']})."]
    lines += ["", f"`{out['command']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
