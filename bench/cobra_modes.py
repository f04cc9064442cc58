"""One table of the three COBRA-channel modes on Amazon Beauty, from the per-mode results that
bench/cobra_beauty.py wrote (bench/results/cobra_<mode>_beauty.json).

    python -m bench.cobra_modes

Writes bench/results/cobra_modes.{json,md}: valid and test R@5/N@5/R@10/N@10 (+R@50) per mode,
the published TIGER / COBRA rows and the SASRec calibration for reference.
"""
from __future__ import annotations

import json
import sys

from bench.summary import RESULTS

MODES = ("tiger", "cobra_sparse", "cobra")
KEYS = ("R@5", "N@5", "R@10", "N@10", "R@50")
PUBLISHED = {"TIGER (published, seen not excluded)": {"R@5": .0454, "N@5": .0321, "R@10": .0648, "N@10": .0384},
             "COBRA (published)": {"R@5": .0537, "R@10": .0725, "N@10": .0456},
             "SASRec full softmax (ENVIRONMENT.md calibration)": {"R@10": .0907, "N@10": .0550}}


def main() -> int:
    rows = {}
    for mode in MODES:
        path = RESULTS / f"cobra_{mode}_beauty.json"
        if path.exists():
            rows[mode] = json.loads(path.read_text())
    table = {mode: {"valid": {k: r["valid"].get(k) for k in KEYS}, "test": {k: r["test"].get(k) for k in KEYS},
                    "chosen_inference": r["chosen"], "fit_seconds": r["fit_seconds"],
                    "best_epoch": r["fit_report"]["best_epoch"], "command": r["command"]} for mode, r in rows.items()}
    (RESULTS / "cobra_modes.json").write_text(json.dumps({"modes": table, "published": PUBLISHED}, indent=1))
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    lines = ["# COBRA channel modes on Amazon Beauty", "",
             "Leave-one-out, full catalog, all 22,363 users, seen items excluded. Trained on the history before the "
             "validation targets with early stopping on validation N@10; inference settings chosen on validation.", "",
             "| mode | split | " + " | ".join(KEYS) + " | best epoch | fit s |", "|---|---|" + "---|" * (len(KEYS) + 2)]
    for mode, r in table.items():
        for split in ("valid", "test"):
            lines.append(f"| {mode} | {split} | " + " | ".join(fmt(r[split][k]) for k in KEYS)
                         + f" | {r['best_epoch']} | {r['fit_seconds']:.0f} |")
    for name, vals in PUBLISHED.items():
        lines.append(f"| {name} | test | " + " | ".join(fmt(vals.get(k)) for k in KEYS) + " | | |")
    lines += ["", "Commands:"] + [f"- {mode}: `{r['command']}`" for mode, r in table.items()]
    (RESULTS / "cobra_modes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
