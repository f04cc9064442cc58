"""Shared by the serving tests (no tests here): a tiny trained run, a stub recall service, free ports."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from pipeline.config import parse_config
from pipeline.workflow import train

TINY = {
    "data": {"source": "synthetic", "synthetic": {"n_users": 300, "n_items": 200, "seed": 5}},
    "channels": [
        {"name": "popularity", "kind": "popularity", "quota": 50},
        {"name": "item2item", "kind": "item2item", "quota": 50},
    ],
    "pool": {"budget": 100},
    "eval": {"n_boot": 20},
}


def tiny_run(path: Path) -> Path:
    return train(parse_config(TINY), run_dir=path)


def in_process_cascades(view, state) -> dict:
    """arm -> the in-process `Cascade` that serves it (the reference a served list must equal)."""
    from pipeline.cascade import Cascade

    channels = {n: view.load_channel(n) for n in view.channel_configs()}
    return {
        name: Cascade([channels[c] for c in plan.channels], plan.quotas, ranker=view.build_ranker(plan.ranker),
                      reranker=view.build_reranker(plan.rerank), budget=plan.budget, exclude_seen=plan.exclude_seen,
                      max_history=state.max_history, fallback=state.fallback)
        for name, plan in state.arms.plans.items()
    }


def free_port() -> int:
    """A port for a server that must be told it in advance (see pipeline.quickstart.free_port)."""
    from pipeline.quickstart import free_port as pick

    return pick()


class StubRecall:
    """A small JSON recall service on 127.0.0.1: answers `{"results": [{"id", "score"}]}` with the
    configured item ids; `delay_s` and `status` simulate a slow or failing backend."""

    def __init__(self, items: list[str], delay_s: float = 0.0, status: int = 200,
                 per_user: dict[str, dict[str, Any]] | None = None) -> None:
        """`per_user`: user id -> overrides for that user's calls: `status`, `delay_s`, `score`
        (the value sent as every item's score, e.g. a string)."""
        self.items, self.delay_s, self.status = items, delay_s, status
        self.per_user = per_user or {}
        self.calls: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []  # the request headers of every call
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                import time

                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.calls.append(body)
                stub.headers.append(dict(self.headers))
                special = stub.per_user.get(str(body.get("user_id")), {})
                time.sleep(special.get("delay_s", stub.delay_s))
                k = int(body.get("k", 10))
                out = {"results": [{"id": i, "score": special.get("score", float(len(stub.items) - n))}
                                   for n, i in enumerate(stub.items[:k])]}
                data = json.dumps(out).encode()
                self.send_response(special.get("status", stub.status))
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/recall"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "StubRecall":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
