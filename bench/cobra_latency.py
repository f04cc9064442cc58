"""Beam-search latency of the COBRA channel per request, in process (SPEC section 9).

    nice -n 5 python -m bench.cobra_latency [--run runs/cobra_cobra-beauty] [--requests 300]
    python -m bench.cobra_latency --run runs/cobra_cobra_b_sampled-beauty --shuffle-ties 1 --quality
    python -m bench.cobra_latency --run RUN --shuffle-ties 1 --quality --set catalog_query=history \
        --compare catalog_query=beams --compare catalog_query=beams,search_beams=2

Loads a channel saved by bench/cobra_beauty.py and answers single requests (batch size 1, k=10)
of a seeded sample of Amazon Beauty test users, at beam sizes 10, 20 and 50, after a warm-up;
reports p50 / p90 / p99 / mean milliseconds, plus the per-request cost when the same requests are
answered in one batch; with --quality, validation R@10 / N@10 at each beam size. Writes bench/results/cobra_latency.{json,md} and records the p50 / p99 in
bench/results/summary.json under "speed".
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from bench.summary import RESULTS, record
from channels.cobra.channel import CobraChannel
from pipeline.core import metrics as M
from pipeline.data import leave_one_out, load_dataset, shuffle_ties
from pipeline.evaluation.harness import build_eval_set

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HYBRIDREC_DATA", ROOT.parent / "shared" / "data"))
BEAMS = (10, 20, 50)


def measure(channel: CobraChannel, batch, beam: int, n_warm: int = 20) -> dict:
    """Single-request latency at one beam size (and the channel's other inference settings)."""
    for i in range(min(n_warm, len(batch))):
        channel.retrieve(batch.take(slice(i, i + 1)), 10, beam_size=beam)
    times = []
    for i in range(len(batch)):
        one = batch.take(slice(i, i + 1))
        t = time.perf_counter()
        channel.retrieve(one, 10, beam_size=beam)
        times.append(1e3 * (time.perf_counter() - t))
    t = time.perf_counter()
    channel.retrieve(batch, 10, beam_size=beam)
    batched = 1e3 * (time.perf_counter() - t) / len(batch)
    ms = np.array(times)
    return {"beam_size": beam, "search_beams": channel.search_beams, "requests": len(ms), "p50_ms": float(np.percentile(ms, 50)),
            "p90_ms": float(np.percentile(ms, 90)), "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()),
            "batched_ms_per_request": batched}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default=str(ROOT / "runs" / "cobra_cobra-beauty"))
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shuffle-ties", type=int, default=None, metavar="SEED",
                    help="the tie order the channel was trained under (protocol B); requests come from that split")
    ap.add_argument("--quality", action="store_true",
                    help="also validation R@10 / N@10 (all validation users) at every beam size")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="an inference setting of the loaded channel (e.g. search_beams=2); recorded")
    ap.add_argument("--compare", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                    help="other inference settings also measured at beam 20 (e.g. catalog_query=beams,search_beams=2); "
                         "table and JSON only, not recorded in the summary")
    args = ap.parse_args(argv)
    command = "nice -n 5 python -m bench.cobra_latency " + " ".join(argv if argv is not None else sys.argv[1:])
    torch.set_num_threads(args.threads)
    channel = CobraChannel.load(Path(args.run))
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            channel.configure(**{key: yaml.safe_load(value)})
        except ValueError as err:
            raise SystemExit(f"--set {item}: {err}") from None
    ds = load_dataset("amazon", DATA / "amazon-beauty-2014-5core")
    if args.shuffle_ties is not None:
        ds = shuffle_ties(ds, args.shuffle_ties)
    split = leave_one_out(ds.interactions)
    evalset = build_eval_set(split, "test", 50, max_users=args.requests, seed=0)
    valid = build_eval_set(split, "valid", 50) if args.quality else None
    def one_row(beam: int, setting: str = "") -> dict:
        res = measure(channel, evalset.batch, beam) | {"catalog_query": channel.catalog_query, "setting": setting}
        if valid is not None:
            topk = np.concatenate([channel.retrieve(valid.batch.take(slice(lo, lo + 1024)), 10, beam_size=beam).items
                                   for lo in range(0, len(valid), 1024)])
            q = M.summarize(M.target_ranks(topk, valid.targets), (10,))
            res |= {"valid_R@10": q["R@10"], "valid_N@10": q["N@10"]}
        print(f"beam {beam} {setting}: p50 {res['p50_ms']:.1f} ms, p99 {res['p99_ms']:.1f} ms, "
              f"batched {res['batched_ms_per_request']:.2f} ms/request", flush=True)
        return res

    rows = [one_row(beam) for beam in BEAMS]
    extra = []
    for compare in args.compare:
        pairs = [item.partition("=")[::2] for item in compare.split(",")]
        before = channel.config
        channel.configure(**{key: yaml.safe_load(value) for key, value in pairs})
        extra.append(one_row(20, compare))
        channel.config = before
    meta = {"command": command, "run": args.run, "mode": channel.mode, "catalog_neighbors": channel.catalog_neighbors,
            "dense_levels": channel.dense_levels, "dense_condition": channel.dense_condition,
            "search_beams": channel.search_beams, "catalog_query": channel.catalog_query, "settings": args.set,
            "compared": extra,
            "torch_threads": args.threads, "k": 10, "machine": "2-core CPU shared with other jobs (see load)",
            "load_average": os.getloadavg(), "results": rows}
    (RESULTS / "cobra_latency.json").write_text(json.dumps(meta, indent=1))
    lines = [f"COBRA ({channel.mode}) beam-search latency per request, in process, k=10, "
             f"catalog_neighbors={channel.catalog_neighbors}, {args.threads} torch thread(s); load average "
             f"{meta['load_average'][0]:.1f} on 2 cores.", "",
             "| beam | settings | p50 ms | p90 ms | p99 ms | mean ms | batched ms/request | valid R@10 | valid N@10 |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['beam_size']} | {r['setting'] or 'shipped (' + ', '.join(args.set or ['as saved']) + ')'} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['p99_ms']:.1f} | {r['mean_ms']:.1f} | "
              f"{r['batched_ms_per_request']:.2f} | {r.get('valid_R@10', float('nan')):.4f} | "
              f"{r.get('valid_N@10', float('nan')):.4f} |" for r in rows + extra]
    lines += ["", f"`{command}`"]
    (RESULTS / "cobra_latency.md").write_text("\n".join(lines) + "\n")
    for r in rows:
        for q in ("p50", "p99"):
            record("speed", f"cobra_beam{r['beam_size']}_{q}_ms", {"value": round(r[f"{q}_ms"], 2), "unit": "ms",
                                                                      "command": command})
    return 0


if __name__ == "__main__":
    sys.exit(main())
