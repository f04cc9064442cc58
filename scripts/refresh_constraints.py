"""Refresh constraints.txt: resolve the newest versions in a fresh virtual environment, run the
test suite there, and write the file only when the suite passes.

    python scripts/refresh_constraints.py            # resolve, test, write constraints.txt
    python scripts/refresh_constraints.py --keep-venv  # leave the venv for inspection

torch is pinned on the command line (`torch==2.13.0`, the local CPU build) and is not written
to the file, so the same file serves CPU and GPU machines. The optional extras that the CPU suite
does not install (`gpu`, `text`) are resolved with `pip install --dry-run` and pinned in a
separate block, marked as not exercised by the suite.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TORCH = "torch==2.13.0"
NOT_PINNED = {"hybridrec", "torch", "pip", "setuptools", "wheel"}
EXTRAS_NOT_TESTED = ("gpu", "text")


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=True, **kwargs)


def freeze(python: Path) -> dict[str, str]:
    out = run([str(python), "-m", "pip", "list", "--format=json", "--exclude-editable"],
              capture_output=True, text=True).stdout
    return {p["name"].lower(): p["version"] for p in json.loads(out) if p["name"].lower() not in NOT_PINNED}


def untested_extras(python: Path, installed: dict[str, str]) -> dict[str, str]:
    """Pins for what the extras outside the suite would add, resolved against the tested set."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        spec = f"{ROOT}[{','.join(EXTRAS_NOT_TESTED)}]"
        run([str(python), "-m", "pip", "install", "--quiet", "--dry-run", "--report", str(report), spec])
        items = json.loads(report.read_text())["install"]
    names = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in items}
    return {n: v for n, v in names.items() if n not in installed and n not in NOT_PINNED}


def render(tested: dict[str, str], extras: dict[str, str], python: Path) -> str:
    version = subprocess.run([str(python), "-c", "import sys; print(sys.version.split()[0])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    lines = [
        "# Exact versions the test suite passed with, in a fresh venv (Python " + version + ").",
        "# Written by scripts/refresh_constraints.py on " + time.strftime("%Y-%m-%d") + "; do not edit by hand.",
        "# Used by both README commands and .ci/run: pip install " + TORCH + " -c constraints.txt ...",
        "# torch is pinned on the command line, not here.",
    ]
    lines += [f"{name}=={tested[name]}" for name in sorted(tested)]
    lines += ["", "# Extras the CPU suite does not install (" + ", ".join(EXTRAS_NOT_TESTED) + "):",
              "# resolved against the versions above, not exercised by the suite."]
    lines += [f"{name}=={extras[name]}" for name in sorted(extras)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keep-venv", action="store_true", help="do not delete the venv afterwards")
    ap.add_argument("--out", default=str(ROOT / "constraints.txt"), help="file to write")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="hybridrec-constraints-"))
    python = tmp / "venv" / "bin" / "python"
    try:
        run([sys.executable, "-m", "venv", str(tmp / "venv")])
        run([str(python), "-m", "pip", "install", "--quiet", TORCH, "-e", f"{ROOT}[dev]"])
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        tests = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=ROOT, env=env)
        if tests.returncode != 0:
            print(f"the suite failed with the newest versions (exit {tests.returncode}); {args.out} left as it is",
                  file=sys.stderr)
            return 1
        tested = freeze(python)
        text = render(tested, untested_extras(python, tested), python)
        out = Path(args.out)
        partial = out.with_suffix(".tmp")
        partial.write_text(text)
        os.replace(partial, out)
        print(f"wrote {out}: {len(tested)} tested pins")
        return 0
    finally:
        if args.keep_venv:
            print(f"venv kept at {tmp / 'venv'}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
