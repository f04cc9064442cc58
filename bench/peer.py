"""A peer in the same run: RecTools' SASRec on our split, scored by our harness.

    python -m bench.peer                    # choose the epochs on validation (protocol B, seed 1)
    python -m bench.protocol_b --seeds 1 2 3 --reuse --peer --record   # the peer beside the cascade

The peer lives in its own environment (`bash scripts/install-peers.sh` makes `.venv-peers`;
RecTools needs numpy<2 and pandas<3). For every run this module writes the fit log of the stage
(`split.history(stage)`: user, item, time, in our row order, so protocol B's shuffled ties reach
the peer as they reach our stages) and the evaluated users, calls bench/peers/rectools_sasrec.py
in that environment, and scores the lists it returns with the same metrics and the same users
as the cascade (seen items masked, request time never given to the peer: SASRec uses only order).

Settings: RecTools' documented SASRec defaults (2 blocks, 4 heads, dropout 0.2, full-catalog
softmax, Adam 1e-3, batch 128), except `n_factors: 64` and `session_max_len: 10`, for compute:
its loss scores the whole catalog at every padded position, so an epoch on Beauty takes ~630 s
at the defaults (256 factors, 100 positions) and ~130 s at 64 / 20 here on 2 cores; 10 positions
hold the whole history of ~85% of Beauty users. The number of epochs (3 = the default, 6 or 10)
is chosen on the VALIDATION split of the first seed under protocol B (lists written at each
checkpoint of one training run).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core import metrics as M
from pipeline.core.types import PAD
from pipeline.evaluation.harness import EvalSet, build_eval_set

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "peers" / "rectools_sasrec.py"
PARAMS = {"n_factors": 64, "session_max_len": 10}
CHECKPOINTS = (3, 6, 10)  # 3 = the documented default
K = 60  # lists longer than the largest reported cut-off (20), so masking can never shorten them
KS = (5, 10, 20)


def peer_python(explicit: str | None = None) -> str:
    """The interpreter of the peers environment; a clear error when it is missing."""
    path = explicit or os.environ.get("HYBRIDREC_PEER_PYTHON") or str(ROOT / ".venv-peers" / "bin" / "python")
    if not Path(path).is_file():
        raise FileNotFoundError(f"no peers environment at {path}: run `bash scripts/install-peers.sh` "
                                "or set HYBRIDREC_PEER_PYTHON to an interpreter with rectools installed")
    return path


def export(split, stage: str, max_history: int, request_time: str, folder: Path) -> EvalSet:
    """Write fit.parquet and users.parquet for `stage`; returns the eval set they belong to."""
    folder.mkdir(parents=True, exist_ok=True)
    split.history(stage)[["user_id", "item_id", "timestamp"]].to_parquet(folder / "fit.parquet", index=False)
    evalset = build_eval_set(split, stage, max_history, request_time=request_time)
    pd.DataFrame({"user_id": evalset.batch.users}).to_parquet(folder / "users.parquet", index=False)
    return evalset


def lists_from_recs(recs: pd.DataFrame, evalset: EvalSet, history: pd.DataFrame, k: int = K) -> np.ndarray:
    """int64 [B, k] top-k of the eval users from the peer's (user_id, item_id, rank) rows, in the
    eval set's user order; items the user has seen are dropped (whatever the peer did), PAD fills."""
    users = evalset.batch.users
    seen = set(zip(history["user_id"].to_numpy(np.int64).tolist(), history["item_id"].to_numpy(np.int64).tolist()))
    recs = recs.sort_values(["user_id", "rank"], kind="stable")
    row_of = {int(u): i for i, u in enumerate(users)}
    out = np.full((len(users), k), PAD, np.int64)
    fill = np.zeros(len(users), np.int64)
    for u, item in zip(recs["user_id"].to_numpy(np.int64).tolist(), recs["item_id"].to_numpy(np.int64).tolist()):
        row = row_of.get(u)
        if row is None or fill[row] >= k or (u, item) in seen:
            continue
        out[row, fill[row]] = item
        fill[row] += 1
    return out


def score(topk: np.ndarray, evalset: EvalSet) -> dict[str, float]:
    return M.summarize(M.target_ranks(topk, evalset.targets), KS)


