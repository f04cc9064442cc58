"""Protocol B seeds 2 and 3 of COBRA and the two-tower alone on Beauty, merged with seed 1.

    nice -n 5 python -m bench.cobra_beauty --shuffle-ties 2 --no-tune --tag _b_seed2     (and seed 3)
    nice -n 5 python -m bench.two_tower_beauty --shuffle-ties 2 --tag _seed2             (and seed 3)
    python -m bench.seed_spread

Seed 1 is the entry already in summary.json (`amazon-beauty-robust:cobra` from the ablation's test
run, `two_tower` from the A/B run); seeds 2 and 3 are read from the files the commands above
write (the same settings, inference chosen on seed 1's validation). The entries become means
over the three seeds with their spreads and per-seed figures, and `cobra_vs_two_tower` holds the
per-seed differences (COBRA - two-tower) of R@10 and N@10. The per-seed keys the two-tower
command records (`two_tower_seed2`, ...) are removed.
"""
from __future__ import annotations

import json
import sys

import numpy as np

from bench.summary import RESULTS, SUMMARY, record, remove

SECTION = "amazon-beauty-robust"
KEYS = ("R@5", "N@5", "R@10", "N@10", "R@20")
FILES = {"cobra": "cobra_cobra_b_seed{seed}_beauty.json", "two_tower": "two_tower_beauty_robust_seed{seed}.json"}
SEEDS = (2, 3)


def seed_one(entry: dict) -> dict:
    """Seed 1's figures: the entry itself, or its first per-seed row once merged."""
    rows = entry.get("per_seed") or []
    return rows[0] if rows and all(k in rows[0] for k in KEYS) else {k: entry[k] for k in KEYS}


def merged(entry: dict, rows: list[dict], command: str) -> dict:
    values = {k: np.array([r[k] for r in rows], np.float64) for k in KEYS}
    out = {k: v for k, v in entry.items() if k not in ("R@50", "R@budget(200)", "valid")}
    out.update({k: round(float(v.mean()), 4) for k, v in values.items()})
    out.update({"R@10_std": round(float(values["R@10"].std(ddof=1)), 4), "N@10_std": round(float(values["N@10"].std(ddof=1)), 4),
                "seeds": [1, *SEEDS], "per_seed": [{k: round(float(r[k]), 4) for k in KEYS} for r in rows],
                "command": command, "seed_1": entry.get("command")})
    return out


def main() -> int:
    summary = json.loads(SUMMARY.read_text())[SECTION]
    rows: dict[str, list[dict]] = {}
    for key, pattern in FILES.items():
        rows[key] = [seed_one(summary[key])]
        for seed in SEEDS:
            path = RESULTS / pattern.format(seed=seed)
            if not path.is_file():
                print(f"missing {path}: run the commands in this module's docstring first", file=sys.stderr)
                return 1
            rows[key].append(json.loads(path.read_text())["test"])
        command = f"python -m bench.seed_spread (seeds 2, 3: {pattern.format(seed='N')})"
        record(SECTION, key, merged(summary[key], rows[key], command))
    diff = {m: [round(float(c[m] - t[m]), 4) for c, t in zip(rows["cobra"], rows["two_tower"])] for m in ("R@10", "N@10")}
    record(SECTION, "cobra_vs_two_tower", {"seeds": [1, *SEEDS], **{f"{m}_diff_per_seed": d for m, d in diff.items()},
                                           **{f"{m}_diff_mean": round(float(np.mean(d)), 4) for m, d in diff.items()},
                                           "command": "python -m bench.seed_spread"})
    remove(SECTION, [k for k in json.loads(SUMMARY.read_text())[SECTION] if k.startswith("two_tower_seed")])
    for key in FILES:
        e = json.loads(SUMMARY.read_text())[SECTION][key]
        print(f"{key}: R@10 {e['R@10']:.4f} +- {e['R@10_std']:.4f}, N@10 {e['N@10']:.4f} +- {e['N@10_std']:.4f}, "
              f"per seed {[r['R@10'] for r in e['per_seed']]}")
    print("COBRA - two-tower per seed:", diff)
    return 0


if __name__ == "__main__":
    sys.exit(main())
