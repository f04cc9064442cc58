"""Ranker training data without leakage: folds strictly before the evaluated stage.

A ranker is trained on candidate pools made by channels that never saw the ranker's labels:
- for the test stage, fold 0 is (history = split.history('valid'), targets = the validation items);
- for the validation stage, fold 0 is the same step one item earlier: a split of the train part
  (`make_split(split.history('valid'))`) gives history = train minus each user's last train item,
  targets = that item. Further folds (`n_folds` > 1) keep stepping back the same way.
For each fold the channels are fitted on the fold's history only, pools are built for the fold's
targets (request time = the target's time, or the last history time under `eval.request_time:
last`), the cross features are point-in-time from the fold's
history, and label = the target item. Only pools that contain their target carry a gradient for a
listwise or lambdarank loss, so only those are kept; the counts are reported.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from pipeline.core.evalset import build_eval_set
from pipeline.core.protocols import FitData
from pipeline.core.splits import Split
from pipeline.core.types import CandidateSet, RequestBatch
from rankers.features import CrossFeatures

PoolFn = Callable[[RequestBatch], list[CandidateSet]]


@dataclass(frozen=True)
class Fold:
    """One block of ranker labels: `targets` (one row per user) predicted from `history`."""

    name: str
    history: pd.DataFrame
    targets: pd.DataFrame


def ranking_folds(split: Split, stage: str, n_folds: int, make_split: Callable[[pd.DataFrame], Split]) -> list[Fold]:
    """The `n_folds` label folds available when evaluating `stage`, most recent first. None of them
    holds a target of `stage` (or of a later stage) in its history or its targets."""
    if n_folds < 1:
        raise ValueError(f"ranker training needs at least one fold, got n_folds={n_folds}")
    if stage not in ("valid", "test"):
        raise ValueError(f"unknown stage {stage!r}; expected 'valid' or 'test'")
    folds: list[Fold] = []
    if stage == "test":
        folds.append(Fold("valid", split.history("valid"), split.targets("valid")))
    source, depth = split.history("valid"), 1
    while len(folds) < n_folds:
        inner = make_split(source)
        for st in ("test", "valid"):
            if len(folds) < n_folds and len(inner.targets(st)):
                folds.append(Fold(f"back{depth}-{st}", inner.history(st), inner.targets(st)))
        if not len(inner.targets("valid")):
            break  # histories too short to step back further
        source, depth = inner.history("valid"), depth + 1
    return folds


def fold_fit_data(fold: Fold, like: FitData) -> FitData:
    """FitData for fitting channels (and features) of one fold: its history only, no valid rows."""
    return replace(like, train=fold.history, valid=None, valid_history=None)


def fold_requests(fold: Fold, max_history: int, request_time: str = "target"):
    """An EvalSet of the fold: each target's user history before it; request time = the target's
    time, or with `request_time='last'` the user's last history time (time-free training)."""
    empty = fold.targets.iloc[:0]
    return build_eval_set(Split("fold", fold.history, fold.targets, empty), "valid", max_history,
                          request_time=request_time)


