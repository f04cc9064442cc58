"""Batch inference throughput: every user of a run through its cascade, in process and on Ray Data.

    nice -n 5 python -m bench.batch_recommend --run runs/protocol-b-amazon-beauty-seed1 [--k 10] [--actors 2]

Both engines answer the same users with the same request time; the rows must be identical.
Writes bench/results/batch_recommend.{json,md}; records speed:batch_recommend_users_per_s and
speed:batch_recommend_users_per_s_ray.
"""
from __future__ import annotations

import argparse
import json
import os
import sys


from bench.summary import RESULTS, record
from pipeline.batch import recommend


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--now", type=int, default=1_500_000_000)
    args = ap.parse_args(argv)
    command = "nice -n 5 python -m bench.batch_recommend " + " ".join(argv if argv is not None else sys.argv[1:])
    local, meta_local = recommend(args.run, "all", args.k, now=args.now, batch_size=args.batch_size)
    print("in process", meta_local, flush=True)
    distributed, meta_ray = recommend(args.run, "all", args.k, now=args.now, batch_size=args.batch_size, use_ray=True,
                                      ray_actors=args.actors)
    print("ray", meta_ray, flush=True)
    same = local.drop(columns="reasons").equals(distributed.drop(columns="reasons")) and \
        local["reasons"].tolist() == distributed["reasons"].tolist()
    out = {"command": command, "run": args.run, "k": args.k, "in_process": meta_local, "ray": meta_ray,
           "identical_rows": bool(same), "cpus": os.cpu_count(),
           "note": "seconds include loading the run (in process: once; Ray: once per actor, in parallel) and, for Ray, "
                   "starting the local Ray node"}
    (RESULTS / "batch_recommend.json").write_text(json.dumps(out, indent=1))
    rows = [("in process", meta_local), (f"Ray Data, {args.actors} actors", meta_ray)]
    lines = [f"# Batch inference ({args.run}, all {meta_local['users']} users, k={args.k})", "",
             "| engine | seconds | users/s | rows |", "|---|---|---|---|"]
    lines += [f"| {name} | {m['seconds']:.1f} | {m['users_per_s']:.0f} | {m['rows']} |" for name, m in rows]
    lines += ["", f"Identical rows in both engines: {'yes' if same else 'NO'}. {out['note']}.", "", f"`{command}`"]
    (RESULTS / "batch_recommend.md").write_text("\n".join(lines) + "\n")
    record("speed", "batch_recommend_users_per_s", {"value": meta_local["users_per_s"], "run": args.run, "command": command})
    record("speed", "batch_recommend_users_per_s_ray", {"value": meta_ray["users_per_s"], "actors": args.actors,
                                                        "identical_rows": bool(same), "command": command})
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
