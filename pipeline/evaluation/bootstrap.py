"""Paired bootstrap confidence intervals for differences between evaluation arms.

Arms are compared on the same users: each resample draws user indices with replacement and applies
the same indices to both arms, so per-user correlation between arms (the same hard users fail in
both) is kept and the interval is much tighter than two independent intervals would suggest.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np

# Resample indices held in memory at once (int64): 2**22 ~ 32 MiB, whatever the number of users.
_MAX_DRAWS_PER_CHUNK = 1 << 22


@dataclass(frozen=True)
class BootstrapResult:
    """Paired bootstrap of one metric between a control arm `a` and a treatment arm `b`.

    diff = mean_b - mean_a; [ci_low, ci_high] is the percentile interval of the resampled mean
    difference at `level`; p_value is two-sided, read off the same bootstrap distribution.
    """

    metric: str
    mean_a: float
    mean_b: float
    diff: float
    ci_low: float
    ci_high: float
    level: float
    n_boot: int
    p_value: float

    def significant(self) -> bool:
        """True when the interval excludes 0."""
        return self.ci_low > 0.0 or self.ci_high < 0.0

    def to_dict(self) -> dict[str, Any]:
        """Every field plus 'significant', as plain Python numbers (JSON-ready)."""
        return {**asdict(self), "significant": self.significant()}


def _validate(a: np.ndarray, b: np.ndarray, n_boot: int, level: float) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.ndim != 1 or y.ndim != 1:
        raise ValueError(f"a and b must be 1-D per-user arrays, got shapes {x.shape} and {y.shape}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"a and b must be paired by user and have the same length, got {x.shape[0]} and {y.shape[0]}"
        )
    if x.shape[0] == 0:
        raise ValueError("a and b are empty: need at least one user to bootstrap")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("a and b must be finite (found NaN or inf in a per-user metric)")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    return x, y


def _resampled_means(d: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """float64 [n_boot]: mean of d over n_boot resamples of its indices, drawn in bounded chunks."""
    n = d.shape[0]
    rows = max(1, _MAX_DRAWS_PER_CHUNK // n)                          # resamples per chunk
    out = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, rows):
        stop = min(start + rows, n_boot)
        idx = rng.integers(0, n, size=(stop - start, n))              # [rows, n]
        out[start:stop] = d[idx].mean(axis=1)
    return out


def paired_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    metric: str = "",
) -> BootstrapResult:
    """Paired percentile bootstrap of mean(b - a) over users.

    Draws n_boot resamples of user indices with replacement from np.random.default_rng(seed), the
    same indices for a and b. The interval is the [(1-level)/2, (1+level)/2] quantile range of the
    resampled mean differences. p_value = min(1, 2 * min(P(D <= 0), P(D >= 0))) over the resampled
    differences D, each proportion computed as (count + 1) / (n_boot + 1) so it is never exactly 0.
    Memory stays bounded (about 32 MiB of indices) for any number of users and resamples.
    """
    x, y = _validate(a, b, n_boot, level)
    d = y - x                                                         # [n] per-user difference
    boot = _resampled_means(d, n_boot, np.random.default_rng(seed))   # [n_boot]
    alpha = 1.0 - level
    low, high = np.quantile(boot, [alpha / 2.0, 1.0 - alpha / 2.0])
    below = (np.count_nonzero(boot <= 0.0) + 1) / (n_boot + 1)
    above = (np.count_nonzero(boot >= 0.0) + 1) / (n_boot + 1)
    mean_a, mean_b = float(x.mean()), float(y.mean())
    return BootstrapResult(
        metric=metric,
        mean_a=mean_a,
        mean_b=mean_b,
        diff=float(d.mean()),
        ci_low=float(low),
        ci_high=float(high),
        level=float(level),
        n_boot=int(n_boot),
        p_value=float(min(1.0, 2.0 * min(below, above))),
    )


def compare_arms(
    per_user: Mapping[str, Mapping[str, np.ndarray]],
    control: str,
    metrics: Sequence[str],
    **kw: Any,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Bootstrap every non-control arm against `control` on each metric.

    per_user[arm][metric] holds per-user values, aligned by user across arms. Keyword arguments
    (n_boot, level, seed) go to `paired_bootstrap`. Returns {arm: {metric: BootstrapResult.to_dict()}}.
    """
    if control not in per_user:
        raise ValueError(f"control arm {control!r} not found; arms are {sorted(per_user)}")
    for arm, values in per_user.items():
        missing = [m for m in metrics if m not in values]
        if missing:
            raise ValueError(f"arm {arm!r} has no per-user values for metrics {missing}")
    return {
        arm: {
            m: paired_bootstrap(per_user[control][m], values[m], metric=m, **kw).to_dict()
            for m in metrics
        }
        for arm, values in per_user.items()
        if arm != control
    }
