"""The Beauty MTGR cascade served with the shipped serving config, open loop, 60 s per rate.

    nice -n 5 python -m bench.serve_load_beauty --run runs/protocol-b-amazon-beauty-seed1 [--seconds 60]
    nice -n 5 python -m bench.serve_load_beauty --run runs/protocol-b-amazon-beauty-seed1 \
        --config configs/serving-throughput.yaml --tag _throughput

A config whose history backend is Redis gets a redis-server started here (127.0.0.1, a free port,
stopped after); with direct ingress the load goes round robin to the replicas' own ports.

Rates 20 and 40 req/s, then rising rates until p99 > 50 ms or an error: serve_max_rps_p99_50ms is
the highest rate with p99 <= 50 ms and no failed request (None when even 20 req/s misses it).
served_vs_inprocess = that rate / the in-process batched users per second of the same cascade
(bench/results/batch_recommend.json, `--inprocess-users-per-s` to give it).
Requests: the run's users (80%), anonymous histories (10%), unknown users (10%), k = 10.
Writes bench/results/serve_load_beauty.{json,md}; records speed:serve_load_beauty.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.serve_live import Redis  # noqa: E402
from bench.serve_load import SERVING, _bodies, run_phase  # noqa: E402
from bench.summary import RESULTS, record  # noqa: E402
from pipeline.quickstart import free_port  # noqa: E402
from pipeline.serving.config import load_serve_config  # noqa: E402


def main(argv=None) -> int:
    from pipeline.serving import app

    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--config", default=str(SERVING), help="serving config YAML (default: the shipped configs/serving.yaml)")
    ap.add_argument("--rates", default="20,40,60,80,100,120,150,200")
    ap.add_argument("--inprocess-users-per-s", type=float, default=None)
    ap.add_argument("--history", default=None, choices=["local", "redis", "off"], help="override history.backend")
    ap.add_argument("--tag", default="", help="suffix of the result files (a variant)")
    ap.add_argument("--group", default=None, help="comma-separated channels to co-locate in one deployment")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="serving config override (YAML value)")
    args = ap.parse_args(argv)
    command = "nice -n 5 python -m bench.serve_load_beauty " + " ".join(argv if argv is not None else sys.argv[1:])
    inproc = args.inprocess_users_per_s
    if inproc is None and (RESULTS / "batch_recommend.json").is_file():
        inproc = json.loads((RESULTS / "batch_recommend.json").read_text())["in_process"]["users_per_s"]
    overrides = {"http.port": free_port(), "logging.dir": str(Path(args.run) / "serve_logs_bench")}
    if args.history:
        overrides["history.backend"] = args.history
    if args.group:
        overrides["channel_groups"] = {"cheap": {"channels": args.group.split(","), "num_cpus": 0.2, "max_ongoing_requests": 64}}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    redis = None
    if load_serve_config(args.config, overrides).history.backend == "redis":
        redis = Redis(Path(tempfile.mkdtemp(prefix="bench-redis-")), free_port())
        redis.start()
        overrides["history.redis_url"] = redis.url
    cfg = load_serve_config(args.config, overrides)
    phases, best = [], None
    load_before = os.getloadavg()[0]
    url = app.start(args.run, cfg)
    try:
        requests.post(f"{url}/recommend", json={"k": 10}, timeout=60)
        if cfg.http.direct_ingress:
            url = app.direct_urls(cfg)
        bodies = _bodies(Path(args.run), 20000)
        run_phase(url, 10, 10, bodies)  # warm every replica's routes
        for rate in [float(r) for r in args.rates.split(",")]:
            out = run_phase(url, rate, args.seconds, bodies)
            phases.append(out)
            ok = out["failed"] == 0 and out["p99_ms"] is not None and out["p99_ms"] <= 50.0
            best = rate if ok else best
            if not ok and rate >= 40:
                break
    finally:
        app.stop()
        if redis is not None:
            redis.kill()
    by_rate = {p["rate"]: p for p in phases}
    result = {"command": command, "run": args.run, "config": Path(args.config).name, "topology": cfg.topology,
              "direct_ingress": cfg.http.direct_ingress, "history": cfg.history.backend,
              "machine": f"2 cores; load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end",
              "phases": phases, "serve_max_rps_p99_50ms": best,
              "inprocess_users_per_s": inproc, "served_vs_inprocess": round(best / inproc, 3) if best and inproc else None}
    for rate in (20.0, 40.0):
        if rate in by_rate:
            result[f"p50_ms_{int(rate)}"], result[f"p99_ms_{int(rate)}"] = by_rate[rate]["p50_ms"], by_rate[rate]["p99_ms"]
            result[f"errors_{int(rate)}"] = by_rate[rate]["failed"]
    (RESULTS / f"serve_load_beauty{args.tag}.json").write_text(json.dumps(result, indent=1))
    lines = [f"# Beauty MTGR cascade served ({args.run}, {args.config}: topology {cfg.topology}, direct ingress "
             f"{cfg.http.direct_ingress}, history {cfg.history.backend}; 2 cores, open loop, {args.seconds:.0f} s per rate)", "",
             "| rate req/s | requests | failed | p50 ms | p99 ms | degraded |", "|---|---|---|---|---|---|"]
    lines += [f"| {p['rate']:g} | {p['requests']} | {p['failed']} | {p['p50_ms']} | {p['p99_ms']} | {p['degraded']} |" for p in phases]
    lines += ["", f"serve_max_rps_p99_50ms: {best}; in-process batched users/s: {inproc}; served_vs_inprocess: "
                  f"{result['served_vs_inprocess']}. The load generator runs on the same machine; {result['machine']}.", "", f"`{command}`"]
    (RESULTS / f"serve_load_beauty{args.tag}.md").write_text("\n".join(lines) + "\n")
    record("speed", f"serve_load_beauty{args.tag}", {k: v for k, v in result.items() if k != "phases"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
