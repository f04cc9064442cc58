"""Mutation testing of the core modules (slow, not in CI), and its report.

    python scripts/mutation.py            # mutmut run (config: [tool.mutmut] in pyproject.toml), then report
    python scripts/mutation.py --report   # only the report, from the mutants/ folder of an earlier run
    python scripts/mutation.py --record   # also write speed:mutation_score_core to bench/results/summary.json
    python scripts/mutation.py --only 'pipeline.serving.service*' --keep   # one module; the others keep
                                          # their figures from the last report (bench/results/mutation.json)

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
# Surviving mutants read and judged equivalent (no test can tell them from the original), with why.
EQUIVALENT = {
    "pipeline.serving.ab.xǁArmTableǁbucket__mutmut_7": "int.from_bytes byte order defaults to 'big' (Python >= 3.11)",
    "pipeline.serving.ab.xǁArmTableǁ__init____mutmut_9": "the one default arm's weight is normalised to 1 whatever it is",
    "pipeline.serving.ab.xǁArmTableǁ__init____mutmut_18": "with one arm no user is hashed, so its salt is never read",
    "pipeline.serving.ab.xǁArmTableǁ__init____mutmut_28": "np.array of Python floats is float64 without the dtype",
    "pipeline.serving.ab.xǁArmTableǁ__init____mutmut_30": "np.array of Python floats is float64 without the dtype",
    "pipeline.serving.ab.xǁArmTableǁassign__mutmut_15": "searchsorted sides differ only for a bucket exactly on a boundary (p ~ 2**-64)",
    "pipeline.serving.ab.xǁArmTableǁassign__mutmut_23": "the index is already below len(names) (bucket < 1); the min never binds",
    "pipeline.core.splits.x__first_rows_of_known_users__mutmut_4": "groupby(...).head(1) keeps row order whatever `sort` is",
    "pipeline.core.splits.x__first_rows_of_known_users__mutmut_6": "groupby(...).head(1) keeps row order whatever `sort` is",
    "pipeline.core.splits.x__first_rows_of_known_users__mutmut_9": "groupby(...).head(1) keeps row order whatever `sort` is",
    "rankers.training_data.xǁRankingDataǁload__mutmut_2": "np.load's allow_pickle defaults to False (None is falsy)",
    "rankers.training_data.xǁRankingDataǁload__mutmut_4": "np.load's allow_pickle defaults to False",
    "pipeline.serving.eventlog.xǁEventLogǁ_run__mutmut_4": "encoding None is UTF-8 here (Python's UTF-8 mode / locale)",
    "pipeline.serving.eventlog.xǁEventLogǁ_run__mutmut_7": "'UTF-8' and 'utf-8' name the same codec",
    "pipeline.serving.eventlog.xǁEventLogǁ_write_batch__mutmut_33": "encoding None is UTF-8 here",
    "pipeline.serving.eventlog.x_read_events__mutmut_9": "encoding None is UTF-8 here",
    "pipeline.serving.eventlog.xǁEventLogǁclose__mutmut_12": "the put timeout only sets how often close polls before its deadline",
    "channels.http_channel.xǁHttpChannelǁ_session__mutmut_6": "a new session per call: slower, the same answers",
    "channels.http_channel.xǁHttpChannelǁ_session__mutmut_14": "an adapter mounted on a prefix no URL has: requests uses its default adapter",
    "channels.http_channel.xǁHttpChannelǁ_session__mutmut_21": "an adapter mounted on a prefix no URL has: requests uses its default adapter",
    "channels.http_channel.xǁHttpChannelǁretrieve__mutmut_27": "a new thread pool per call: slower, the same answers",
    "channels.http_channel.xǁHttpChannelǁretrieve__mutmut_36": "the pool's default size instead of max_workers: the same answers",
    "channels.http_channel.xǁHttpChannelǁ_map_row__mutmut_41": "numpy reads the sort kind case-insensitively",
}


def collect(mutants: Path) -> dict[str, Counter]:
    """Per source module: how many mutants ended in each status (a survivor listed in EQUIVALENT
    counts as 'equivalent')."""
    out: dict[str, Counter] = {}
    for meta in sorted(mutants.rglob("*.py.meta")):
        module = str(meta.relative_to(mutants))[: -len(".meta")]
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        status = [STATUS.get(code, "suspicious") for code in codes.values()]
        status = ["equivalent" if s == "survived" and name in EQUIVALENT else s for name, s in zip(codes, status)]
        out[module] = Counter(status)
    return out


def keep_unreached(counts: dict[str, Counter], previous: Path) -> list[str]:
    """Modules this run did not check at all take their counts from the previous report (a run
    of some modules only); returns the modules kept."""
    if not previous.exists():
        return []
    before = json.loads(previous.read_text())
    kept = []
    for module, c in counts.items():
        if set(c) == {"not checked"} and module in before:
            counts[module] = Counter({k: v for k, v in before[module].items() if k != "score"})
            kept.append(module)
    return kept


def score(c: Counter) -> float | None:
    decided = c["killed"] + c["survived"]
    return c["killed"] / decided if decided else None


def report(counts: dict[str, Counter], label: str) -> tuple[str, dict]:
    total = sum(counts.values(), Counter())
    rows = ["| module | mutants | killed | survived | equivalent | no tests | timeout | not checked | score |",
            "|---|---|---|---|---|---|---|---|---|"]
    data = {}
    for module, c in sorted(counts.items()) + [("all core modules", total)]:
        s = score(c)
        rows.append(f"| {module} | {sum(c.values())} | {c['killed']} | {c['survived']} | {c['equivalent']} | {c['no tests']} | "
                    f"{c['timeout']} | {c['not checked']} | {'-' if s is None else f'{s:.3f}'} |")
        data[module] = dict(c) | {"score": s}
    eq = ["", "Survivors judged equivalent (left out of the score):", "", "| mutant | why |", "|---|---|"]
    eq += [f"| `{name}` | {why} |" for name, why in EQUIVALENT.items()]
    text = (f"# Mutation score of the core modules ({label})\n\nscore = killed / (killed + survived); "
            f"equivalent survivors are listed below and left out.\n\n`{COMMAND}`\n\n" + "\n".join(rows) + "\n"
            + "\n".join(eq) + "\n")
    return text, data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--report", action="store_true", help="report an earlier run, do not run mutmut")
    ap.add_argument("--record", action="store_true", help="record the score in bench/results/summary.json")
    ap.add_argument("--label", default="mutmut run", help="a note for the report's title")
    ap.add_argument("--only", nargs="+", metavar="PATTERN", help="mutant names to run (mutmut's globs, e.g. 'pipeline.pool*')")
    ap.add_argument("--keep", action="store_true",
                    help="modules this run did not check keep their figures from bench/results/mutation.json")
    args = ap.parse_args(argv)
    if not args.report:
        subprocess.run([sys.executable, "-m", "mutmut", "run", *(args.only or [])], cwd=ROOT, check=False)
    counts = collect(ROOT / "mutants")
    if not counts:
        print("no mutants/ results: run without --report first", file=sys.stderr)
        return 1
    if args.keep:
        kept = keep_unreached(counts, RESULTS / "mutation.json")
        print(f"kept from the last report: {', '.join(kept) or 'none'}")
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
