"""One command that reproduces every published figure of the project (SPEC section 9).

    python -m bench.run_all --list                 # the steps, their commands and rough times here
    python -m bench.run_all                        # everything, in order (many hours on 2 cores)
    python -m bench.run_all --only classic,cascade_mtgr
    python -m bench.run_all --from cobra_sparse    # resume

Each step is the exact command recorded next to its figures in bench/results/summary.json; the
steps run one after the other (never in parallel: on 2 cores parallel trainings slow each other
down several times and make timings meaningless), each in its own process. Steps that read a
trained run folder come after the step that writes it. The last step regenerates the README
results table from summary.json. Output: bench/results/*.json and *.md (+ plots), summary.json.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PY = "python -m"


def _two_tower_run() -> str:
    """The run folder the two-tower step wrote (its name carries a timestamp)."""
    path = RESULTS / "two_tower_beauty.json"
    if not path.exists():
        raise SystemExit("ann_recall needs the two_tower step first (bench/results/two_tower_beauty.json is missing)")
    return json.loads(path.read_text())["run"]


# name -> (command (a string, or a callable for commands that depend on an earlier step), rough minutes here)
STEPS: dict[str, tuple] = {
    "classic": (f"{PY} bench.classic_channels --dataset amazon-beauty-2014-5core", 5),
    "classic_sports": (f"{PY} bench.classic_channels --dataset amazon-sports-2014-5core --no-tune", 2),
    "classic_toys": (f"{PY} bench.classic_channels --dataset amazon-toys-2014-5core --no-tune", 2),
    "two_tower": (f"{PY} bench.two_tower_beauty --config configs/amazon-beauty-two-tower.yaml --dataset amazon-beauty", 12),
    "two_tower_toys": (f"{PY} bench.two_tower_beauty --config configs/amazon-beauty-two-tower.yaml --dataset amazon-toys", 12),
    "two_tower_sports": (f"{PY} bench.two_tower_beauty --config configs/amazon-beauty-two-tower.yaml --dataset amazon-sports", 25),
    "ann_recall": (lambda: f"{PY} bench.ann_recall --run {_two_tower_run()} --k 200 --scale 20", 10),
    "tiger": (f"{PY} bench.cobra_beauty --mode tiger --set max_train_seconds=9000 --record", 5),
    "cobra_sparse": (f"{PY} bench.cobra_beauty --mode cobra_sparse --set max_train_seconds=9000 --record", 5),
    "cobra": (f"{PY} bench.cobra_beauty --mode cobra --record", 12),
    "cobra_sports": (f"{PY} bench.cobra_beauty --dataset amazon-sports --no-tune --record", 30),
    "cobra_toys": (f"{PY} bench.cobra_beauty --dataset amazon-toys --no-tune --record", 15),
    "cobra_modes": (f"{PY} bench.cobra_modes", 0),
    "cobra_latency": (f"{PY} bench.cobra_latency", 1),
    "cobra_coldstart": (f"{PY} bench.cobra_coldstart --two-tower", 15),
    "cascade_lgbm": (f"{PY} bench.cascade_beauty --ranker lgbm --stage both --record", 25),
    "cascade_mtgr": (f"{PY} bench.cascade_beauty --ranker mtgr --stage both --record", 20),
    "leakage_audit": (f"{PY} bench.leakage_audit --run runs/beauty-cascade-mtgr-test --record", 8),
    "mtgr_ablation": (f"{PY} bench.mtgr_ablation --full-run runs/beauty-cascade-mtgr-test", 35),
    "mtgr_speed": (f"{PY} bench.mtgr_speed --run runs/beauty-cascade-mtgr-test --threads 1 --repeats 200 --record", 2),
    "rerank_tradeoff": (f"{PY} bench.rerank_tradeoff", 3),
    "rerank_speed": (f"{PY} bench.rerank_speed", 1),
    "serve_load": (f"{PY} bench.serve_load", 6),
    "ab_beauty": (f"{PY} bench.ab_beauty --record", 35),
    # the peer needs its own environment first: bash scripts/install-peers.sh
    "peer_tune": (f"{PY} bench.peer", 12),
    "protocol_b": (f"{PY} bench.protocol_b --dataset amazon-beauty-2014-5core --seeds 1 2 3 --peer --record", 70),
    "protocol_sports": (f"{PY} bench.protocol_b --dataset amazon-sports-2014-5core --seeds 1 --no-tune --protocol-a --record", 40),
    "protocol_toys": (f"{PY} bench.protocol_b --dataset amazon-toys-2014-5core --seeds 1 --no-tune --protocol-a --record", 25),
    "two_tower_b": (f"{PY} bench.two_tower_beauty --shuffle-ties 1", 8),
    "tiger_b": (f"{PY} bench.cobra_beauty --mode tiger --shuffle-ties 1 --record", 7),
    "cobra_ablation": (f"{PY} bench.cobra_ablation", 100),
    "cobra_unconditioned_b": (f"{PY} bench.cobra_ablation --test uncond_tied --key cobra_unconditioned", 3),
    "cobra_latency_b": (f"{PY} bench.cobra_latency --run runs/cobra_cobra_b_sampled_tied-beauty --shuffle-ties 1 --quality", 3),
    "ab_beauty_b": (f"{PY} bench.ab_beauty --shuffle-ties 1 --record", 60),
    "ray_pools": (f"{PY} bench.ray_pools --record", 10),
    "multinode": (f"{PY} bench.multinode --record", 2),
    "install_timing": (f"{PY} bench.install_timing --record", 10),
    "readme_table": (f"{PY} bench.readme_table", 0),
}


def command_of(name: str) -> str:
    cmd = STEPS[name][0]
    return cmd() if callable(cmd) else cmd


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", action="store_true", help="print the steps and exit")
    ap.add_argument("--only", default=None, help="comma-separated step names")
    ap.add_argument("--from", dest="start", default=None, help="start at this step")
    ap.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    args = ap.parse_args(argv)
    names = list(STEPS)
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in STEPS]
        if unknown:
            raise SystemExit(f"unknown step(s) {unknown}; steps: {names}")
        names = [n for n in names if n in wanted]
    if args.start:
        if args.start not in STEPS:
            raise SystemExit(f"unknown step {args.start!r}; steps: {names}")
        names = names[names.index(args.start):]
    if args.list:
        for n in names:
            cmd = STEPS[n][0]
            print(f"{n:18s} ~{STEPS[n][1]:>3d} min  {'(depends on an earlier step)' if callable(cmd) else cmd}")
        print(f"total ~{sum(STEPS[n][1] for n in names) / 60:.1f} h on the 2-core machine")
        return 0
    for i, name in enumerate(names, 1):
        cmd = command_of(name) if not args.dry_run or not callable(STEPS[name][0]) else f"<{name}: after its dependency>"
        print(f"[{i}/{len(names)}] {name}: {cmd}", flush=True)
        if args.dry_run:
            continue
        t = time.perf_counter()
        argv_ = shlex.split(cmd)
        if argv_[0] == "python":
            argv_[0] = sys.executable
        rc = subprocess.call(argv_, cwd=ROOT)
        print(f"[{i}/{len(names)}] {name}: exit {rc} after {time.perf_counter() - t:.0f} s", flush=True)
        if rc != 0:
            print(f"stopped at {name}; resume with: python -m bench.run_all --from {name}", file=sys.stderr)
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
