"""Mutation testing of the core modules (slow, not in CI), and its report.

    python scripts/mutation.py            # mutmut run (config: [tool.mutmut] in pyproject.toml), then report
    python scripts/mutation.py --report   # only the report, from the mutants/ folder of an earlier run
    python scripts/mutation.py --record   # also write speed:mutation_score_core to bench/results/summary.json

mutmut (pip install mutmut) copies the packages into mutants/, changes one operator, constant or
call at a time in the modules listed under `only_mutate`, and runs the listed tests that reach the
changed function. A mutant is killed when a test fails. Score per module = killed / (killed +
survived); mutants no test reaches ("no tests") and timeouts are listed apart. The report goes to
bench/results/mutation.md and mutation.json; `mutmut results` / `mutmut show NAME` show survivors.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", None: "not checked",
          36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout", 37: "killed"}
COMMAND = "python scripts/mutation.py --record"


def collect(mutants: Path) -> dict[str, Counter]:
    """Per source module: how many mutants ended in each status."""
    out: dict[str, Counter] = {}
    for meta in sorted(mutants.rglob("*.py.meta")):
        module = str(meta.relative_to(mutants))[: -len(".meta")]
        codes = json.loads(meta.read_text())["exit_code_by_key"].values()
        out[module] = Counter(STATUS.get(code, "suspicious") for code in codes)
    return out


def score(c: Counter) -> float | None:
    decided = c["killed"] + c["survived"]
    return c["killed"] / decided if decided else None


def report(counts: dict[str, Counter], label: str) -> tuple[str, dict]:
    total = sum(counts.values(), Counter())
    rows = ["| module | mutants | killed | survived | no tests | timeout | not checked | score |", "|---|---|---|---|---|---|---|---|"]
    data = {}
    for module, c in sorted(counts.items()) + [("all core modules", total)]:
        s = score(c)
        rows.append(f"| {module} | {sum(c.values())} | {c['killed']} | {c['survived']} | {c['no tests']} | "
                    f"{c['timeout']} | {c['not checked']} | {'-' if s is None else f'{s:.3f}'} |")
        data[module] = dict(c) | {"score": s}
    text = f"# Mutation score of the core modules ({label})\n\n`{COMMAND}`\n\n" + "\n".join(rows) + "\n"
    return text, data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--report", action="store_true", help="report an earlier run, do not run mutmut")
    ap.add_argument("--record", action="store_true", help="record the score in bench/results/summary.json")
    ap.add_argument("--label", default="mutmut run", help="a note for the report's title")
    args = ap.parse_args(argv)
    if not args.report:
        subprocess.run([sys.executable, "-m", "mutmut", "run"], cwd=ROOT, check=False)
    counts = collect(ROOT / "mutants")
    if not counts:
        print("no mutants/ results: run without --report first", file=sys.stderr)
        return 1
    text, data = report(counts, args.label)
    (RESULTS / "mutation.md").write_text(text)
    (RESULTS / "mutation.json").write_text(json.dumps(data, indent=1) + "\n")
    print(text)
    if args.record:
        sys.path.insert(0, str(ROOT))
        from bench.summary import record

        total = data["all core modules"]
        record("speed", "mutation_score_core", {"value": round(total["score"], 3), "unit": "killed / (killed + survived)",
                                                "killed": total.get("killed", 0), "survived": total.get("survived", 0),
                                                "no_tests": total.get("no tests", 0),
                                                "not_checked": total.get("not checked", 0), "note": args.label,
                                                "command": COMMAND})
    return 0


if __name__ == "__main__":
    sys.exit(main())
