"""How cost grows with the catalog: 10k, 100k and 1M items (SPEC section 10).

    python -m bench.catalog_growth [--sizes 10000,100000,1000000] [--sample-users 5000] [--record]

Each size runs in its own process (so its peak memory is its own), on a seeded catalog from
pipeline.data.synthesize_catalog: users and interactions scale with the items (10 events per item,
8 per user on average: 1M items = 1.25M users, 10M events). Per size:
- fit time and memory of the classic channels (popularity, item-to-item) on ALL users;
- the whole cascade (popularity, item-to-item, two-tower on HNSW, COBRA, MTGR ranker, rule
  re-ranker) trained by `workflow.train` on a sample of `--sample-users` users over the WHOLE
  catalog (every item featurised, given a semantic ID and indexed), 2 epochs per torch model:
  the cost of serving does not depend on how long the models trained. COBRA uses sampled
  negatives here (2048 per batch, as the two-tower): its default 'full' negatives encode the whole
  catalog at every step, the one training cost that grows with the items per step (at 100k items
  it already turned the ranker fold's 2 COBRA epochs into many minutes);
- torch training time per epoch on all users: the measured mean epoch time on the sample times
  (windows of all users / windows of the sample) (one epoch is linear in the windows);
- per-request p50/p99 (batch of one, `--requests` test users of the sample) of every channel and
  of the cascade (retrieval, pool, ranker, re-ranker);
- faiss Flat vs IVF vs HNSW on the two-tower's item vectors with its user vectors as queries:
  recall@100 against Flat and the search time per query (one thread); build times and sizes;
- COBRA: the trie's size and the beam search's share of the COBRA channel's latency.
The growth factor of a figure per 10x items is (value at 10N / value at N), per step and as the
geometric mean over the steps. Writes bench/results/catalog_growth.{json,md}; records
speed:catalog_growth, speed:cascade_p99_growth_per_10x and speed:peak_memory_gb_1m.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from bench.ann_recall import recall_vs
from bench.summary import RESULTS, record
from pipeline.core.artifacts import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
K = 100


def cascade_config(n_items: int, root: str) -> dict:
    return {
        "data": {"source": "synthetic", "split": "leave_one_out", "max_history": 50},
        "channels": [
            {"name": "popularity", "kind": "popularity", "quota": 100, "params": {"half_life_days": 60}},
            {"name": "item2item", "kind": "item2item", "quota": 200, "params": {"window": 3, "history_len": 3}},
            {"name": "two_tower", "kind": "two_tower", "quota": 100,
             "params": {"d_model": 64, "n_layers": 2, "n_heads": 2, "d_ff": 256, "max_len": 50, "loss": "sampled",
                        "n_negatives": 2048, "batch_size": 256, "max_epochs": 2, "patience": 2, "lr": 0.004,
                        "index": "hnsw", "hnsw_m": 32, "ef_search": 200, "num_threads": 1, "seed": 0,
                        "progress": False}},
            {"name": "cobra", "kind": "cobra", "quota": 100,
             "params": {"levels": [256, 256, 256], "svd_dim": 64, "collab_dim": 32, "d_model": 64, "n_heads": 2,
                        "d_ff": 256, "dense_dim": 64, "max_len": 50, "max_epochs": 2, "patience": 2, "lr": 0.004,
                        "id_embedding": True, "negatives": "sampled", "n_negatives": 2048, "batch_size": 256,
                        "valid_users": 500, "beam_size": 20, "num_threads": 1, "seed": 0,
                        "progress": False}},
        ],
        "pool": {"budget": 300, "exclude_seen": True},
        "ranker": {"kind": "mtgr", "params": {"train_folds": 1, "holdout": 0.1, "d_model": 48, "max_epochs": 2,
                                              "max_train_candidates": 128, "num_threads": 1}},
        "rerank": {"kind": "rules", "params": {"caps": [{"attribute": "category", "max_items": 6, "window": 10}],
                                               "lambda": 0.95}},
        "eval": {"stage": "test", "batch_size": 32},  # the ranker's pool pass holds batch x items score arrays
        "run": {"root": root, "name": f"growth-{n_items}", "seed": 0},
    }


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kilobytes on Linux


def percentiles(ms: list[float]) -> dict:
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def sample_dataset(ds, n_users: int, seed: int):
    """The interactions of `n_users` random users over the whole catalog (every item kept)."""
    from pipeline.data.dataset import assemble

    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(ds.n_users, size=min(n_users, ds.n_users), replace=False))
    inter = ds.interactions[np.isin(ds.interactions["user_id"].to_numpy(), keep)]
    log = pd.DataFrame({"user": ds.user_ids[inter["user_id"].to_numpy()], "item": ds.item_ids[inter["item_id"].to_numpy()],
                        "timestamp": inter["timestamp"].to_numpy()})
    meta = ds.items.drop(columns="item_id").assign(item=ds.item_ids[ds.items["item_id"].to_numpy(np.int64)])
    return assemble(f"{ds.name}-sample", log, meta, has_time=True, has_text=True, keep_catalog=True)


def faiss_rows(vectors: np.ndarray, queries: np.ndarray) -> list[dict]:
    """Flat, IVF (nlist ~ 4 sqrt(N)) and HNSW (M 32) built once each, searched at several settings."""
    n, d = vectors.shape
    rows = []

    def search(index, label: str, params: dict, build_s: float, size_mb: float, exact=None):
        t = time.perf_counter()
        _, found = index.search(queries, K)
        secs = time.perf_counter() - t
        rows.append({"index": label, "params": params, "recall": 1.0 if exact is None else round(recall_vs(exact, found), 4),
                     "ms_per_query": round(1e3 * secs / len(queries), 3), "build_s": round(build_s, 2),
                     "size_mb": round(size_mb, 1)})
        return found

    t = time.perf_counter()
    flat = faiss.IndexFlatIP(d)
    flat.add(vectors)
    exact = search(flat, "flat", {}, time.perf_counter() - t, vectors.nbytes / 1e6)
    nlist = int(2 ** round(math.log2(4 * math.sqrt(n))))
    t = time.perf_counter()
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    train = vectors[np.random.default_rng(0).choice(n, size=min(n, 64 * nlist), replace=False)]
    ivf.train(train)
    ivf.add(vectors)
    build = time.perf_counter() - t
    for nprobe in (8, 32, 128):
        ivf.nprobe = nprobe
        search(ivf, "ivf", {"nlist": nlist, "nprobe": nprobe}, build, vectors.nbytes / 1e6, exact)
    t = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.add(vectors)
    build = time.perf_counter() - t
    size = faiss.serialize_index(hnsw).nbytes / 1e6
    for ef in (100, 200, 400, 800):
        hnsw.hnsw.efSearch = ef
        search(hnsw, "hnsw", {"M": 32, "efSearch": ef}, build, size, exact)
    return rows


def one_size(n_items: int, sample_users: int, n_requests: int, seed: int) -> dict:
    """Every figure for one catalog size (run in a child process)."""
    import torch

    from channels.sequence import build_windows
    from pipeline.config import ChannelConfig, parse_config
    from pipeline.data import leave_one_out, synthesize_catalog
    from pipeline.evaluation.harness import build_eval_set
    from pipeline.registry import build_channel
    from pipeline.workflow import fit_data, load_run, train

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    out: dict = {"n_items": n_items}
    t = time.perf_counter()
    ds = synthesize_catalog(n_items, seed=seed)
    out["generate_s"] = round(time.perf_counter() - t, 1)
    out |= {"users": ds.n_users, "interactions": ds.n_interactions}
    split = leave_one_out(ds.interactions)
    data = fit_data(ds, split, "test", seed)
    cfg_raw = cascade_config(n_items, tempfile.mkdtemp(prefix="growth-"))
    out["fit_all_users"] = {}
    for c in cfg_raw["channels"][:2]:
        before = rss_gb()
        t = time.perf_counter()
        build_channel(ChannelConfig(**c)).fit(data)
        out["fit_all_users"][c["name"]] = {"fit_s": round(time.perf_counter() - t, 2),
                                           "peak_rss_gain_gb": round(rss_gb() - before, 3)}
        print(f"[{n_items}] {c['name']} on all users: {out['fit_all_users'][c['name']]}", flush=True)
    windows_all = len(build_windows(data.valid_history, 50).lengths)  # what a torch model's epoch runs over
    del data
    sample = sample_dataset(ds, sample_users, seed)
    out["sample"] = {"users": sample.n_users, "interactions": sample.n_interactions, "items": sample.n_items}
    del ds, split
    cfg = parse_config(cfg_raw)
    t = time.perf_counter()
    run_dir = train(cfg, dataset=sample, run_dir=Path(cfg_raw["run"]["root"]) / "run")
    out["train_cascade_s"] = round(time.perf_counter() - t, 1)
    run = load_run(run_dir)
    manifest = run.manifest
    out["fit_sample_s"] = {k: round(v, 1) for k, v in manifest["seconds"].items()}
    windows_sample = len(build_windows(run.split.history("valid"), 50).lengths)
    out["windows"] = {"all_users": windows_all, "sample": windows_sample}
    epochs = {}
    for name in ("two_tower", "cobra"):
        rows = run.channels[name].fit_report_["epochs"]
        per = float(np.mean([r["train_seconds"] for r in rows]))
        epochs[name] = {"sample_epoch_s": round(per, 2), "all_users_epoch_s": round(per * windows_all / windows_sample, 1)}
    mtgr = (manifest["ranker"].get("report") or {}).get("history") or []
    if mtgr:
        epochs["mtgr"] = {"sample_epoch_s": round(mtgr[0]["seconds"], 2)}
    out["epoch"] = epochs
    print(f"[{n_items}] epochs: {epochs}", flush=True)
    # per-request latency, batch of one
    evalset = build_eval_set(run.split, "test", cfg.data.max_history)
    rows = np.random.default_rng(seed).choice(len(evalset), size=min(n_requests, len(evalset)), replace=False)
    quotas = {c.name: c.quota for c in cfg.enabled_channels()}
    lat = {name: [] for name in quotas} | {"cascade": []}
    for r in rows:
        batch = evalset.batch.take(np.array([r]))
        for name, ch in run.channels.items():
            t = time.perf_counter()
            ch.retrieve(batch, quotas[name])
            lat[name].append(1e3 * (time.perf_counter() - t))
        t = time.perf_counter()
        run.cascade.run(batch, 10)
        lat["cascade"].append(1e3 * (time.perf_counter() - t))
    out["latency"] = {name: percentiles(ms[3:]) for name, ms in lat.items()}  # the first calls warm caches
    print(f"[{n_items}] latency: {out['latency']}", flush=True)
    tt = run.channels["two_tower"]
    vectors = np.ascontiguousarray(tt.item_vectors(np.arange(n_items)), np.float32)
    queries = np.ascontiguousarray(tt.user_vectors(evalset.batch.take(rows)), np.float32)
    out["faiss"] = faiss_rows(vectors, queries)
    cobra = run.channels["cobra"]
    trie = cobra.trie_
    trie_bytes = sum(a.nbytes for a in vars(trie).values() if isinstance(a, np.ndarray))
    trie_bytes += sum(a.numel() * a.element_size() for lst in vars(trie).values() if isinstance(lst, (list, tuple))
                      for a in lst if isinstance(a, torch.Tensor))
    out["cobra"] = {"trie_mb": round(trie_bytes / 1e6, 2), "codes": int(len(np.unique(cobra.codes_, axis=0))),
                    "beam_size": cobra.beam_size, "p99_ms": out["latency"]["cobra"]["p99_ms"]}
    out["peak_rss_gb"] = round(rss_gb(), 2)
    return out


def growth(sizes: list[int], values: list[float]) -> dict:
    steps = [round(b / a, 2) if a else None for a, b in zip(values, values[1:])]
    ok = [s for s in steps if s]
    per10 = [s ** (1.0 / math.log10(b / a)) for s, a, b in zip(ok, sizes, sizes[1:])] if len(ok) == len(steps) else []
    return {"values": values, "steps": steps,
            "per_10x": round(float(np.exp(np.mean(np.log(per10)))), 2) if per10 else None}


def figures(results: list[dict]) -> dict:
    """Every figure per size, and its growth per 10x items."""
    sizes = [r["n_items"] for r in results]
    picks = {"cascade_p99_ms": lambda r: r["latency"]["cascade"]["p99_ms"],
             "cascade_p50_ms": lambda r: r["latency"]["cascade"]["p50_ms"],
             "peak_rss_gb": lambda r: r["peak_rss_gb"]}
    for name in results[0]["latency"]:
        if name != "cascade":
            picks[f"{name}_p99_ms"] = lambda r, n=name: r["latency"][n]["p99_ms"]
    for name in results[0]["fit_all_users"]:
        picks[f"{name}_fit_all_users_s"] = lambda r, n=name: r["fit_all_users"][n]["fit_s"]
    for name in ("two_tower", "cobra"):
        picks[f"{name}_epoch_all_users_s"] = lambda r, n=name: r["epoch"][n]["all_users_epoch_s"]
        picks[f"{name}_fit_sample_s"] = lambda r, n=name: r["fit_sample_s"][f"fit.{n}"]
    picks["hnsw_build_s"] = lambda r: next(x["build_s"] for x in r["faiss"] if x["index"] == "hnsw")
    picks["flat_ms_per_query"] = lambda r: next(x["ms_per_query"] for x in r["faiss"] if x["index"] == "flat")
    picks["hnsw200_ms_per_query"] = lambda r: next(x["ms_per_query"] for x in r["faiss"]
                                                   if x["index"] == "hnsw" and x["params"]["efSearch"] == 200)
    picks["cobra_trie_mb"] = lambda r: r["cobra"]["trie_mb"]
    return {name: growth(sizes, [fn(r) for r in results]) for name, fn in picks.items()}


def markdown(res: dict) -> str:
    sizes = [r["n_items"] for r in res["sizes"]]
    head = "| figure | " + " | ".join(f"{s:,} items" for s in sizes) + " | per 10x |"
    lines = ["# Cost growth with the catalog", "", f"`{res['command']}` ({res['cpus']} cores; {res['note']})", "",
             "| size | users | interactions | sample users | peak RSS GB |", "|---|---|---|---|---|"]
    lines += [f"| {r['n_items']:,} | {r['users']:,} | {r['interactions']:,} | {r['sample']['users']:,} | {r['peak_rss_gb']} |"
              for r in res["sizes"]]
    lines += [f"| {f['n_items']:,} | FAILED: {f['failed']} after {f['wall_s']} s ({'; '.join(f['last_step'])}) | | | |"
              for f in res.get("failed", [])]
    lines += ["", head, "|---|" + "---|" * (len(sizes) + 1)]
    lines += [f"| {name} | " + " | ".join(str(v) for v in g["values"]) + f" | {g['per_10x']} |"
              for name, g in res["growth"].items()]
    lines += ["", "## faiss on the two-tower vectors (recall@100 vs Flat, one thread)", "",
              "| items | index | params | recall | ms/query | build s | size MB |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['n_items']:,} | {x['index']} | {x['params']} | {x['recall']} | {x['ms_per_query']} | {x['build_s']} | "
              f"{x['size_mb']} |" for r in res["sizes"] for x in r["faiss"]]
    return "\n".join(lines + [""])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--sample-users", type=int, default=5000)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child process: this size only, JSON to stdout
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args(argv)
    if args.one:
        res = one_size(args.one, args.sample_users, args.requests, args.seed)
        print("RESULT " + json.dumps(res), flush=True)
        return 0
    sizes = sorted(int(s) for s in args.sizes.split(","))
    command = "python -m bench.catalog_growth " + " ".join(argv if argv is not None else sys.argv[1:])
    results, failed = [], []
    for n in sizes:
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "bench.catalog_growth", "--one", str(n), "--sample-users",
                               str(args.sample_users), "--requests", str(args.requests), "--seed", str(args.seed)],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:  # kept in the results: a size that does not fit is a figure too
            print(proc.stdout[-4000:], file=sys.stderr)
            why = "killed (SIGKILL: out of memory)" if proc.returncode == -9 else f"exit {proc.returncode}"
            last = [ln for ln in proc.stdout.splitlines() if ln.startswith(f"[{n}]")]
            failed.append({"n_items": n, "failed": why, "wall_s": round(time.perf_counter() - t, 1), "last_step": last[-1:]})
            print(f"size {n}: FAILED, {why}", flush=True)
            continue
        results.append(json.loads(lines[-1][len("RESULT "):]) | {"wall_s": round(time.perf_counter() - t, 1)})
        print(f"size {n}: done in {results[-1]['wall_s']} s, peak {results[-1]['peak_rss_gb']} GB", flush=True)
    res = {"command": command, "cpus": os.cpu_count(), "sizes": results, "failed": failed,
           "growth": figures(results) if len(results) > 1 else {},
           "note": "one torch/faiss thread per process; every server and other job stopped while it ran"}
    atomic_write_json(RESULTS / "catalog_growth.json", res)
    atomic_write_text(RESULTS / "catalog_growth.md", markdown(res))
    print(json.dumps(res["growth"], indent=1))
    if args.record and len(results) > 1:
        g = res["growth"]
        record("speed", "catalog_growth", {"sizes": [r["n_items"] for r in results],
                                           "figures": {k: v["values"] for k, v in g.items()},
                                           "per_10x": {k: v["per_10x"] for k, v in g.items()}, "command": command})
        record("speed", "cascade_p99_growth_per_10x", {"value": g["cascade_p99_ms"]["per_10x"], "goal": "< 2",
                                                       "p99_ms": g["cascade_p99_ms"]["values"], "command": command})
        big = next((r for r in results if r["n_items"] == 1_000_000), None)
        if big is not None:
            record("speed", "peak_memory_gb_1m", {"value": big["peak_rss_gb"], "goal": "fits in 24 GB with room to serve",
                                                  "command": command})
    return 0


if __name__ == "__main__":
    sys.exit(main())
