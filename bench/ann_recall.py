"""ANN recall and speed of the two-tower item index against exact (Flat) search, in one run.

    python -m bench.ann_recall --run runs/amazon-beauty-two-tower [--channel two_tower] [--k 200]

Takes the trained item vectors of a run's two-tower channel and, as queries, the user vectors of
every evaluated request of the run's stage (the real query distribution). Builds Flat (exact), IVF
(several nlist/nprobe) and HNSW (several efSearch) inner-product indexes over the same vectors,
and reports for each: recall@k of its top k against Flat's top k, the search time of all queries
(best of `--repeats`, same thread count) and the speed-up over Flat. Writes
bench/results/ann_recall.json and .md, and records the fastest setting with recall >= 0.95 in
bench/results/summary.json (speed section).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import faiss
import numpy as np

from bench.summary import RESULTS, record
from channels.two_tower.index import IndexConfig, ItemIndex
from pipeline.core.artifacts import atomic_write_json, atomic_write_text
from pipeline.evaluation.harness import build_eval_set
from pipeline.workflow import load_run

IVF_GRID = [(32, 8), (32, 16), (64, 16), (64, 24), (64, 32), (128, 32), (128, 48)]
HNSW_GRID = [(32, 400), (32, 800), (48, 600), (48, 1000)]
SCALED_IVF = [(256, 16), (256, 32), (512, 32), (512, 64)]
SCALED_HNSW = [(32, 400), (32, 800)]
TARGET = 0.95


def timed_search(index: ItemIndex, queries: np.ndarray, k: int, repeats: int) -> tuple[np.ndarray, float]:
    best, items = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        _, items = index.search(queries, k)
        best = min(best, time.perf_counter() - t)
    return items, best


def recall_vs(exact: np.ndarray, approx: np.ndarray) -> float:
    """Mean over queries of |approx top k ∩ exact top k| / k."""
    hits = [len(np.intersect1d(a[a >= 0], e[e >= 0], assume_unique=True)) / max((e >= 0).sum(), 1)
            for a, e in zip(approx, exact)]
    return float(np.mean(hits))


def measure(vectors: np.ndarray, queries: np.ndarray, k: int, repeats: int, ivf_grid=None, hnsw_grid=None) -> list[dict]:
    flat = ItemIndex.build(vectors, IndexConfig(kind="flat", use_gpu=False))
    exact, flat_s = timed_search(flat, queries, k, repeats)
    rows = [{"index": "flat", "params": {}, "recall": 1.0, "search_s": flat_s, "speedup": 1.0, "build_s": 0.0}]
    configs = [IndexConfig(kind="ivf", nlist=n, nprobe=p, use_gpu=False) for n, p in (ivf_grid or IVF_GRID)]
    configs += [IndexConfig(kind="hnsw", hnsw_m=m, ef_search=ef, use_gpu=False) for m, ef in (hnsw_grid or HNSW_GRID)]
    for cfg in configs:
        t = time.perf_counter()
        index = ItemIndex.build(vectors, cfg)
        build_s = time.perf_counter() - t
        approx, secs = timed_search(index, queries, k, repeats)
        params = ({"nlist": cfg.nlist, "nprobe": cfg.nprobe} if cfg.kind == "ivf"
                  else {"M": cfg.hnsw_m, "efSearch": cfg.ef_search})
        rows.append({"index": cfg.kind, "params": params, "recall": recall_vs(exact, approx), "search_s": secs,
                     "speedup": flat_s / secs, "build_s": build_s})
        r = rows[-1]
        print(f"{cfg.kind:5s} {params}: recall@{k} {r['recall']:.4f} {secs * 1e3:.1f} ms x{r['speedup']:.2f}", flush=True)
    return rows


def _table(rows: list[dict], best: dict | None) -> list[str]:
    lines = ["| index | params | recall@k vs Flat | search (all queries) | speed-up vs Flat | build |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "-"
        lines.append(f"| {r['index']} | {params} | {r['recall']:.4f} | {r['search_s'] * 1e3:.1f} ms | "
                     f"{r['speedup']:.2f}x | {r['build_s']:.2f} s |")
    return lines + ["", f"Fastest with recall >= {TARGET}: " + (f"{best['index']} {best['params']} (recall "
                    f"{best['recall']:.4f}, {best['speedup']:.2f}x)" if best else "none"), ""]


def markdown(result: dict) -> str:
    lines = [f"# ANN recall@{result['k']} vs exact search ({result['dataset']}, {result['n_items']} items, "
             f"d={result['dim']}, {result['n_queries']} real user queries, {result['threads']} threads)", ""]
    lines += _table(result["rows"], result.get("best"))
    sc = result.get("scaled")
    if sc:
        lines += [f"## Scaled catalog: {sc['n_items']} items ({sc['scale']}x, jittered copies of the real vectors), "
                  f"{sc['n_queries']} real queries", ""]
        lines += _table(sc["rows"], sc["best"])
    lines += [f"Command: `{result['command']}`", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a run folder with a trained two-tower channel")
    p.add_argument("--channel", default="two_tower")
    p.add_argument("--k", type=int, default=200)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="faiss threads (1: least noise on a shared machine)")
    p.add_argument("--no-record", action="store_true", help="do not write bench/results/summary.json")
    p.add_argument("--out", default=str(RESULTS / "ann_recall"))
    p.add_argument("--scale", type=int, default=20,
                   help="also measure on a catalog scaled this many times (jittered copies of the real item "
                        "vectors; 2,000 real queries), where an ANN index has room to pay off (0: skip)")
    args = p.parse_args()
    faiss.omp_set_num_threads(args.threads)
    run = load_run(args.run)
    channel = run.channels[args.channel]
    vectors = channel.item_vectors(np.arange(len(channel.item_raw_)))
    evalset = build_eval_set(run.split, run.stage, run.config.data.max_history)
    queries = np.concatenate([channel.user_vectors(evalset.batch.take(slice(lo, lo + 2048)))
                              for lo in range(0, len(evalset), 2048)])
    rows = measure(vectors, queries, args.k, args.repeats)
    ok = [r for r in rows[1:] if r["recall"] >= TARGET]
    best = max(ok, key=lambda r: r["speedup"]) if ok else None
    command = f"python -m bench.ann_recall --run {args.run} --k {args.k} --scale {args.scale}"
    result = {"dataset": run.dataset.name, "k": args.k, "n_items": int(vectors.shape[0]), "dim": int(vectors.shape[1]),
              "n_queries": int(queries.shape[0]), "threads": args.threads, "rows": rows, "best": best,
              "command": command}
    if args.scale > 1:
        rng = np.random.default_rng(0)
        noise = 0.1 * vectors.std(axis=0, keepdims=True)
        big = np.concatenate([vectors] + [vectors + rng.normal(size=vectors.shape).astype(np.float32) * noise
                                          for _ in range(args.scale - 1)]).astype(np.float32)
        q = queries[rng.choice(len(queries), size=min(2000, len(queries)), replace=False)]
        print(f"scaled catalog: {len(big)} items, {len(q)} queries", flush=True)
        srows = measure(big, q, args.k, args.repeats, ivf_grid=SCALED_IVF, hnsw_grid=SCALED_HNSW)
        sok = [r for r in srows[1:] if r["recall"] >= TARGET]
        result["scaled"] = {"n_items": int(len(big)), "n_queries": int(len(q)), "scale": args.scale, "rows": srows,
                            "best": max(sok, key=lambda r: r["speedup"]) if sok else None}
    atomic_write_json(Path(args.out + ".json"), result)
    atomic_write_text(Path(args.out + ".md"), markdown(result))
    if best is not None and not args.no_record:
        record("speed", f"two_tower_ann_speedup_{run.dataset.name}", {
            "value": round(best["speedup"], 2), "unit": "x", "recall_at_k": round(best["recall"], 4), "k": args.k,
            "index": best["index"], "params": best["params"], "command": command})
    sbest = result.get("scaled", {}).get("best")
    if sbest is not None and not args.no_record:
        record("speed", f"two_tower_ann_speedup_scaled_x{args.scale}", {
            "value": round(sbest["speedup"], 2), "unit": "x", "recall_at_k": round(sbest["recall"], 4), "k": args.k,
            "index": sbest["index"], "params": sbest["params"], "n_items": result["scaled"]["n_items"],
            "command": command})
    print(json.dumps({"best": best, "scaled_best": sbest}, indent=2))


if __name__ == "__main__":
    main()
