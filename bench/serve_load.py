"""Load and fault drills of the Ray Serve app, all traffic on 127.0.0.1 with bounded request loops.

    nice -n 5 python -m bench.serve_load [--duration 60] [--rate 20] [--quick]

Trains two run folders from configs/quickstart.yaml (synthetic data; the second with another
item2item window, as "new artifacts"), serves the first with configs/serving.yaml, and drives it
with an open-loop generator (requests sent on a fixed schedule whatever the answers do):
  steady    --duration s at --rate req/s: errors, p50/p99 (goal p99 <= 80 ms)
  sweep     rising rates, 15 s each: the highest with p99 <= 150 ms and no errors
  kill      one item2item replica killed under load: failed responses, degraded ones, recovery
  slow      popularity delayed 10x past its budget: answers stay inside the budget, degraded named
  rolling   `update` to the second run under load: failed requests, the run served afterwards
Writes bench/results/serve_load.json and .md and records summary["speed"]["serve_load"].
The load generator shares the machine's cores with the app: the figures include its cost.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.summary import RESULTS, record  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.serving.config import load_serve_config  # noqa: E402
from pipeline.serving.runview import RunView  # noqa: E402
from pipeline.workflow import train  # noqa: E402

CONFIG = ROOT / "configs" / "quickstart.yaml"
SERVING = ROOT / "configs" / "serving.yaml"


def _bodies(run: Path, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Known users (80%), anonymous histories (10%), unknown users (10%); k = 10."""
    ds = RunView.open(run).dataset
    rng = random.Random(seed)
    users, items = ds.user_ids.astype(str).tolist(), ds.item_ids.astype(str).tolist()
    out = []
    for _ in range(n):
        x = rng.random()
        if x < 0.8:
            out.append({"user_id": rng.choice(users), "k": 10})
        elif x < 0.9:
            out.append({"history": rng.sample(items, 5), "k": 10})
        else:
            out.append({"user_id": f"new-{rng.randrange(10**6)}", "k": 10})
    return out


async def _load(url: str | list[str], rate: float, seconds: float, bodies: list[dict[str, Any]],
                at: dict[float, Callable[[], None]] | None = None) -> list[dict[str, Any]]:
    """Open loop: request i leaves at t0 + i / rate; returns one record per request. Several
    URLs (direct-ingress replicas): round robin, as a load balancer in front of them would."""
    urls = [url] if isinstance(url, str) else list(url)
    n = int(rate * seconds)
    results: list[dict[str, Any]] = []
    timeout = aiohttp.ClientTimeout(total=10)
    pending = sorted((at or {}).items())
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=256)) as session:
        async def one(i: int) -> None:
            t = time.perf_counter()
            rec: dict[str, Any] = {"t": t - t0}
            try:
                async with session.post(f"{urls[i % len(urls)]}/recommend", json=bodies[i % len(bodies)]) as r:
                    rec["status"] = r.status
                    text = await r.text()
                    if r.status != 200:
                        rec["error"] = f"HTTP {r.status}: {text[:80]}"
                    else:
                        body = json.loads(text)
                        rec.update(degraded=body["degraded"], fallback=body["fallback"], items=len(body["items"]))
            except Exception as err:  # a refused or timed-out connection is a failed request
                rec.update(status=0, error=f"{type(err).__name__}: {str(err)[:80]}")
            rec["ms"] = (time.perf_counter() - t) * 1e3
            results.append(rec)

        t0 = time.perf_counter()
        tasks = []
        for i in range(n):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            while pending and time.perf_counter() - t0 >= pending[0][0]:
                threading.Thread(target=pending.pop(0)[1], daemon=True).start()
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    return results


