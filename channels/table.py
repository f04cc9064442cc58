"""A precomputed candidate table served as a channel: the way to plug in an existing offline recall.

The table is Parquet (or CSV) with columns user_id, item_id, score in the dataset's ORIGINAL ids.
Rows whose user or item is not in the dataset are dropped (counted in `dropped_rows_`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import Field

from pipeline.core.artifacts import atomic_write_json, atomic_write_parquet, read_json
from pipeline.core.protocols import FitData
from pipeline.core.schema import Configured, PartsConfig
from pipeline.core.types import PAD, RequestBatch, Retrieved

REQUIRED = ("user_id", "item_id", "score")


def read_candidate_table(path: str | Path) -> pd.DataFrame:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"candidate table {p} not found")
    frame = pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p, sep=None, engine="python")
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise ValueError(f"{p}: candidate table lacks column(s) {missing}; it needs {list(REQUIRED)}")
    if len(frame) == 0:
        raise ValueError(f"{p}: candidate table is empty")
    if not pd.api.types.is_numeric_dtype(frame["score"]):
        bad = frame.loc[pd.to_numeric(frame["score"], errors="coerce").isna()].iloc[0].to_dict()
        raise ValueError(f"{p}: column 'score' must be numeric (example row: {bad})")
    return frame


class CandidateTableConfig(PartsConfig):
    path: str = Field(description="Parquet or CSV with user_id, item_id and optional score (original ids)")


class CandidateTableChannel(Configured):
    config_class = CandidateTableConfig  # what a config's `params` are checked against (pipeline/params.py)
    default_name = "table"

    def fit(self, data: FitData) -> "CandidateTableChannel":
        if data.user_ids is None or data.item_ids is None:
            raise ValueError(f"channel '{self.name}': fit data needs the original id maps to read {self.config.path}")
        frame = read_candidate_table(self.config.path)
        users = pd.Series(np.arange(len(data.user_ids)), index=pd.Index(data.user_ids.astype(str)))
        items = pd.Series(np.arange(len(data.item_ids)), index=pd.Index(data.item_ids.astype(str)))
        u = users.reindex(frame["user_id"].astype(str).to_numpy()).to_numpy()
        i = items.reindex(frame["item_id"].astype(str).to_numpy()).to_numpy()
        ok = ~(np.isnan(u) | np.isnan(i))
        self.dropped_rows_ = int((~ok).sum())
        mapped = pd.DataFrame({"user": u[ok].astype(np.int64), "item": i[ok].astype(np.int64),
                               "score": frame["score"].to_numpy(np.float32)[ok]})
        self._index(mapped, len(data.user_ids))
        return self

    def _index(self, mapped: pd.DataFrame, n_users: int) -> None:
        mapped = mapped.sort_values(["user", "score", "item"], ascending=[True, False, True], kind="stable")
        self.items_ = mapped["item"].to_numpy(np.int64)
        self.scores_ = mapped["score"].to_numpy(np.float32)
        counts = np.bincount(mapped["user"].to_numpy(), minlength=n_users)
        self.offsets_ = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def retrieve(self, batch: RequestBatch, k: int) -> Retrieved:
        if not hasattr(self, "items_"):
            raise RuntimeError(f"channel '{self.name}': call fit() or load() before retrieve()")
        out = Retrieved.empty(len(batch), k)
        for r, user in enumerate(batch.users):
            if user == PAD or user >= len(self.offsets_) - 1:
                continue  # unknown user: the table has nothing for them
            lo, hi = self.offsets_[user], self.offsets_[user + 1]
            cand, sc = self.items_[lo:hi], self.scores_[lo:hi]
            keep = ~np.isin(cand, batch.seen_of(r))
            cand, sc = cand[keep][:k], sc[keep][:k]
            out.items[r, : len(cand)] = cand
            out.scores[r, : len(cand)] = sc
        return out

    def save(self, path: Path) -> None:
        path = Path(path)
        users = np.repeat(np.arange(len(self.offsets_) - 1), np.diff(self.offsets_))
        atomic_write_parquet(path / "table.parquet", pd.DataFrame({"user": users, "item": self.items_, "score": self.scores_}))
        atomic_write_json(path / "params.json", {"name": self.name, "path": self.config.path,
                                                 "n_users": len(self.offsets_) - 1, "dropped_rows": self.dropped_rows_})

    @classmethod
    def load(cls, path: Path) -> "CandidateTableChannel":
        path = Path(path)
        meta = read_json(path / "params.json")
        ch = cls(name=meta["name"], path=meta["path"])
        ch.dropped_rows_ = meta["dropped_rows"]
        ch._index(pd.read_parquet(path / "table.parquet"), int(meta["n_users"]))
        return ch
