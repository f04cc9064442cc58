#!/usr/bin/env bash
# Make the peers environment (.venv-peers) that bench/peer.py calls: RecTools' SASRec, pinned.
#   bash scripts/install-peers.sh          (from the repository root; about 2 minutes)
# RecTools 0.19 needs numpy<2, pandas<3 and attrs<24, which the project's pins (constraints.txt)
# exclude, so the peer runs in its own interpreter and exchanges Parquet files with the harness.
# It holds the `peers` extra of pyproject.toml and nothing of hybridrec itself.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-peers
.venv-peers/bin/python -m pip install -q -c bench/peers/constraints.txt torch "rectools[torch]" pyarrow
.venv-peers/bin/python -c "import rectools, pyarrow, torch; print('peers: rectools', rectools.__version__, '| torch', torch.__version__)"