def _summary(results: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    ms = np.array([r["ms"] for r in results if r["status"] == 200]) if results else np.zeros(0)
    failed = [r for r in results if r["status"] != 200]
    degraded: dict[str, int] = {}
    for r in results:
        for name in r.get("degraded", []):
            degraded[name] = degraded.get(name, 0) + 1
    return {
        "requests": len(results), "failed": len(failed), "achieved_rps": round(len(results) / seconds, 2),
        "p50_ms": round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
        "p90_ms": round(float(np.percentile(ms, 90)), 2) if len(ms) else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else None,
        "max_ms": round(float(ms.max()), 2) if len(ms) else None,
        "degraded": degraded, "fallback": sum(bool(r.get("fallback")) for r in results),
        "short_lists": sum(1 for r in results if r["status"] == 200 and r.get("items", 0) < 10),
        "failures": sorted({str(r.get("error", r["status"])) for r in failed}),
    }


def run_phase(url: str | list[str], rate: float, seconds: float, bodies: list[dict[str, Any]], at: dict | None = None) -> dict[str, Any]:
    results = asyncio.run(_load(url, rate, seconds, bodies, at))
    out = _summary(results, seconds)
    out.update(rate=rate, seconds=seconds)
    print(f"  rate {rate:>5} req/s x {seconds:>4.0f}s: {out['requests']} requests, {out['failed']} failed, "
          f"p50 {out['p50_ms']} ms, p99 {out['p99_ms']} ms, degraded {out['degraded']}", flush=True)
    return out


def _replicas(app_name: str, deployment: str) -> list[str]:
    import ray

    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith(f"SERVE_REPLICA::{app_name}#{deployment}#")]


def _running_replicas(app_name: str, deployment: str) -> int:
    from ray import serve

    status = serve.status().applications[app_name].deployments[deployment]
    return int(status.replica_states.get("RUNNING", 0))


def kill_drill(url: str, rate: float, bodies: list, app_name: str, deployment: str = "channel-item2item",
               replicas: int = 2) -> dict[str, Any]:
    """Kill one of the `replicas` replicas of `deployment` 5 s into a 30 s phase; a watcher thread
    times how long Serve takes to have that many running again."""
    import ray

    before = set(_replicas(app_name, deployment))
    victim = sorted(before)[0]
    times: dict[str, float] = {}

    def watch() -> None:
        deadline = time.time() + 120
        while time.time() < deadline:
            now = set(_replicas(app_name, deployment))
            if now - before and victim not in now and _running_replicas(app_name, deployment) >= replicas:
                times["back"] = time.time()
                return
            time.sleep(0.25)

    def kill() -> None:
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        times["killed"] = time.time()
        watch()

    out = run_phase(url, rate, 30, bodies, at={5.0: kill})
    deadline = time.time() + 90
    while "back" not in times and time.time() < deadline:
        time.sleep(0.5)
    out.update(killed=victim, replicas_after=_running_replicas(app_name, deployment),
               recovered_after_s=round(times["back"] - times["killed"], 1) if "back" in times else None,
               replaced=victim not in _replicas(app_name, deployment))
    return out


def sweep(url: str, bodies: list, rates: list[float], seconds: float) -> dict[str, Any]:
    phases, best = [], None
    for rate in rates:
        phase = run_phase(url, rate, seconds, bodies)
        phases.append(phase)
        if phase["failed"] == 0 and phase["p99_ms"] is not None and phase["p99_ms"] <= 150:
            best = rate
        else:
            break
    return {"phases": phases, "max_rate_p99_le_150ms": best}


def _train(tmp: Path) -> tuple[Path, Path]:
    cfg = load_config(CONFIG)
    a = train(cfg, run_dir=tmp / "run-a")
    b = train(load_config(CONFIG, {"channels": [c.model_dump() | ({"params": {**c.params, "window": 4}} if c.name == "item2item" else {})
                                                for c in cfg.channels]}), run_dir=tmp / "run-b")
    return a, b


