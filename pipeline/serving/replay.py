"""Replay simulator: held-out interactions act as clicks, driving the A/B loop end to end.

For a seeded sample of users with a held-out target in the run's split (the targets of the stage
the run was fitted for, never seen by any channel), it asks the running app for a list
(POST /recommend with the original user id) and, when the target is in the list, sends a click
on it (POST /feedback with the request id). `hybridrec ab report` then reads the logs.
Traffic goes only to the given URL (127.0.0.1 by default).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import requests

from pipeline.serving.runview import RunView


@dataclass
class ReplaySummary:
    requests: int = 0
    errors: int = 0
    clicks: int = 0
    by_arm: dict[str, dict[str, int]] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def held_out(run_path: str | Path, n_users: int | None, seed: int = 0) -> list[tuple[str, str]]:
    """(original user id, original target item id) for a seeded sample of the run's target users."""
    view = RunView.open(run_path)
    targets = view.split.targets(view.stage)
    users = targets["user_id"].to_numpy(np.int64)
    items = targets["item_id"].to_numpy(np.int64)
    order = np.random.default_rng(seed).permutation(len(users))[: n_users or len(users)]
    return [(str(view.dataset.user_ids[users[i]]), str(view.dataset.item_ids[items[i]])) for i in order]


def _one(session: requests.Session, url: str, user: str, target: str, k: int, timeout: float, out: ReplaySummary) -> None:
    r = session.post(f"{url}/recommend", json={"user_id": user, "k": k}, timeout=timeout)
    out.requests += 1
    out.statuses[str(r.status_code)] = out.statuses.get(str(r.status_code), 0) + 1
    if r.status_code != 200:
        out.errors += 1
        return
    body = r.json()
    arm = out.by_arm.setdefault(body["arm"], {"lists": 0, "clicks": 0})
    arm["lists"] += 1
    if target in {i["item_id"] for i in body["items"]}:
        fb = session.post(f"{url}/feedback", json={"request_id": body["request_id"], "item_id": target, "user_id": user},
                          timeout=timeout)
        if fb.status_code == 202:
            out.clicks += 1
            arm["clicks"] += 1
        else:
            out.errors += 1


def replay(url: str, run_path: str | Path, *, n_users: int | None = 500, k: int = 10, seed: int = 0,
           rate: float | None = None, timeout: float = 10.0) -> ReplaySummary:
    """Replay held-out targets against the app at `url`; `rate` caps requests per second."""
    out = ReplaySummary()
    pairs = held_out(run_path, n_users, seed)
    t0 = time.perf_counter()
    with requests.Session() as session:
        for n, (user, target) in enumerate(pairs):
            if rate:
                delay = t0 + n / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            try:
                _one(session, url.rstrip("/"), user, target, k, timeout, out)
            except requests.RequestException:
                out.requests += 1
                out.errors += 1
    out.seconds = round(time.perf_counter() - t0, 3)
    return out
