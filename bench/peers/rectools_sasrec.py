"""RecTools' SASRec as a peer, trained and asked for lists through its public API only.

Runs in the peers environment (scripts/install-peers.sh: rectools needs numpy<2 and pandas<3,
so it cannot share the project's pinned environment) and imports nothing from hybridrec. The
project's harness (bench/peer.py) writes the fit log and the users, calls this script, and scores
the lists it returns; this script never sees a target.

    python bench/peers/rectools_sasrec.py --fit fit.parquet --users users.parquet --k 60 \
        --params '{"epochs": 3}' --checkpoints 2 4 6 --out DIR

fit.parquet: user_id, item_id (dense ints), timestamp, in the order the harness wants within a
timestamp (RecTools sorts by time with a stable sort, so same-time rows keep that order).
For each checkpoint E (epochs trained so far) it writes DIR/recs_e{E}.parquet (user_id, item_id,
rank; seen items filtered) and DIR/timing.json with the training seconds at every checkpoint.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import pandas as pd


def _dataset(fit: pd.DataFrame):
    from rectools import Columns
    from rectools.dataset import Dataset

    frame = pd.DataFrame({
        Columns.User: fit["user_id"].to_numpy(),
        Columns.Item: fit["item_id"].to_numpy(),
        Columns.Weight: 1.0,
        Columns.Datetime: pd.to_datetime(fit["timestamp"].to_numpy(), unit="s"),
    })
    return Dataset.construct(frame)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fit", required=True)
    ap.add_argument("--users", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--k", type=int, default=60)
    ap.add_argument("--params", default="{}", help="JSON of SASRecModel arguments (documented defaults otherwise)")
    ap.add_argument("--checkpoints", type=int, nargs="+", required=True, help="epoch counts to write lists at")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import torch
    from pytorch_lightning import seed_everything
    from rectools.models import SASRecModel

    torch.set_num_threads(int(os.environ.get("PEER_THREADS", torch.get_num_threads())))
    seed_everything(args.seed, workers=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dataset = _dataset(pd.read_parquet(args.fit))
    users = pd.read_parquet(args.users)["user_id"].to_numpy()
    params = json.loads(args.params)
    model = SASRecModel(**params, deterministic=True)  # its default trainer: quiet, one device
    timing, done, train_s = {"params": params, "checkpoints": []}, 0, 0.0
    for epochs in sorted(set(args.checkpoints)):
        t = time.perf_counter()
        model.fit_partial(dataset, min_epochs=epochs - done, max_epochs=epochs - done)
        train_s += time.perf_counter() - t
        done = epochs
        t = time.perf_counter()
        recs = model.recommend(users=users, dataset=dataset, k=args.k, filter_viewed=True,
                               on_unsupported_targets="warn")
        rec_s = time.perf_counter() - t
        frame = pd.DataFrame({"user_id": recs["user_id"].to_numpy("int64"), "item_id": recs["item_id"].to_numpy("int64"),
                              "rank": recs["rank"].to_numpy("int32")})
        tmp = out / f".recs_e{epochs}.parquet.tmp"
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, out / f"recs_e{epochs}.parquet")
        timing["checkpoints"].append({"epochs": epochs, "train_seconds": round(train_s, 1),
                                      "recommend_seconds": round(rec_s, 1)})
        print(f"sasrec: {epochs} epochs, train {train_s:.0f} s, recommend {rec_s:.1f} s", flush=True)
    tmp = out / ".timing.json.tmp"
    tmp.write_text(json.dumps(timing, indent=1))
    os.replace(tmp, out / "timing.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
