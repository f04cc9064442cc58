"""Kill one of the two ingress replicas under load (SPEC section 6 faults; issue 16).

    nice -n 5 python -m bench.serve_ingress_kill [--rate 20] [--port 8766]

Trains a run from configs/quickstart.yaml (synthetic), serves it with configs/serving.yaml (two
ingress replicas behind Serve's HTTP proxy), sends --rate req/s of /recommend for 30 s (open
loop, no client retries) and kills one ingress replica with `ray.kill` 5 s in. Counted: failed
requests (any answer but 200, or no answer), degraded ones, and the time until Serve runs two
ingress replicas again. A request in flight on the killed replica when it dies has no replica to
finish it: the proxy answers it with an error, so this drill measures how many that is.
Writes bench/results/serve_ingress_kill.{json,md}; records speed:serve_ingress_kill.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.serve_load import CONFIG, SERVING, _bodies, kill_drill  # noqa: E402
from bench.summary import RESULTS, record  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.serving.config import load_serve_config  # noqa: E402
from pipeline.workflow import train  # noqa: E402


def main(argv=None) -> int:
    from pipeline.serving import app

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--port", type=int, default=8766)
    ap.add_argument("--topology", default="split", choices=["split", "fused"], help="serving topology (fused: every stage in the ingress)")
    ap.add_argument("--tag", default="", help="suffix of the result files and the record (a variant)")
    args = ap.parse_args(argv)
    command = "nice -n 5 python -m bench.serve_ingress_kill " + " ".join(argv if argv is not None else sys.argv[1:])
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="serve-ingress-kill-") as tmp:
        run = train(load_config(CONFIG), run_dir=Path(tmp) / "run")
        cfg = load_serve_config(SERVING, {"http.port": args.port, "logging.dir": str(Path(tmp) / "logs"), "topology": args.topology})
        url = app.start(run, cfg)
        try:
            requests.post(f"{url}/recommend", json={"k": 10}, timeout=30)
            out = kill_drill(url, args.rate, _bodies(run, 5000), cfg.ray.app_name, "ingress", cfg.ingress.replicas)
        finally:
            app.stop()
    out.update(command=command, ingress_replicas=cfg.ingress.replicas, topology=args.topology,
               machine=f"{os.cpu_count()} cores; load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"serve_ingress_kill{args.tag}.json").write_text(json.dumps(out, indent=1) + "\n")
    lines = ["# One of two ingress replicas killed under load", "",
             f"Synthetic quickstart run, `configs/serving.yaml` (topology {args.topology}); {args.rate:g} req/s of /recommend for 30 s, open loop, "
             f"no client retries; `ray.kill` of one ingress replica at 5 s; {out['machine']}.", "",
             "| requests | failed | p50 ms | p99 ms | degraded | two ingress replicas again after |", "|---|---|---|---|---|---|",
             f"| {out['requests']} | {out['failed']} | {out['p50_ms']} | {out['p99_ms']} | {out['degraded']} | "
             f"{out['recovered_after_s']} s |", "",
             f"Failures seen: {out['failures'] or 'none'}.", "", f"`{command}`"]
    (RESULTS / f"serve_ingress_kill{args.tag}.md").write_text("\n".join(lines) + "\n")
    record("speed", f"serve_ingress_kill{args.tag}", {k: out[k] for k in ("rate", "requests", "failed", "p50_ms", "p99_ms",
                                                               "recovered_after_s", "failures", "command", "machine")})
    print(f"{out['failed']} failed of {out['requests']}; recovered after {out['recovered_after_s']} s", flush=True)
    return 0


if __name__ == "__main__":
    t = time.perf_counter()
    rc = main()
    print(f"{time.perf_counter() - t:.0f} s")
    sys.exit(rc)
