"""Evaluation splits over canonical interactions: per-user leave-one-out and a global temporal
split. `Split.history(stage)` is everything a model may fit on or use as history when predicting
`stage`; the targets of that stage are never part of it (point-in-time)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


STAGES = ("valid", "test")


def sort_interactions(frame: pd.DataFrame) -> pd.DataFrame:
    """Canonical order (user_id, timestamp, seq), index reset."""
    order = np.lexsort((frame["seq"].to_numpy(), frame["timestamp"].to_numpy(), frame["user_id"].to_numpy()))
    return frame.iloc[order].reset_index(drop=True)


@dataclass(frozen=True, eq=False)
class Split:
    """train: what models fit on for validation; valid/test: at most one target row per user.

    test_history: the history for the test stage when it is not simply train + valid (temporal
    split: every row before the test cut); cutoffs: the (valid, test) cut times of a temporal split.
    """

    kind: str
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    test_history: pd.DataFrame | None = None
    cutoffs: tuple[int, int] | None = None

    def history(self, stage: str) -> pd.DataFrame:
        """Interactions usable as fit data / history when predicting `stage`, canonical order."""
        _check_stage(stage)
        if stage == "valid":
            return self.train
        if self.test_history is not None:
            return self.test_history
        return sort_interactions(pd.concat([self.train, self.valid], ignore_index=True))

    def targets(self, stage: str) -> pd.DataFrame:
        """The held-out rows of `stage` ('valid' or 'test')."""
        _check_stage(stage)
        return self.valid if stage == "valid" else self.test


def _check_stage(stage: str) -> None:
    if stage not in STAGES:
        raise ValueError(f"unknown split stage {stage!r}; expected one of {list(STAGES)}")


def leave_one_out(interactions: pd.DataFrame) -> Split:
    """Per user: last row = test, second to last = valid, the rest = train. Users with fewer
    than 3 interactions keep everything in train (no targets)."""
    frame = sort_interactions(interactions)
    by_user = frame.groupby("user_id", sort=False)
    from_end = by_user.cumcount(ascending=False).to_numpy()
    eligible = by_user["user_id"].transform("size").to_numpy() >= 3
    is_test = eligible & (from_end == 0)
    is_valid = eligible & (from_end == 1)
    train = frame[~(is_test | is_valid)].reset_index(drop=True)
    return Split(
        kind="leave_one_out",
        train=train,
        valid=frame[is_valid].reset_index(drop=True),
        test=frame[is_test].reset_index(drop=True),
        test_history=frame[~is_test].reset_index(drop=True),
    )


def temporal_split(
    interactions: pd.DataFrame, valid_quantile: float = 0.8, test_quantile: float = 0.9
) -> Split:
    """Global cut times t_v < t_t at timestamp quantiles (np.quantile method 'higher', so each
    cut is an observed timestamp). history('valid') = rows before t_v,
    history('test') = rows before t_t; a user's valid target is their first row in [t_v, t_t)
    if they have a row before t_v; their test target is their first row at or after t_t if they
    have a row before t_t."""
    if not 0.0 < valid_quantile < test_quantile < 1.0:
        raise ValueError(f"need 0 < valid_quantile < test_quantile < 1, got {valid_quantile}, {test_quantile}")
    frame = sort_interactions(interactions)
    times = frame["timestamp"].to_numpy()
    if len(times) == 0:
        raise ValueError("temporal_split needs at least one interaction")
    valid_cut = int(np.quantile(times, valid_quantile, method="higher"))
    test_cut = int(np.quantile(times, test_quantile, method="higher"))
    if not valid_cut < test_cut:
        raise ValueError(
            f"temporal_split: the {valid_quantile} and {test_quantile} timestamp quantiles coincide "
            f"({valid_cut}); timestamps are too coarse for these quantiles"
        )
    before_valid = frame[times < valid_cut].reset_index(drop=True)
    before_test = frame[times < test_cut].reset_index(drop=True)
    window = frame[(times >= valid_cut) & (times < test_cut)]
    return Split(
        kind="temporal",
        train=before_valid,
        valid=_first_rows_of_known_users(window, before_valid),
        test=_first_rows_of_known_users(frame[times >= test_cut], before_test),
        test_history=before_test,
        cutoffs=(valid_cut, test_cut),
    )


def _first_rows_of_known_users(candidates: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
    """Each user's first candidate row, for users who have at least one history row."""
    first = candidates.groupby("user_id", sort=False).head(1)
    known = np.isin(first["user_id"].to_numpy(), history["user_id"].unique())
    return first[known].reset_index(drop=True)