def train_and_list(python: str, folder: Path, params: dict, checkpoints: tuple[int, ...], seed: int) -> dict:
    """Run the peer script on the folder's export; returns its timing.json."""
    cmd = [python, str(SCRIPT), "--fit", str(folder / "fit.parquet"), "--users", str(folder / "users.parquet"),
           "--out", str(folder), "--k", str(K), "--params", json.dumps(params), "--seed", str(seed),
           "--checkpoints", *map(str, checkpoints)]
    subprocess.run(cmd, check=True)
    return json.loads((folder / "timing.json").read_text())


def choose_epochs(split, cfg, python: str, params: dict = PARAMS, checkpoints=CHECKPOINTS, seed: int = 0) -> dict:
    """Validation N@10 at each checkpoint of one training run; the best epoch count wins."""
    with tempfile.TemporaryDirectory(prefix="peer-valid-") as tmp:
        folder = Path(tmp)
        evalset = export(split, "valid", cfg.data.max_history, cfg.eval.request_time, folder)
        timing = train_and_list(python, folder, params, tuple(checkpoints), seed)
        history = split.history("valid")
        curve = {}
        for epochs in checkpoints:
            got = score(lists_from_recs(pd.read_parquet(folder / f"recs_e{epochs}.parquet"), evalset, history), evalset)
            curve[epochs] = {"R@10": round(got["R@10"], 4), "N@10": round(got["N@10"], 4)}
            print(f"  peer valid {epochs} epochs: R@10 {got['R@10']:.4f} N@10 {got['N@10']:.4f}", flush=True)
    best = max(curve, key=lambda e: curve[e]["N@10"])
    return {"epochs": best, "valid_curve": curve, "train_seconds": timing["checkpoints"][-1]["train_seconds"]}


def evaluate_peer(split, cfg, python: str, epochs: int, params: dict = PARAMS, seed: int = 0) -> dict:
    """Train on the test stage's history for `epochs` and score on the test targets."""
    with tempfile.TemporaryDirectory(prefix="peer-test-") as tmp:
        folder = Path(tmp)
        evalset = export(split, "test", cfg.data.max_history, cfg.eval.request_time, folder)
        t = time.perf_counter()
        timing = train_and_list(python, folder, params, (epochs,), seed)
        wall = time.perf_counter() - t
        topk = lists_from_recs(pd.read_parquet(folder / f"recs_e{epochs}.parquet"), evalset, split.history("test"))
    got = score(topk, evalset)
    return {**{m: float(got[m]) for m in ("R@5", "N@5", "R@10", "N@10", "R@20")}, "users": len(evalset),
            "train_seconds": timing["checkpoints"][0]["train_seconds"], "wall_seconds": round(wall, 1)}


TUNING = ROOT / "bench" / "results" / "peer_sasrec_tuning.json"


def main(argv=None) -> int:
    """Choose the peer's epochs on validation (protocol B, first seed) and write TUNING."""
    import argparse

    from bench.protocol_b import CONFIG, protocol
    from pipeline.config import apply_overrides, load_config
    from pipeline.core.artifacts import atomic_write_json
    from pipeline.workflow import make_split, prepare_data

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--dataset", default="amazon-beauty-2014-5core")
    ap.add_argument("--seed", type=int, default=1, help="tie-shuffle seed of protocol B")
    ap.add_argument("--peer-python", default=None)
    args = ap.parse_args(argv)
    python = peer_python(args.peer_python)
    cfg = apply_overrides(load_config(CONFIG, {"data.path": str(ROOT.parent / "shared" / "data" / args.dataset)}),
                          protocol(args.seed))
    dataset = prepare_data(cfg.data)
    t = time.perf_counter()
    chosen = choose_epochs(make_split(dataset, cfg.data), cfg, python)
    result = {"command": "python -m bench.peer " + " ".join(argv if argv is not None else sys.argv[1:]),
              "dataset": args.dataset, "protocol": "B", "seed": args.seed, "params": PARAMS, **chosen,
              "wall_seconds": round(time.perf_counter() - t, 1)}
    atomic_write_json(TUNING, result)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