@dataclass
class RankingData:
    """Labelled pools, columnar. Group g is rows offsets[g]:offsets[g+1] of `features` / `items`;
    `positive[g]` is the index of the target inside its group. History arrays are per group."""

    channels: tuple[str, ...]
    names: tuple[str, ...]
    features: np.ndarray  # float32 [N, F]
    items: np.ndarray  # int64 [N]
    offsets: np.ndarray  # int64 [G + 1]
    positive: np.ndarray  # int64 [G]
    users: np.ndarray  # int64 [G]
    history: np.ndarray  # int64 [G, L], PAD on the left
    history_times: np.ndarray  # int64 [G, L]
    lengths: np.ndarray  # int64 [G]
    now: np.ndarray  # int64 [G]
    fold: np.ndarray  # int64 [G]
    stats: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.positive.shape[0])

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    def labels(self) -> np.ndarray:
        """float32 [N]: 1 for each group's target row, else 0."""
        y = np.zeros(self.items.shape[0], np.float32)
        y[self.offsets[:-1] + self.positive] = 1.0
        return y

    def batch(self, groups: np.ndarray) -> RequestBatch:
        g = np.asarray(groups)
        return RequestBatch(self.users[g], self.history[g], self.history_times[g], self.lengths[g], self.now[g])

    def take(self, groups: np.ndarray) -> "RankingData":
        g = np.asarray(groups, np.int64)
        sizes = self.sizes[g]
        new_offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        rows = np.arange(int(new_offsets[-1])) + np.repeat(self.offsets[g] - new_offsets[:-1], sizes)
        return RankingData(
            self.channels, self.names, self.features[rows], self.items[rows], new_offsets,
            self.positive[g], self.users[g], self.history[g], self.history_times[g], self.lengths[g], self.now[g],
            self.fold[g], self.stats,
        )

    def split_holdout(self, fraction: float, seed: int) -> tuple["RankingData", "RankingData"]:
        """(train, holdout): a seeded share of fold-0 users is held out for early stopping: their
        fold-0 groups form the holdout and none of their groups (of any fold) is trained on, so
        early stopping scores users the ranker never saw."""
        users = np.unique(self.users[self.fold == 0])
        rng = np.random.default_rng(seed)
        held = rng.choice(users, size=int(round(fraction * len(users))), replace=False)
        of_held = np.isin(self.users, held)
        return self.take(np.flatnonzero(~of_held)), self.take(np.flatnonzero(of_held & (self.fold == 0)))

    _ARRAYS = ("features", "items", "offsets", "positive", "users", "history", "history_times", "lengths", "now", "fold")

    def save(self, path: Path) -> None:
        """One .npz (no pickle): arrays, plus channels / names / stats as JSON text."""
        meta = json.dumps({"channels": list(self.channels), "names": list(self.names), "stats": self.stats})
        np.savez(path if hasattr(path, "write") else Path(path), meta=np.array(meta),
                 **{a: getattr(self, a) for a in self._ARRAYS})

    def to_bytes(self) -> bytes:
        """The .npz of `save`, in memory (how Ray workers hand their part back: no pickle)."""
        buf = io.BytesIO()
        self.save(buf)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "RankingData":
        return cls.load(io.BytesIO(data))

    @classmethod
    def load(cls, path: Path) -> "RankingData":
        with np.load(path if hasattr(path, "read") else Path(path), allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            arrays = {a: z[a] for a in cls._ARRAYS}
        return cls(tuple(meta["channels"]), tuple(meta["names"]), stats=meta["stats"], **arrays)

    @classmethod
    def concat(cls, parts: list["RankingData"]) -> "RankingData":
        if not parts:
            raise ValueError("RankingData.concat needs at least one part")
        width = max(p.history.shape[1] for p in parts)

        def pad(a: np.ndarray, value: int) -> np.ndarray:
            return np.pad(a, ((0, 0), (width - a.shape[1], 0)), constant_values=value)

        sizes = np.concatenate([p.sizes for p in parts])
        return cls(
            parts[0].channels, parts[0].names, np.concatenate([p.features for p in parts]),
            np.concatenate([p.items for p in parts]), np.concatenate([[0], np.cumsum(sizes)]),
            *(np.concatenate([getattr(p, a) for p in parts]) for a in ("positive", "users")),
            np.concatenate([pad(p.history, -1) for p in parts]), np.concatenate([pad(p.history_times, 0) for p in parts]),
            *(np.concatenate([getattr(p, a) for p in parts]) for a in ("lengths", "now", "fold")),
            [s for p in parts for s in p.stats],
        )


def collect_range(fold_index: int, ev, lo: int, hi: int, pools_of: PoolFn, features: CrossFeatures,
                  batch_size: int = 1024, progress: Callable | None = None) -> tuple[RankingData | None, int, list[int]]:
    """Rows lo:hi of the fold's requests, `batch_size` at a time: (kept groups or None, targets
    found in their pool, pool sizes). Ranges that start on a multiple of `batch_size` give the
    same batches as one pass over all rows, so split ranges concatenate to the same arrays."""
    parts, n_pos, pool_sizes = [], 0, []
    starts = range(lo, hi, batch_size)
    for start in (progress(starts) if progress else starts):
        rows = np.arange(start, min(start + batch_size, hi))
        batch = ev.batch.take(rows)
        pools = pools_of(batch)
        pool_sizes += [len(p) for p in pools]
        hit = [np.flatnonzero(p.items == t) for p, t in zip(pools, ev.targets[rows])]
        keep = np.array([len(h) > 0 for h in hit], bool)
        n_pos += int(keep.sum())
        if not keep.any():
            continue
        kept = [p for p, k in zip(pools, keep) if k]
        sub = batch.take(np.flatnonzero(keep))
        block = features.transform(sub, kept)
        g = len(kept)
        parts.append(RankingData(
            features.channels, block.names, block.values, block.items, block.offsets,
            np.array([h[0] for h, k in zip(hit, keep) if k], np.int64), sub.users, sub.history, sub.history_times,
            sub.lengths, sub.now, np.full(g, fold_index, np.int64),
        ))
    return (RankingData.concat(parts) if parts else None), n_pos, pool_sizes


# (fold_index, eval set, pools_of, features, batch_size) -> the `collect_range` results of
# consecutive ranges covering every row, in row order (pipeline/scale.py spreads them over Ray)
RangeRunner = Callable[[int, object, PoolFn, CrossFeatures, int], list[tuple[RankingData | None, int, list[int]]]]


def collect(fold_index: int, fold: Fold, pools_of: PoolFn, features: CrossFeatures, max_history: int,
            batch_size: int = 1024, progress: Callable | None = None, request_time: str = "target",
            runner: RangeRunner | None = None) -> RankingData:
    """Pools and features for every target of `fold`; keeps the groups whose pool holds the target.
    `runner` computes the ranges elsewhere (Ray workers); None: here, one pass."""
    ev = fold_requests(fold, max_history, request_time)
    if runner is None:
        results = [collect_range(fold_index, ev, 0, len(ev), pools_of, features, batch_size, progress)]
    else:
        results = runner(fold_index, ev, pools_of, features, batch_size)
    parts = [r[0] for r in results if r[0] is not None]
    n_pos = sum(r[1] for r in results)
    pool_sizes = [n for r in results for n in r[2]]
    stats = {"fold": fold.name, "requests": len(ev), "with_target_in_pool": n_pos,
             "pool_recall": n_pos / max(len(ev), 1), "mean_pool_size": float(np.mean(pool_sizes)) if pool_sizes else 0.0}
    if not parts:
        raise ValueError(f"fold {fold.name}: no pool contains its target; the channels find nothing to rank")
    out = RankingData.concat(parts)
    out.stats = [stats]
    return out
