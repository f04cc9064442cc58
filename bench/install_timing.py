"""The README's two commands on a fresh machine's terms: a clean clone, new virtual environments,
nothing installed before. Records install, quickstart and test-suite wall times and the venv size
under `speed` in bench/results/summary.json.

    python -m bench.install_timing --record

Run it alone (each step is timed as a whole process). pip's download cache is whatever the
machine has; the note in the summary entry says so.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.summary import record

ROOT = Path(__file__).resolve().parent.parent
INSTALL = 'python -m pip install -q torch==2.13.0 -c constraints.txt -e .'
QUICKSTART = "hybridrec quickstart"
INSTALL_DEV = 'python -m pip install -q torch==2.13.0 -c constraints.txt -e ".[dev]"'
TESTS = "python -m pytest -q"
COMMAND = "python -m bench.install_timing --record"


def timed(cmd: str, cwd: Path, venv: Path) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"VIRTUAL_ENV": str(venv), "PATH": f"{venv / 'bin'}:{env.get('PATH', '')}", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    t = time.perf_counter()
    done = subprocess.run(cmd, shell=True, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - t
    tail = "\n".join(done.stdout.splitlines()[-25:])
    print(f"{cmd}: exit {done.returncode} in {seconds:.1f}s\n{tail}", flush=True)
    if done.returncode != 0:
        raise SystemExit(f"'{cmd}' failed (exit {done.returncode})")
    return seconds


def size_gb(path: Path) -> float:
    total = sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
    return total / 1e9


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--record", action="store_true", help="write the figures to bench/results/summary.json")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="hybridrec-install-"))
    try:
        clone = tmp / "hybridrec"
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
        if (ROOT.parent / "shared").is_dir():
            os.symlink(ROOT.parent / "shared", tmp / "shared")  # the tests look for ../shared/data
        figures = {}
        for label, steps in (("user", [INSTALL, QUICKSTART]), ("dev", [INSTALL_DEV, TESTS])):
            venv = tmp / f"venv-{label}"
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            for step in steps:
                figures[step] = timed(step, clone, venv)
            figures[f"venv_{label}_gb"] = size_gb(venv)
        print({k: round(v, 2) for k, v in figures.items()})
        if args.record:
            note = "fresh clone and venvs; pip's download cache as the machine had it"
            for key, step, value in (("install_seconds", INSTALL, figures[INSTALL]),
                                     ("quickstart_seconds", QUICKSTART, figures[QUICKSTART]),
                                     ("test_suite_seconds", TESTS, figures[TESTS])):
                record("speed", key, {"value": round(value, 1), "unit": "s", "step": step, "command": COMMAND, "note": note})
            record("speed", "venv_size_gb", {"value": round(figures["venv_user_gb"], 2), "unit": "GB",
                                             "dev_venv_gb": round(figures["venv_dev_gb"], 2), "command": COMMAND})
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
