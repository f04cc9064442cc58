"""bench/results/summary.json: every published figure of the project, with its command.

Every quality entry (one with R@10) carries `seeds` and `R@10_std` / `N@10_std`: entries measured
on one split say so (`seeds: [1]` under a protocol-B section, `["file order"]` under protocol A)
with null spreads. `python -m bench.summary --normalize` applies that to the file as it is.
"""
from __future__ import annotations

import argparse
import fcntl
import json
from pathlib import Path
from typing import Any

from pipeline.core.artifacts import atomic_write_json

RESULTS = Path(__file__).resolve().parent / "results"
SUMMARY = RESULTS / "summary.json"
QUALITY_KEYS = ("R@5", "N@5", "R@10", "N@10")


def record(section: str, key: str, entry: dict[str, Any]) -> None:
    """Set summary[section][key] = entry (read-modify-write under a lock, written atomically)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / ".summary.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(SUMMARY.read_text()) if SUMMARY.exists() else {}
        data.setdefault(section, {})[key] = normalized(section, entry)
        atomic_write_json(SUMMARY, data)


def remove(section: str, keys: list[str]) -> None:
    """Delete summary[section][key] for each key (under the same lock as `record`)."""
    with open(RESULTS / ".summary.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(SUMMARY.read_text())
        for key in keys:
            data.get(section, {}).pop(key, None)
        atomic_write_json(SUMMARY, data)


def normalized(section: str, entry: dict[str, Any]) -> dict[str, Any]:
    """The entry with `seeds` and the seed spreads filled in where a one-split run left them out."""
    if section == "speed" or "R@10" not in entry:
        return entry
    seeds = entry.get("seeds") or ([1] if section.endswith("-robust") else ["file order"])
    spread = {k: entry.get(k) for k in ("R@10_std", "N@10_std")}  # null: one split, no spread to report
    return entry | {"seeds": seeds} | spread


def normalize_file() -> int:
    """Rewrite summary.json with every quality entry normalized; returns how many changed."""
    with open(RESULTS / ".summary.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(SUMMARY.read_text())
        changed = 0
        for section, entries in data.items():
            for key, entry in entries.items():
                if isinstance(entry, dict) and normalized(section, entry) != entry:
                    entries[key], changed = normalized(section, entry), changed + 1
        atomic_write_json(SUMMARY, data)
    return changed



def quality_entry(metrics: dict[str, float], command: str, seconds: float, **extra: Any) -> dict[str, Any]:
    entry = {k: round(float(metrics[k]), 4) for k in QUALITY_KEYS if k in metrics}
    entry.update({k: round(float(v), 4) for k, v in metrics.items() if k.startswith(("R@", "HR@")) and k not in entry})
    entry.update(command=command, seconds=round(seconds, 1), **extra)
    return entry


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="bench/results/summary.json")
    ap.add_argument("--normalize", action="store_true", help="fill seeds / R@10_std / N@10_std of one-split entries")
    if ap.parse_args().normalize:
        print(f"{normalize_file()} entries normalized")
