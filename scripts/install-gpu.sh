#!/usr/bin/env bash
# Install hybridrec with the GPU build of faiss, leaving exactly one faiss distribution.
#   bash scripts/install-gpu.sh            (from the repository root, inside your venv)
# faiss-cpu (a required dependency) and faiss-gpu-cu12 (the `gpu` extra) both install the module
# `faiss`; pip extras can only add packages, so this removes faiss-cpu and reinstalls faiss-gpu's
# files that the removal took. torch comes from your index (the CUDA build on a GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -c constraints.txt -e ".[gpu]"
python -m pip uninstall -y faiss-cpu
gpu_pin="$(grep -i '^faiss-gpu-cu12==' constraints.txt || echo faiss-gpu-cu12)"
python -m pip install --force-reinstall --no-deps "$gpu_pin"
python - <<'PY'
from importlib import metadata
import faiss


def present(name):
    try:
        metadata.version(name)
        return True
    except metadata.PackageNotFoundError:
        return False
assert not present("faiss-cpu") and present("faiss-gpu-cu12"), "expected faiss-gpu-cu12 alone"
print(f"faiss {faiss.__version__}: {faiss.get_num_gpus()} GPU(s) visible; faiss-cpu not installed")
PY
