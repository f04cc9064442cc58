"""bench/results/summary.json: every published figure of the project, with its command."""
from __future__ import annotations

import fcntl
import json
from pathlib import Path
from typing import Any

from pipeline.artifacts import atomic_write_json

RESULTS = Path(__file__).resolve().parent / "results"
SUMMARY = RESULTS / "summary.json"
QUALITY_KEYS = ("R@5", "N@5", "R@10", "N@10")


def record(section: str, key: str, entry: dict[str, Any]) -> None:
    """Set summary[section][key] = entry (read-modify-write under a lock, written atomically)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / ".summary.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(SUMMARY.read_text()) if SUMMARY.exists() else {}
        data.setdefault(section, {})[key] = entry
        atomic_write_json(SUMMARY, data)


def quality_entry(metrics: dict[str, float], command: str, seconds: float, **extra: Any) -> dict[str, Any]:
    entry = {k: round(float(metrics[k]), 4) for k in QUALITY_KEYS if k in metrics}
    entry.update({k: round(float(v), 4) for k, v in metrics.items() if k.startswith(("R@", "HR@")) and k not in entry})
    entry.update(command=command, seconds=round(seconds, 1), **extra)
    return entry
