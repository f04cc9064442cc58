"""Packaging: what a user gets from `pip install .` (not editable) in a fresh venv.

- every third-party module the shipped packages import is a declared dependency of the
  distribution (an optional one only behind its extra);
- the wheel holds the default configs, and `hybridrec quickstart` runs from an installed wheel
  in a new venv, outside the source tree, with its defaults.
"""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ("pipeline", "channels", "rankers", "rerank")
# modules imported only on an optional path, and the extra that provides them
OPTIONAL = {"sentence_transformers": "text"}


def _requirements() -> dict[str, set[str | None]]:
    """Declared requirement name -> the extras it is declared under (None: always)."""
    try:
        reqs = metadata.requires("hybridrec") or []
    except metadata.PackageNotFoundError:
        pytest.skip("hybridrec is not installed (pip install -e .); its metadata is what is checked")
    out: dict[str, set[str | None]] = {}
    for req in reqs:
        name = re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower().replace("_", "-")
        extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", req)
        out.setdefault(name, set()).add(extra.group(1) if extra else None)
    return out


def _imported_modules() -> dict[str, str]:
    """Top-level third-party module -> one file that imports it."""
    found: dict[str, str] = {}
    for package in SHIPPED:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in SHIPPED and top not in sys.stdlib_module_names:
                        found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def test_every_imported_module_is_a_declared_dependency():
    declared = _requirements()
    providers = metadata.packages_distributions()
    missing = []
    for module, where in sorted(_imported_modules().items()):
        if module in OPTIONAL:
            dists = {OPTIONAL[module]}
            assert any(OPTIONAL[module] in extras for extras in declared.values()), f"extra {dists} not declared"
            continue
        dists = {d.lower().replace("_", "-") for d in providers.get(module, [])}
        if not any(None in declared.get(d, set()) for d in dists):
            missing.append(f"{module} (imported by {where}; provided by {sorted(dists) or 'nothing installed'})")
    assert not missing, "imported at run time but not a required dependency: " + "; ".join(missing)


def test_import_scan_sees_the_known_dependencies():
    modules = _imported_modules()
    for module in ("torch", "faiss", "lightgbm", "pandas", "numpy", "ray", "fastapi"):
        assert module in modules


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(ROOT)],
                   check=True, capture_output=True, text=True)
    (built,) = out.glob("hybridrec-*.whl")
    return built


def test_wheel_holds_the_default_configs(wheel):
    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    for cfg in ("configs/quickstart.yaml", "configs/serving.yaml", "configs/serving-throughput.yaml"):
        assert cfg in names
    assert "pipeline/cli.py" in names and "channels/cobra/channel.py" in names


def _fresh_venv_with_wheel(root: Path, wheel: Path) -> Path:
    """A new venv holding only the wheel; its dependencies come from this environment's
    site-packages through a path entry (a plain path: this environment's .pth files, such as
    an editable install's finder, are not run there)."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    inner = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                           check=True, capture_output=True, text=True).stdout.strip()
    (Path(inner) / "_deps_from_test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--quiet",
                    str(wheel)], check=True, capture_output=True, text=True)
    return venv


def test_quickstart_runs_from_the_installed_wheel(wheel, tmp_path):
    venv = _fresh_venv_with_wheel(tmp_path, wheel)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import pipeline; print(pipeline.__file__)"],
                           cwd=tmp_path, env=env, check=True, capture_output=True, text=True).stdout
    assert str(venv) in where and str(ROOT) not in where
    version = subprocess.run([str(venv / "bin" / "hybridrec"), "--version"], cwd=tmp_path, env=env,
                             check=True, capture_output=True, text=True).stdout
    assert version.strip() == f"hybridrec {metadata.version('hybridrec')}"
    done = subprocess.run([str(venv / "bin" / "hybridrec"), "quickstart"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "HTTP 200" in done.stdout
    assert "cascade beats every channel on R@10 and N@10" in done.stdout, done.stdout[-3000:]
    assert (tmp_path / "runs").is_dir()  # the run folder lands in the working directory


def test_one_faiss_distribution_provides_the_module():
    present = []
    for dist in ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu11", "faiss-gpu-cu12"):
        try:
            metadata.version(dist)
            present.append(dist)
        except metadata.PackageNotFoundError:
            pass
    assert len(present) == 1, f"exactly one faiss build must be installed, found {present} (see scripts/install-gpu.sh)"


def test_ci_runs_the_readme_commands_with_the_constraints():
    blocks = re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)
    quickstart, tests = blocks[0], blocks[1]
    assert "hybridrec quickstart" in quickstart and "pytest" in tests
    for command in (quickstart, tests):
        assert "torch==2.13.0 -c constraints.txt" in command
    assert tests in (ROOT / ".ci" / "run").read_text()
    pins = (ROOT / "constraints.txt").read_text().splitlines()
    pinned = {line.split("==")[0].lower() for line in pins if "==" in line and not line.startswith("#")}
    for direct in ("faiss-cpu", "lightgbm", "pandas", "pyarrow", "ray", "pytest", "schemathesis", "hypothesis"):
        assert direct in pinned, f"{direct} is not pinned in constraints.txt"
    assert "torch" not in pinned  # pinned on the command line, so one file serves CPU and GPU machines
