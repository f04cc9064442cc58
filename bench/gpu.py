"""The GPU path in under 5 minutes: the torch models and faiss on CUDA vs the CPU, one machine.

    python -m bench.gpu [--items 20000] [--users 3000] [--record]

Where torch sees no GPU it says so and exits 0 (nothing is recorded: the project never requires
one). Else it trains the cascade of bench.catalog_growth (two-tower on HNSW, COBRA, MTGR ranker)
on one seeded synthetic catalog twice, `train.device: cpu` then `cuda`, 2 epochs per torch model,
and reports per model the fit seconds, the cascade's per-request p50/p99 (batch of one) and its
batched users per second (batch 256), with the validation N@10 of each device side by side (the
float paths and the RNG streams differ, so the numbers are close, not equal). With faiss-gpu
installed it also times an exact (Flat) search of the two-tower's item vectors on the GPU vs the
CPU. Writes bench/results/gpu.{json,md}; records speed:gpu.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch

from bench.catalog_growth import cascade_config, percentiles, sample_dataset
from bench.summary import RESULTS, record
from pipeline.core.artifacts import atomic_write_json, atomic_write_text


def one_device(name: str, dataset, n_items: int, requests: int) -> dict:
    """Train and time the cascade with every torch model on `name`."""
    from pipeline.config import parse_config
    from pipeline.evaluation.harness import build_eval_set
    from pipeline.workflow import load_run, train

    raw = cascade_config(n_items, tempfile.mkdtemp(prefix=f"gpu-{name}-"))
    raw["train"] = {"device": name}
    for stage in raw["channels"] + [raw["ranker"]]:
        stage["params"]["num_threads"] = os.cpu_count()  # the CPU arm gets every core, not the growth bench's one
    cfg = parse_config(raw)
    t = time.perf_counter()
    run_dir = train(cfg, dataset=dataset, run_dir=Path(raw["run"]["root"]) / "run")
    out = {"device": name, "train_s": round(time.perf_counter() - t, 1)}
    run = load_run(run_dir)
    out["fit_s"] = {k: round(v, 1) for k, v in run.manifest["seconds"].items() if k.startswith("fit.")}
    out["valid_N@10"] = {n: round(float(run.channels[n].fit_report_["best"].get("N@10",
                                        run.channels[n].fit_report_["best"].get("valid_N@10", float("nan")))), 4)
                         for n in ("two_tower", "cobra")}
    evalset = build_eval_set(run.split, "test", cfg.data.max_history)
    rows = np.random.default_rng(0).choice(len(evalset), size=min(requests, len(evalset)), replace=False)
    ms = []
    for r in rows:
        batch = evalset.batch.take(np.array([r]))
        t = time.perf_counter()
        run.cascade.run(batch, 10)
        ms.append(1e3 * (time.perf_counter() - t))
    out["cascade_latency"] = percentiles(ms[3:])
    big = evalset.batch.take(np.arange(min(256, len(evalset))))
    run.cascade.run(big, 10)  # warm
    t = time.perf_counter()
    run.cascade.run(big, 10)
    out["cascade_users_per_s"] = round(len(big) / (time.perf_counter() - t), 1)
    out["item_vectors"] = np.ascontiguousarray(run.channels["two_tower"].item_vectors(np.arange(n_items)), np.float32)
    return out


def faiss_gpu(vectors: np.ndarray) -> dict | None:
    """Exact search of 1024 queries over the item vectors on the GPU vs the CPU (None without faiss-gpu)."""
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        return None
    queries = vectors[np.random.default_rng(0).choice(len(vectors), size=1024)]
    cpu = faiss.IndexFlatIP(vectors.shape[1])
    cpu.add(vectors)
    gpu = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, cpu)
    times = {}
    for name, index in (("cpu", cpu), ("gpu", gpu)):
        index.search(queries[:8], 100)
        t = time.perf_counter()
        _, found = index.search(queries, 100)
        times[name] = (time.perf_counter() - t, found)
    same = float(np.mean([len(set(a) & set(b)) / 100 for a, b in zip(times["cpu"][1], times["gpu"][1])]))
    return {"queries": 1024, "cpu_ms_per_query": round(1e3 * times["cpu"][0] / 1024, 4),
            "gpu_ms_per_query": round(1e3 * times["gpu"][0] / 1024, 4), "top100_agreement": round(same, 4)}


def markdown(res: dict) -> str:
    lines = ["# The GPU path", "", f"`{res['command']}` on {res['gpu']} ({res['cpus']} CPU cores)", "",
             "| device | train s | two-tower fit s | COBRA fit s | ranker fit s | two-tower N@10 | COBRA N@10 | "
             "cascade p50 ms | p99 ms | users/s (batch 256) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for a in res["arms"]:
        f, q = a["fit_s"], a["valid_N@10"]
        lines.append(f"| {a['device']} | {a['train_s']} | {f.get('fit.two_tower')} | {f.get('fit.cobra')} | "
                     f"{f.get('fit.ranker')} | {q['two_tower']} | {q['cobra']} | {a['cascade_latency']['p50_ms']} | "
                     f"{a['cascade_latency']['p99_ms']} | {a['cascade_users_per_s']} |")
    if res.get("faiss"):
        lines += ["", f"faiss Flat, 1024 queries: {res['faiss']}"]
    return "\n".join(lines + [""])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=20000)
    ap.add_argument("--users", type=int, default=3000)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        print(f"bench.gpu: torch {torch.__version__} ({build}) sees no GPU; nothing to measure, nothing recorded")
        return 0
    from pipeline.data import synthesize_catalog

    command = "python -m bench.gpu " + " ".join(argv if argv is not None else sys.argv[1:])
    dataset = sample_dataset(synthesize_catalog(args.items, seed=0), args.users, 0)
    arms = [one_device(name, dataset, args.items, args.requests) for name in ("cpu", "cuda")]
    vectors = arms[1].pop("item_vectors")
    arms[0].pop("item_vectors")
    res = {"command": command, "gpu": torch.cuda.get_device_name(0), "cpus": os.cpu_count(), "arms": arms,
           "faiss": faiss_gpu(vectors)}
    atomic_write_json(RESULTS / "gpu.json", res)
    atomic_write_text(RESULTS / "gpu.md", markdown(res))
    print(markdown(res))
    if args.record:
        cpu, gpu = arms
        record("speed", "gpu", {"gpu": res["gpu"], "train_s": {"cpu": cpu["train_s"], "cuda": gpu["train_s"]},
                                "fit_s": {"cpu": cpu["fit_s"], "cuda": gpu["fit_s"]},
                                "cascade_p99_ms": {"cpu": cpu["cascade_latency"]["p99_ms"],
                                                   "cuda": gpu["cascade_latency"]["p99_ms"]},
                                "faiss": res["faiss"], "command": command})
    return 0


if __name__ == "__main__":
    sys.exit(main())
