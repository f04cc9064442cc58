"""`hybridrec ab report`: per-arm CTR-style metrics of an online experiment, with intervals.

Inputs: the served-list log (`served-*.jsonl`, one record per answered request) and feedback:
the `feedback-*.jsonl` records written by POST /feedback, and/or imported files (JSONL, CSV or
Parquet) with `request_id, item_id[, event]`, or `user_id, item_id, time` (unix seconds) which are
attributed to that user's latest served list at or before `time` that showed the item.

Per served list: clicked (any click), clicks, reciprocal rank of the best-placed click. Per arm:
lists, users, CTR = clicked lists / lists, clicks per list, MRR, each with a percentile bootstrap
interval that resamples USERS (lists of one user are correlated), and the difference to the
control arm with an interval from independent user resamples of the two arms (arms hold different
users, so the paired bootstrap of pipeline.evaluation.bootstrap, which needs the same users in
both arms, does not apply here). Forced-arm requests are left out unless asked for.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.serving.eventlog import read_events

METRICS = ("ctr", "clicks_per_list", "mrr")


def load_served(folder: str | Path) -> pd.DataFrame:
    rows = [r for r in read_events(Path(folder), "served") if r.get("type") == "served"]
    cols = ["request_id", "time", "user_id", "arm", "experiment", "forced", "items", "fallback"]
    return pd.DataFrame([{c: r.get(c) for c in cols} for r in rows], columns=cols)


def load_feedback(folder: str | Path | None, files: list[str | Path] = ()) -> pd.DataFrame:
    frames = []
    if folder is not None:
        frames.append(pd.DataFrame([r for r in read_events(Path(folder), "feedback") if r.get("type") == "feedback"]))
    for f in files:
        p = Path(f)
        if not p.is_file():
            raise FileNotFoundError(f"feedback file {p} not found")
        if p.suffix == ".parquet":
            frames.append(pd.read_parquet(p))
        elif p.suffix in (".jsonl", ".json"):
            frames.append(pd.DataFrame(list(read_events(p))))
        else:
            frames.append(pd.read_csv(p, sep=None, engine="python", dtype=str))
    cols = ["request_id", "item_id", "event", "user_id", "time"]
    out = pd.concat([f.reindex(columns=cols) for f in frames if len(f)], ignore_index=True) if frames else pd.DataFrame(columns=cols)
    out["event"] = out["event"].astype(object).where(out["event"].notna(), "click")
    return out


def attribute(served: pd.DataFrame, feedback: pd.DataFrame) -> pd.DataFrame:
    """Give every feedback row a request_id: kept when present, else the user's latest list at or
    before its time that showed the item (rows with no such list are dropped)."""
    has = feedback["request_id"].notna() & (feedback["request_id"].astype(str) != "")
    known = feedback[has]
    rest = feedback[~has].dropna(subset=["user_id", "item_id", "time"])
    if len(rest) == 0 or len(served) == 0:
        return known
    shown = served[["request_id", "user_id", "time", "items"]].explode("items").rename(columns={"items": "item_id"})
    shown = shown.astype({"user_id": str, "item_id": str, "time": float})
    rest = rest.astype({"user_id": str, "item_id": str, "time": float}).drop(columns=["request_id"])
    joined = rest.merge(shown, on=["user_id", "item_id"], suffixes=("", "_served"))
    joined = joined[joined["time_served"] <= joined["time"]].sort_values("time_served")
    latest = joined.groupby(["user_id", "item_id", "time"], as_index=False).last()
    return pd.concat([known, latest[["request_id", "item_id", "event", "user_id", "time"]]], ignore_index=True)


def outcomes(served: pd.DataFrame, feedback: pd.DataFrame, event: str = "click") -> pd.DataFrame:
    """One row per served list: arm, user, clicked, clicks, rr."""
    clicks = feedback[feedback["event"] == event].drop_duplicates(["request_id", "item_id"])
    by_request: dict[str, set[str]] = clicks.groupby("request_id")["item_id"].agg(lambda s: set(map(str, s))).to_dict()
    rows = []
    for rec in served.itertuples(index=False):
        hit = by_request.get(rec.request_id, set())
        positions = [p for p, item in enumerate(rec.items) if item in hit]
        rows.append({"request_id": rec.request_id, "arm": rec.arm, "user_id": f"anon:{rec.request_id}" if pd.isna(rec.user_id) else str(rec.user_id),
                     "clicked": float(bool(positions)), "clicks": float(len(positions)),
                     "rr": 1.0 / (min(positions) + 1) if positions else 0.0})
    return pd.DataFrame(rows, columns=["request_id", "arm", "user_id", "clicked", "clicks", "rr"])


def _user_sums(lists: pd.DataFrame) -> dict[str, np.ndarray]:
    g = lists.groupby("user_id").agg(n=("clicked", "size"), clicked=("clicked", "sum"), clicks=("clicks", "sum"), rr=("rr", "sum"))
    return {"n": g["n"].to_numpy(np.float64), "ctr": g["clicked"].to_numpy(np.float64),
            "clicks_per_list": g["clicks"].to_numpy(np.float64), "mrr": g["rr"].to_numpy(np.float64)}


def _boot_ratios(sums: dict[str, np.ndarray], n_boot: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per metric, n_boot ratio-of-sums estimates over user resamples (one shared draw per
    resample), drawn in chunks of at most ~4M indices."""
    n_users = sums["n"].shape[0]
    out = {m: np.empty(n_boot, np.float64) for m in METRICS}
    step = max(1, (1 << 22) // n_users)
    for start in range(0, n_boot, step):
        stop = min(start + step, n_boot)
        idx = rng.integers(0, n_users, size=(stop - start, n_users))  # [chunk, users]
        den = sums["n"][idx].sum(axis=1)
        for m in METRICS:
            out[m][start:stop] = sums[m][idx].sum(axis=1) / den
    return out


def _interval(samples: np.ndarray, level: float) -> list[float]:
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(samples, [a, 1.0 - a])
    return [round(float(lo), 6), round(float(hi), 6)]


def report(served: pd.DataFrame, feedback: pd.DataFrame, *, control: str | None = None, n_boot: int = 1000,
           level: float = 0.95, seed: int = 0, include_forced: bool = False) -> dict[str, Any]:
    if not include_forced and len(served):
        served = served[~served["forced"].fillna(False).astype(bool)]
    if len(served) == 0:
        raise ValueError("no served lists to report on (is the log folder right? forced-arm requests are left out)")
    lists = outcomes(served, attribute(served, feedback))
    arms = sorted(lists["arm"].unique())
    control = control or ("control" if "control" in arms else arms[0])
    if control not in arms:
        raise ValueError(f"control arm {control!r} has no served lists; arms: {arms}")
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"control": control, "level": level, "n_boot": n_boot, "arms": {}}
    boots = {}
    for arm in arms:
        part = lists[lists["arm"] == arm]
        sums = _user_sums(part)
        boots[arm] = _boot_ratios(sums, n_boot, rng)
        entry: dict[str, Any] = {"lists": int(len(part)), "users": int(sums["n"].shape[0])}
        for m in METRICS:
            entry[m] = round(float(sums[m].sum() / sums["n"].sum()), 6)
            entry[f"{m}_ci"] = _interval(boots[arm][m], level)
        out["arms"][arm] = entry
    for arm in arms:
        if arm != control:
            out["arms"][arm]["vs_control"] = {
                m: {"diff": round(out["arms"][arm][m] - out["arms"][control][m], 6),
                    "ci": _interval(boots[arm][m] - boots[control][m], level)} for m in METRICS
            }
    return out


def format_report(rep: dict[str, Any]) -> str:
    lines = [f"control: {rep['control']}  ({int(rep['level'] * 100)}% intervals, {rep['n_boot']} user resamples)",
             f"{'arm':<16}{'lists':>7}{'users':>7}  {'CTR':<28}{'clicks/list':<28}{'MRR':<28}"]
    for arm, e in rep["arms"].items():
        cells = "".join(f"{e[m]:.4f} [{e[m + '_ci'][0]:.4f}, {e[m + '_ci'][1]:.4f}]".ljust(28) for m in METRICS)
        lines.append(f"{arm:<16}{e['lists']:>7}{e['users']:>7}  {cells}")
        if "vs_control" in e:
            diff = "".join(f"{d['diff']:+.4f} [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}]".ljust(28) for d in e["vs_control"].values())
            lines.append(f"{'  - control':<30}  {diff}")
    return "\n".join(lines)
