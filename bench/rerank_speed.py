"""Speed of the rule-and-diversity re-ranker: one request, a 500-item pool cut to 10, in-process.

Seeded random catalog (item table + float32 vectors) and pools; every rule on (filters, boosts,
freshness, two pins, brand dedup, a category window cap, MMR, coverage), plus lighter variants and
the pass-through baseline for scale. Writes bench/results/rerank_speed.{json,md}.

    python bench/rerank_speed.py [--reps 3000] [--items 20000] [--pool 500] [--k 10] [--dim 64]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.core.types import CandidateSet, RequestBatch  # noqa: E402
from rerank.passthrough import PassThroughReRanker  # noqa: E402
from rerank.reranker import RuleDiversityReRanker  # noqa: E402

DAY = 86400
NOW = 1000 * DAY
CHANNELS = ("popularity", "item2item", "two_tower")
FULL: dict[str, Any] = {
    "filters": {"seen": True, "blocked": [1, 2, 3]},
    "boosts": [{"attribute": "category", "values": ["c1"], "factor": 1.2},
               {"attribute": "price", "min": 0, "max": 10, "add": -0.05}],
    "freshness": {"max_age_days": 30, "bonus": 0.1},
    "pins": [{"slot": 0, "item": 7}, {"slot": 4, "newest": {"attribute": "category", "values": ["c2"]}}],
    "dedup": {"attribute": "brand"},
    "caps": [{"attribute": "category", "max_items": 2, "window": 5}],
    "lambda": 0.7,
    "coverage": {"attribute": "category", "bonus": 0.05},
}
VARIANTS: dict[str, dict[str, Any]] = {
    "full (MMR + caps + pins + dedup + boosts)": FULL,
    "rules only (lambda=1, caps + pins)": {**FULL, "lambda": 1.0, "coverage": None},
    "MMR only": {"lambda": 0.7},
}


def catalog(rng: np.random.Generator, n: int, dim: int) -> tuple[pd.DataFrame, np.ndarray]:
    items = pd.DataFrame({
        "item_id": np.arange(n, dtype=np.int64),
        "category": [f"c{i}" for i in rng.integers(0, 30, n)],
        "brand": [f"b{i}" for i in rng.integers(0, 500, n)],
        "price": rng.uniform(1, 100, n),
        "created_at": rng.integers(0, NOW, n),
    })
    return items, rng.normal(size=(n, dim)).astype(np.float32)


def requests(rng: np.random.Generator, n_items: int, pool: int, count: int) -> list[tuple[RequestBatch, CandidateSet]]:
    out = []
    for u in range(count):
        ids = rng.choice(n_items, pool, replace=False).astype(np.int64)
        found = rng.random((pool, len(CHANNELS))) < 0.5
        cand = CandidateSet(
            ids, rng.normal(size=pool).astype(np.float32), CHANNELS, found,
            np.where(found, rng.integers(0, 200, found.shape), -1).astype(np.int32),
            np.where(found, rng.random(found.shape), np.nan).astype(np.float32),
        )
        history = rng.choice(n_items, 50, replace=False)
        out.append((RequestBatch.from_sequences([u], [history], now=[NOW]), cand))
    return out


def timed(fn: Callable[[RequestBatch, list[CandidateSet], int], Any], reqs: list, reps: int, k: int) -> dict[str, float]:
    for batch, pool in reqs[:50]:  # warm-up
        fn(batch, [pool], k)
    ms, cpu = np.empty(reps), np.empty(reps)
    for r in range(reps):
        batch, pool = reqs[r % len(reqs)]
        c, t = time.thread_time(), time.perf_counter()
        fn(batch, [pool], k)
        ms[r], cpu[r] = (time.perf_counter() - t) * 1e3, (time.thread_time() - c) * 1e3
    return {"median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()), "min_ms": float(ms.min()),
            "cpu_median_ms": float(np.median(cpu))}


def markdown(result: dict[str, Any]) -> str:
    s = result["setup"]
    lines = [
        "# Re-ranker speed", "",
        f"One request per call, a {s['pool']}-item pool cut to k={s['k']}; catalog {s['items']} items, "
        f"{s['dim']}-d vectors; {s['reps']} timed calls over {s['distinct_pools']} seeded random pools (seed {s['seed']}).",
        f"Machine: {s['cpus']} CPUs, load average {s['load_avg_1m']:.2f} at start (shared with other work), "
        f"Python {s['python']}, numpy {s['numpy']}.", "",
        "Wall-clock times per call; 'CPU ms' is this thread's CPU time per call (less sensitive to load).", "",
        "| variant | median ms | p90 ms | p99 ms | min ms | CPU median ms |", "|---|---|---|---|---|---|",
    ]
    for name, t in result["timings"].items():
        lines.append(f"| {name} | {t['median_ms']:.3f} | {t['p90_ms']:.3f} | {t['p99_ms']:.3f} | {t['min_ms']:.3f} "
                     f"| {t['cpu_median_ms']:.3f} |")
    lines += ["", "Full rules: " + json.dumps(FULL), ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3000)
    ap.add_argument("--items", type=int, default=20000)
    ap.add_argument("--pool", type=int, default=500)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    items, vectors = catalog(rng, args.items, args.dim)
    reqs = requests(rng, args.items, args.pool, 200)
    timings = {name: timed(RuleDiversityReRanker(**params).bind(items, vectors).rerank, reqs, args.reps, args.k)
               for name, params in VARIANTS.items()}
    timings["pass-through baseline"] = timed(PassThroughReRanker().rerank, reqs, args.reps, args.k)
    result = {
        "setup": {"pool": args.pool, "k": args.k, "items": args.items, "dim": args.dim, "reps": args.reps,
                  "distinct_pools": len(reqs), "seed": args.seed, "cpus": os.cpu_count(),
                  "load_avg_1m": os.getloadavg()[0], "python": platform.python_version(), "numpy": np.__version__},
        "rules": FULL,
        "timings": timings,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rerank_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "rerank_speed.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