def drills(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from pipeline.serving import app

    run_a, run_b = _train(tmp)
    common = {"http.port": args.port, "logging.dir": str(tmp / "logs")}
    # popularity listed explicitly, so that the fault-only change of the slow drill is applied in place
    base = load_serve_config(SERVING, common | {"channels.popularity": {"budget_ms": 50}})
    slow = load_serve_config(SERVING, common | {"channels.popularity": {"budget_ms": 50, "fault": {"delay_ms": 500}}})
    t = time.perf_counter()
    url = app.start(run_a, base)
    out: dict[str, Any] = {"startup_s": round(time.perf_counter() - t, 1), "url": url}
    bodies = _bodies(run_a, 5000)
    try:
        import requests

        requests.post(f"{url}/recommend", json={"k": 10}, timeout=30)
        print("steady", flush=True)
        out["steady"] = run_phase(url, args.rate, args.duration, bodies)
        print("sweep", flush=True)
        out["sweep"] = sweep(url, bodies, [20, 25, 30, 40, 50, 60, 80, 100, 130, 160] if not args.quick else [20, 40], 10 if args.quick else 15)
        print("kill one item2item replica", flush=True)
        out["kill"] = kill_drill(url, args.rate, bodies, base.ray.app_name)
        print("slow channel", flush=True)
        app.update(run_a, slow)
        out["slow"] = run_phase(url, args.rate, 20, bodies) | {"budget_ms": 50, "delay_ms": 500}
        app.update(run_a, base)
        print("rolling update to new artifacts", flush=True)
        out["rolling"] = run_phase(url, args.rate, 60, bodies, at={5.0: lambda: app.update(run_b, base)})
        out["rolling"]["run_after"] = requests.get(f"{url}/healthz", timeout=10).json()["run"]
        out["rolling"]["new_run"] = str(run_b.resolve())
    finally:
        app.stop()
    return out


def write(out: dict[str, Any], args: argparse.Namespace) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serve_load.json").write_text(json.dumps(out, indent=2) + "\n")
    s, k, sl, r = out["steady"], out["kill"], out["slow"], out["rolling"]
    lines = [
        "# Serving load and fault drills", "",
        f"Run folders trained from `configs/quickstart.yaml` (synthetic: 2000 users, 1000 items); app from "
        f"`configs/serving.yaml`; command `{out['command']}`; {out['machine']}. Open-loop load, 80% known users, "
        "10% anonymous histories, 10% unknown users, k=10. The load generator runs on the same cores.", "",
        "| drill | rate req/s | requests | failed | p50 ms | p99 ms | notes |", "|---|---|---|---|---|---|---|",
        f"| steady {s['seconds']:.0f}s | {s['rate']} | {s['requests']} | {s['failed']} | {s['p50_ms']} | {s['p99_ms']} | goal p99 <= 80 ms |",
    ]
    for p in out["sweep"]["phases"]:
        lines.append(f"| sweep {p['seconds']:.0f}s | {p['rate']} | {p['requests']} | {p['failed']} | {p['p50_ms']} | {p['p99_ms']} | |")
    lines += [
        f"| kill 1 of 2 item2item replicas | {k['rate']} | {k['requests']} | {k['failed']} | {k['p50_ms']} | {k['p99_ms']} | "
        f"degraded {k['degraded']}; a new replica was running {k['recovered_after_s']} s after the kill (2 running at the end: {k['replicas_after'] == 2}) |",
        f"| popularity +{sl['delay_ms']} ms, budget {sl['budget_ms']} ms | {sl['rate']} | {sl['requests']} | {sl['failed']} | "
        f"{sl['p50_ms']} | {sl['p99_ms']} | degraded {sl['degraded']}; max {sl['max_ms']} ms |",
        f"| rolling update | {r['rate']} | {r['requests']} | {r['failed']} | {r['p50_ms']} | {r['p99_ms']} | "
        f"served afterwards: {Path(r['run_after']).name} (expected {Path(r['new_run']).name}) |", "",
        f"Highest swept rate with p99 <= 150 ms and no errors: **{out['sweep']['max_rate_p99_le_150ms']} req/s**. "
        f"App startup {out['startup_s']} s.",
    ]
    (RESULTS / "serve_load.md").write_text("\n".join(lines) + "\n")
    record("speed", "serve_load", {
        "steady_rate": s["rate"], "steady_seconds": s["seconds"], "errors": s["failed"], "p50_ms": s["p50_ms"], "p99_ms": s["p99_ms"],
        "max_rate_p99_le_150ms": out["sweep"]["max_rate_p99_le_150ms"], "kill_failed": k["failed"], "slow_failed": sl["failed"],
        "slow_p99_ms": sl["p99_ms"], "rolling_failed": r["failed"], "run": "configs/quickstart.yaml (synthetic)",
        "command": out["command"], "machine": out["machine"],
    })


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--rate", type=float, default=20.0)
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--quick", action="store_true", help="a short sweep (for a smoke run)")
    args = p.parse_args()
    t, load_before = time.perf_counter(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        out = drills(args, Path(tmp))
    out["command"] = "nice -n 5 python -m bench.serve_load " + " ".join(sys.argv[1:])
    out["machine"] = (f"{os.cpu_count()} cores shared with other jobs: load average {load_before:.1f} at the start, "
                      f"{os.getloadavg()[0]:.1f} at the end")
    out["seconds"] = round(time.perf_counter() - t, 1)
    write(out, args)
    print(f"wrote {RESULTS / 'serve_load.json'} and .md ({out['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
