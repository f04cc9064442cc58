"""Render the README results table from bench/results/summary.json (and check it is current).

    python -m bench.readme_table          # rewrite the table between the README markers
    python -m bench.readme_table --check  # exit 1 when the README table differs from the JSON
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.summary import QUALITY_KEYS, SUMMARY

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"
DATASETS = ("amazon-beauty", "amazon-sports", "amazon-toys")
METHODS = ("popularity", "item2item", "two_tower", "tiger", "cobra_sparse", "cobra", "peer_sasrec", "cascade_lgbm",
           "cascade_mtgr")

# SPEC section 9: published numbers under the same protocol (seen items excluded) or as published
PUBLISHED = {
    "amazon-beauty": [
        ("SASRec (TIGER paper)", (".0387", ".0249", ".0605", ".0318")),
        ("TIGER (paper)", (".0454", ".0321", ".0648", ".0384")),
        ("COBRA (paper)", (".0537", "-", ".0725", ".0456")),
        ("SASRec + sampled softmax (eSASRec paper)", ("-", "-", ".0921", ".0531")),
        ("BSARec (AAAI'24)", (".0736", ".0523", ".1008", ".0611")),
    ],
    "amazon-sports": [("TIGER (paper)", (".0264", ".0181", ".0400", ".0225")), ("COBRA (paper)", ("-", "-", ".0434", "-"))],
    "amazon-toys": [("TIGER (paper)", (".0521", ".0371", ".0712", ".0432")), ("COBRA (paper)", ("-", "-", ".0781", "-"))],
}


def _fmt(v) -> str:
    return "-" if v is None else f"{float(v):.4f}"


def _robust(e: dict | None, metric: str) -> str:
    """Protocol B cell: mean ± sd over the tie-shuffle seeds."""
    if not isinstance(e, dict) or metric not in e:
        return "-"
    sd = e.get(f"{metric}_std")
    return _fmt(e[metric]) + (f" ± {float(sd):.4f}" if sd is not None and len(e.get("seeds", [])) > 1 else "")


def _source(method: str) -> str:
    return "RecTools SASRec, same run (bench/peer.py)" if method.startswith("peer_") else "this project"


def render(summary: dict) -> str:
    """Protocol A (standard) columns beside protocol B (robust: ties shuffled, request time 'last')."""
    head = "| dataset | method | " + " | ".join(f"A {k}" for k in QUALITY_KEYS) + " | B R@10 | B N@10 | source |"
    lines = [head, "|---|---|" + "---|" * (len(QUALITY_KEYS) + 3)]
    for ds in DATASETS:
        entries, robust = summary.get(ds, {}), summary.get(f"{ds}-robust", {})
        known = set(entries) | set(robust)
        for method in METHODS + tuple(sorted(known - set(METHODS))):
            e, b = entries.get(method), robust.get(method)
            quality = [x for x in (e, b) if isinstance(x, dict) and "R@10" in x]
            if not quality:  # e.g. cobra_coldstart: not a quality row
                continue
            a_cells = [_fmt(e.get(k)) if isinstance(e, dict) and "R@10" in e else "-" for k in QUALITY_KEYS]
            lines.append(f"| {ds} | {method} | " + " | ".join(a_cells) +
                         f" | {_robust(b, 'R@10')} | {_robust(b, 'N@10')} | {_source(method)} |")
        if entries:
            for name, vals in PUBLISHED.get(ds, []):
                lines.append(f"| {ds} | {name} | " + " | ".join(vals) + " | - | - | published |")
    return "\n".join(lines)


def updated_readme(text: str, table: str) -> str:
    if START not in text or END not in text:
        raise ValueError(f"README.md lacks the markers {START} / {END}")
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    return f"{before}{START}\n{table}\n{END}{after}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    table = render(json.loads(SUMMARY.read_text()))
    text = README.read_text()
    new = updated_readme(text, table)
    if args.check:
        if new != text:
            print("README results table is out of date: run python -m bench.readme_table", file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
