"""Batch inference: recommendations for many users, written to one Parquet file.

    hybridrec recommend --run DIR --users all|FILE --k 10 --out recs.parquet [--ray]

Every user is answered by the run's cascade (`load_run(...).cascade`, the same steps the served
endpoint runs) from the history the run was trained with, at one request time for the whole job
(`now`, default: the clock when the job starts; recorded in the file's metadata). Users the run
does not know are answered like anonymous requests (popularity) and counted. In process by
default, a batch at a time with a progress bar; `ray=True` spreads the same batches over Ray Data
actors, each loading the run once, and gives the same rows (tests/test_batch.py).

Output columns: user_id (original id), rank (1 = first), item_id (original id), score (float,
NaN where the item has no score, e.g. a back-filled one), reasons (list of strings).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from pipeline.config import ConfigError
from pipeline.core.artifacts import atomic_write_bytes
from pipeline.core.raystart import start_or_join
from pipeline.core.types import PAD, RequestBatch
from pipeline.serving.runview import Histories

log = logging.getLogger(__name__)

COLUMNS = ("user_id", "rank", "item_id", "score", "reasons")


@dataclass(frozen=True)
class Users:
    """The users of a job: original ids (as asked) and dense indices (PAD for unknown ones)."""

    ids: np.ndarray  # object [N]
    dense: np.ndarray  # int64 [N]

    @property
    def unknown(self) -> int:
        return int((self.dense == PAD).sum())


def read_users(spec: str, user_ids: np.ndarray) -> Users:
    """'all' (every user of the run, in dense order), or a file: Parquet / CSV with a `user_id`
    column, or plain text with one id per line. Duplicates are an error (one list per user)."""
    index = {str(u): i for i, u in enumerate(user_ids)}
    if spec == "all":
        return Users(np.asarray([str(u) for u in user_ids], object), np.arange(len(user_ids), dtype=np.int64))
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"--users: {spec} is neither 'all' nor a file")
    if path.suffix == ".parquet":
        frame = pd.read_parquet(path)
    elif path.suffix == ".csv":
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    else:
        frame = pd.DataFrame({"user_id": [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]})
    if "user_id" not in frame.columns:
        raise ConfigError(f"--users {spec}: needs a 'user_id' column, has {list(frame.columns)}")
    ids = frame["user_id"].astype(str).to_numpy(object)
    if not len(ids):
        raise ConfigError(f"--users {spec}: no user ids")
    dup = pd.Series(ids).duplicated()
    if dup.any():
        raise ConfigError(f"--users {spec}: {int(dup.sum())} duplicate ids, e.g. {ids[dup.to_numpy()][0]!r}")
    return Users(ids, np.array([index.get(u, PAD) for u in ids], np.int64))


def batches(users: np.ndarray, histories: Histories, max_len: int, now: int, size: int) -> Iterator[tuple[slice, RequestBatch]]:
    """(positions, request batch) per `size` users; unknown users (PAD) get an empty history."""
    empty = np.zeros(0, np.int64)
    for lo in range(0, len(users), size):
        part = users[lo: lo + size]
        seqs = [histories.of_user(int(u)) if u != PAD else (empty, empty) for u in part]
        yield slice(lo, lo + len(part)), RequestBatch.from_sequences(
            [int(u) if u != PAD else None for u in part], [s[0] for s in seqs], [s[1] for s in seqs],
            max_len=max_len, now=[max(now, int(s[1][-1]) if len(s[1]) else 0) for s in seqs])


def rows_of(cascade, batch: RequestBatch, ids: np.ndarray, item_ids: np.ndarray, k: int,
            positions: np.ndarray | None = None) -> pd.DataFrame:
    """One batch through the cascade, as output rows (with each user's job `positions` if given)."""
    final = cascade.run(batch, k).final
    lengths = [min(len(f), k) for f in final]
    where = {} if positions is None else {"position": np.repeat(positions, lengths)}
    return pd.DataFrame(where | {
        "user_id": np.repeat(ids, lengths),
        "rank": np.concatenate([np.arange(1, n + 1) for n in lengths]).astype(np.int32) if lengths else np.zeros(0, np.int32),
        "item_id": np.concatenate([item_ids[f.items[:k]] for f in final]).astype(str),
        "score": np.concatenate([f.scores[:k] for f in final]).astype(np.float32),
        "reasons": [list(r) for f in final for r in (f.reasons or [[] for _ in range(len(f))])[:k]],
    })


class _Worker:
    """A Ray Data actor: loads the run once, answers batches of (position, dense user) rows."""

    def __init__(self, run: str, k: int, now: int, threads: int = 1) -> None:
        import torch

        from pipeline.workflow import load_run

        torch.set_num_threads(threads)
        self.run = load_run(run)
        self.k, self.now = k, now
        self.histories = Histories.of(self.run.split.history(self.run.stage), self.run.dataset.n_users)
        self.item_ids = self.run.dataset.item_ids

    def __call__(self, chunk: pd.DataFrame) -> pd.DataFrame:
        users = chunk["dense"].to_numpy(np.int64)
        ((_, batch),) = batches(users, self.histories, self.run.config.data.max_history, self.now, len(users))
        return rows_of(self.run.cascade, batch, chunk["user_id"].to_numpy(object), self.item_ids, self.k,
                       chunk["position"].to_numpy(np.int64))


def recommend(run_path: str | Path, users: str = "all", k: int = 10, *, now: int | None = None, batch_size: int = 512,
              use_ray: bool = False, ray_actors: int = 2, progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """Lists for `users` ('all' or a file, see `read_users`): (rows, job metadata)."""
    from pipeline.workflow import load_run, open_run_folder

    if k < 1:
        raise ConfigError(f"--k must be at least 1, got {k}")
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    now = int(time.time()) if now is None else int(now)
    t0 = time.perf_counter()
    if use_ray:
        _, _, dataset, _ = open_run_folder(Path(run_path))
        who = read_users(users, dataset.user_ids)
        frame = _with_ray(str(run_path), who, k, now, batch_size, ray_actors)
    else:
        run = load_run(run_path)
        who = read_users(users, run.dataset.user_ids)
        histories = Histories.of(run.split.history(run.stage), run.dataset.n_users)
        parts = []
        bar = tqdm(total=len(who.ids), desc="recommend", unit="user", disable=not progress or None)
        for pos, batch in batches(who.dense, histories, run.config.data.max_history, now, batch_size):
            parts.append(rows_of(run.cascade, batch, who.ids[pos], run.dataset.item_ids, k))
            bar.update(len(batch))
        bar.close()
        frame = pd.concat(parts, ignore_index=True)
    seconds = time.perf_counter() - t0
    if who.unknown:
        log.warning("%d of %d users are not in the run; answered as anonymous requests (popularity)", who.unknown, len(who.ids))
    meta = {"run": str(Path(run_path).resolve()), "k": k, "now": now, "users": len(who.ids), "unknown_users": who.unknown,
            "rows": len(frame), "seconds": round(seconds, 3), "users_per_s": round(len(who.ids) / max(seconds, 1e-9), 1),
            "engine": "ray" if use_ray else "in-process"}
    return frame, meta


def _with_ray(run: str, who: Users, k: int, now: int, batch_size: int, actors: int) -> pd.DataFrame:
    import ray

    if not ray.is_initialized():
        # one CPU per actor and one for Ray Data's own tasks (with none left over they never run)
        start_or_join(None, num_cpus=actors + 1, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    table = pd.DataFrame({"position": np.arange(len(who.ids), dtype=np.int64), "user_id": who.ids, "dense": who.dense})
    blocks = [table.iloc[lo: lo + batch_size] for lo in range(0, len(table), batch_size)]
    ds = ray.data.from_pandas(blocks)
    out = ds.map_batches(_Worker, fn_constructor_kwargs={"run": run, "k": k, "now": now}, batch_size=batch_size,
                         batch_format="pandas", compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=1).to_pandas()
    out = out.sort_values(["position", "rank"], kind="stable").drop(columns="position").reset_index(drop=True)
    for col in ("user_id", "item_id"):  # Arrow strings back to the in-process frame's dtype
        out[col] = out[col].to_numpy(object).astype(str)
    out["rank"] = out["rank"].astype(np.int32)
    out["score"] = out["score"].astype(np.float32)
    out["reasons"] = [list(r) for r in out["reasons"]]
    return out[list(COLUMNS)]


def write(frame: pd.DataFrame, meta: dict, out: str | Path) -> Path:
    """Atomically, with the job metadata in the Parquet schema (key b'hybridrec')."""
    out = Path(out)
    table = pa.Table.from_pandas(frame[list(COLUMNS)], preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"hybridrec": json.dumps(meta).encode()})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(out, sink.getvalue().to_pybytes())
    return out


def read_meta(path: str | Path) -> dict:
    """The job metadata `write` stored in a recommendations file."""
    return json.loads(pq.read_schema(path).metadata[b"hybridrec"])
