"""The layering of the code base (issue 18): the stages (channels/, rankers/, rerank/) stand on
pipeline/core/ alone, and the core imports neither a stage nor the orchestration above it. Every
import counts, including those inside functions."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("channels", "rankers", "rerank")
CORE = "pipeline.core"


def imported_modules(source: str) -> list[tuple[int, str]]:
    """(line, dotted module) of every absolute import in `source`; `from a import b` yields both
    `a` and `a.b`, since b may be a module."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _above_core(mod: str) -> bool:
    return _inside(mod, "pipeline") and mod != "pipeline" and not _inside(mod, CORE)


def stage_violations(source: str) -> list[str]:
    """A stage may import pipeline.core (and below) but no other part of pipeline."""
    return [f"{line}: {mod}" for line, mod in imported_modules(source) if _above_core(mod)]


def core_violations(source: str) -> list[str]:
    """The core imports only itself (and third-party code)."""
    return [f"{line}: {mod}" for line, mod in imported_modules(source)
            if any(_inside(mod, p) for p in STAGES) or _above_core(mod)]


def _files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("folder", STAGES)
def test_stages_import_from_pipeline_only_through_the_core(folder):
    files = _files(folder)
    assert files, folder
    found = {str(f.relative_to(ROOT)): v for f in files if (v := stage_violations(f.read_text()))}
    assert found == {}, f"stage files importing pipeline outside {CORE}: {found}"


def test_the_core_imports_no_stage_and_nothing_above_it():
    files = _files("pipeline/core")
    assert len(files) >= 10
    found = {str(f.relative_to(ROOT)): v for f in files if (v := core_violations(f.read_text()))}
    assert found == {}, f"core files importing a stage or the orchestration: {found}"


def test_the_rules_catch_what_they_forbid():
    upward = "from pipeline.evaluation.harness import build_eval_set\n"
    assert stage_violations(upward) == ["1: pipeline.evaluation.harness", "1: pipeline.evaluation.harness.build_eval_set"]
    assert stage_violations("def f():\n    from pipeline import workflow\n") == ["2: pipeline.workflow"]
    assert stage_violations("from pipeline.core import device\nimport numpy\n") == []
    assert core_violations("from channels.popularity import PopularityChannel\n") == [
        "1: channels.popularity", "1: channels.popularity.PopularityChannel"]
    assert core_violations("import pipeline.serving.app\n") == ["1: pipeline.serving.app"]
    assert core_violations("from pipeline.core.types import PAD\n") == []


def test_serving_the_mtgr_ranker_does_not_import_its_training_loop():
    import subprocess
    import sys
    code = "import sys, rankers.mtgr_ranker; print('rankers.mtgr_train' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
