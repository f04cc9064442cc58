"""Live state of the served app: event-to-effect, and a Redis outage under traffic.

    nice -n 5 python -m bench.serve_live [--events 200] [--rate 20]

Trains a run from configs/quickstart.yaml (synthetic), starts a real redis-server on 127.0.0.1
(a free port, append-only file fsynced on every write, in a temp folder), and serves the run with
configs/serving.yaml and `history.backend: redis`.
  effect   --events times: POST /events (one item for a known user), then at once POST /recommend
           for that user; reflected = the answer's history grew by one and leaves the item out;
           event_to_recommend_ms = from the /events answer to the /recommend answer
  outage   --rate req/s of /recommend (open loop) for 40 s while another thread sends an event
           every 0.1 s; Redis is killed at 10 s and restarted (same port, same files) at 20 s.
           Counted: failed /recommend requests, degraded ones, events answered 202 / 503 / other;
           afterwards every event answered 202 must be in the store
Writes bench/results/serve_live.{json,md}; records speed:event_to_recommend_ms and speed:redis_outage.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.serve_load import CONFIG, SERVING, _bodies, run_phase  # noqa: E402
from bench.summary import RESULTS, record  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.quickstart import free_port  # noqa: E402
from pipeline.serving.config import load_serve_config  # noqa: E402
from pipeline.serving.history import RedisStore  # noqa: E402
from pipeline.serving.runview import RunView  # noqa: E402
from pipeline.workflow import train  # noqa: E402


class Redis:
    def __init__(self, folder: Path, port: int) -> None:
        self.folder, self.port, self.proc = folder, port, None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [shutil.which("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--save", "", "--appendonly", "yes", "--appendfsync", "always"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):  # bounded wait for PING
            try:
                if RedisStore(self.url).client.ping():
                    return
            except Exception:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not answer")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def effect(url: str, users: list[str], items: list[str], n: int) -> dict:
    ms, reflected = [], 0
    with requests.Session() as s:
        for i in range(n):
            user, item = users[i % len(users)], items[(7 * i) % len(items)]
            before = s.post(f"{url}/recommend", json={"user_id": user, "k": 10}, timeout=30).json()["history_used"]
            ev = s.post(f"{url}/events", json={"events": [{"user_id": user, "item_id": item, "event_id": f"effect-{i}",
                                                          "time": 2_000_000_000 + i}]}, timeout=30)
            t = time.perf_counter()
            got = s.post(f"{url}/recommend", json={"user_id": user, "k": 10}, timeout=30).json()
            ms.append((time.perf_counter() - t) * 1e3)
            if ev.status_code == 202 and got["history_used"] == min(before + 1, 50) and item not in [x["item_id"] for x in got["items"]]:
                reflected += 1
    return {"events": n, "reflected_next_request": reflected, "event_to_recommend_ms_p50": round(float(np.percentile(ms, 50)), 2),
            "event_to_recommend_ms_p99": round(float(np.percentile(ms, 99)), 2)}


def outage(url: str, redis: Redis, bodies: list, users: list[str], items: list[str], rate: float) -> dict:
    sent: dict[str, int] = {}  # event id -> HTTP status
    stop = threading.Event()

    def events() -> None:
        with requests.Session() as s:
            n = 0
            while not stop.is_set() and n < 1000:  # bounded
                eid = f"outage-{n}"
                try:
                    r = s.post(f"{url}/events", json={"events": [{"user_id": users[n % len(users)], "item_id": items[n % len(items)],
                                                                  "event_id": eid, "time": 2_100_000_000 + n}]}, timeout=30)
                    sent[eid] = r.status_code
                except requests.RequestException:
                    sent[eid] = 0
                n += 1
                time.sleep(0.1)

    sender = threading.Thread(target=events)
    sender.start()
    try:
        load = run_phase(url, rate, 40, bodies, at={10.0: redis.kill, 20.0: redis.start})
    finally:
        stop.set()
        sender.join()
    store = RedisStore(redis.url)
    acked = [e for e, st in sent.items() if st == 202]
    stored = {m.decode() for m in store.client.smembers(store.ids_key)}
    return {"recommend": load, "events_sent": len(sent), "events_202": len(acked),
            "events_503": sum(st == 503 for st in sent.values()), "events_other": sum(st not in (202, 503) for st in sent.values()),
            "acknowledged_but_lost": len([e for e in acked if e not in stored])}


def main(argv=None) -> int:
    from pipeline.serving import app

    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200)
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--config", default=str(SERVING), help="serving config YAML (its history is moved to the Redis started here)")
    ap.add_argument("--tag", default="", help="suffix of the result files and records (a variant)")
    args = ap.parse_args(argv)
    command = "nice -n 5 python -m bench.serve_live " + " ".join(argv if argv is not None else sys.argv[1:])
    tmp = Path(tempfile.mkdtemp(prefix="serve-live-"))
    run = train(load_config(CONFIG), run_dir=tmp / "run")
    redis = Redis(tmp, free_port())
    redis.start()
    cfg = load_serve_config(args.config, {"http.port": free_port(), "http.direct_port_from": free_port(), "logging.dir": str(tmp / "logs"),
                                      "history": {"backend": "redis", "redis_url": redis.url}})
    ds = RunView.open(run).dataset
    users, items = ds.user_ids.astype(str).tolist()[:300], ds.item_ids.astype(str).tolist()
    out: dict = {"command": command, "backend": "redis"}
    try:
        url = app.start(run, cfg)
        requests.post(f"{url}/recommend", json={"k": 10}, timeout=30)
        print("effect", flush=True)
        out["effect"] = effect(url, users, items, args.events)
        print(out["effect"], flush=True)
        print("outage", flush=True)
        out["outage"] = outage(url, redis, _bodies(run, 5000), users, items, args.rate)
        print({k: v for k, v in out["outage"].items() if k != "recommend"}, flush=True)
    finally:
        app.stop()
        redis.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    out["config"] = Path(args.config).name
    (RESULTS / f"serve_live{args.tag}.json").write_text(json.dumps(out, indent=1))
    e, o = out["effect"], out["outage"]
    lines = [f"# Live state of the served app (synthetic quickstart run, {Path(args.config).name} (topology {cfg.topology}), "
             "history on Redis)", "",
             f"Event to effect: {e['reflected_next_request']} of {e['events']} events were in the very next /recommend; "
             f"event_to_recommend_ms p50 {e['event_to_recommend_ms_p50']} / p99 {e['event_to_recommend_ms_p99']}.", "",
             f"Redis killed at 10 s and restarted at 20 s under {args.rate:g} req/s of /recommend for 40 s: "
             f"{o['recommend']['failed']} failed of {o['recommend']['requests']} requests, degraded {o['recommend']['degraded']}, "
             f"p99 {o['recommend']['p99_ms']} ms. Events: {o['events_sent']} sent, {o['events_202']} accepted (202), "
             f"{o['events_503']} refused with a retryable 503, {o['events_other']} other; accepted but missing from the store "
             f"afterwards: {o['acknowledged_but_lost']}.", "", f"`{command}`"]
    (RESULTS / f"serve_live{args.tag}.md").write_text("\n".join(lines) + "\n")
    record("speed", f"event_to_recommend_ms{args.tag}", {"p50": e["event_to_recommend_ms_p50"], "p99": e["event_to_recommend_ms_p99"],
                                              "reflected_next_request": e["reflected_next_request"], "events": e["events"],
                                              "command": command})
    record("speed", f"redis_outage{args.tag}", {"recommend_failed": o["recommend"]["failed"], "events_202": o["events_202"],
                                     "events_503": o["events_503"], "acknowledged_but_lost": o["acknowledged_but_lost"],
                                     "command": command})
    return 0


if __name__ == "__main__":
    sys.exit(main())
