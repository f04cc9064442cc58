"""What Ray Serve itself costs on this machine: an ingress that does no work (FastAPI, parses the
body, answers ten items), through Serve's HTTP proxy and through direct ingress (the replica's
own port), open loop, rising rates. The cascade cannot be served faster than this floor.

    nice -n 5 python -m bench.serve_floor [--seconds 20]

Writes bench/results/serve_floor.{json,md}; records speed:serve_floor.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.serve_load import run_phase  # noqa: E402
from bench.summary import RESULTS, record  # noqa: E402
from pipeline.quickstart import free_port  # noqa: E402

# run in a fresh process per mode: Serve reads its direct-ingress setting when Ray starts
APP = textwrap.dedent("""
    import json, os, sys, time
    import ray
    from fastapi import FastAPI
    from ray import serve

    api = FastAPI()

    @serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.2})
    @serve.ingress(api)
    class Nothing:
        @api.post("/recommend")
        async def recommend(self, body: dict) -> dict:
            return {"items": [{"item_id": str(i), "score": 0.1} for i in range(10)], "degraded": [], "fallback": False}

    port, direct_from = int(sys.argv[1]), int(sys.argv[2])
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"enable_access_log": False})
    serve.run(Nothing.bind(), route_prefix="/", logging_config={"enable_access_log": False})
    print("READY", flush=True)
    sys.stdin.readline()  # the parent closes stdin when done
    serve.shutdown()
    ray.shutdown()
""")


def measure(direct: bool, rates: list[float], seconds: float) -> list[dict]:
    port, first = free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "RAY_USAGE_STATS_ENABLED": "0", "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1"}
    if direct:
        env |= {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1", "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(first),
                "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(first + 1),
                "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0.5"}
    proc = subprocess.Popen([sys.executable, "-c", APP, str(port), str(first)], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(200):  # bounded: the app prints READY once deployed
            if proc.stdout.readline().startswith("READY"):
                break
        url = f"http://127.0.0.1:{first if direct else port}"
        run_phase(url, 10, 5, [{"k": 10}])
        phases = []
        for rate in rates:
            out = run_phase(url, rate, seconds, [{"user_id": "u1", "k": 10}])
            phases.append({"path": "direct ingress" if direct else "proxy", **out})
            if out["failed"] or (out["p99_ms"] or 1e9) > 500:
                break
        return phases
    finally:
        proc.stdin.close()
        proc.wait(timeout=120)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rates", default="50,100,150,200,300")
    args = ap.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",")]
    command = "nice -n 5 python -m bench.serve_floor " + " ".join(argv if argv is not None else sys.argv[1:])
    load_before = os.getloadavg()[0]
    phases = measure(False, rates, args.seconds) + measure(True, rates, args.seconds)
    best = {path: max((p["rate"] for p in phases if p["path"] == path and not p["failed"] and p["p99_ms"] <= 50.0),
                      default=None) for path in ("proxy", "direct ingress")}
    result = {"command": command, "phases": phases, "max_rps_p99_50ms": best,
              "machine": f"2 cores; load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"}
    (RESULTS / "serve_floor.json").write_text(json.dumps(result, indent=1))
    lines = [f"# Ray Serve's own floor: an ingress that does nothing ({args.seconds:.0f} s per rate, open loop)", "",
             "| path | rate req/s | failed | p50 ms | p99 ms |", "|---|---|---|---|---|"]
    lines += [f"| {p['path']} | {p['rate']:g} | {p['failed']} | {p['p50_ms']} | {p['p99_ms']} |" for p in phases]
    lines += ["", f"Highest rate with p99 <= 50 ms: proxy {best['proxy']}, direct ingress {best['direct ingress']} "
                  f"(of the rates tried). The load generator runs on the same machine; {result['machine']}.", "",
              f"`{command}`"]
    (RESULTS / "serve_floor.md").write_text("\n".join(lines) + "\n")
    record("speed", "serve_floor", {k: v for k, v in result.items() if k != "phases"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
