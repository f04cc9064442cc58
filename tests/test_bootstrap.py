"""Paired bootstrap: known differences, identical arms, determinism, chunking and error paths."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluation import bootstrap as B
from pipeline.evaluation.bootstrap import BootstrapResult, compare_arms, paired_bootstrap


def arms(n: int = 5000, shift: float = 0.05, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-user hit indicators: b gains a hit over a for a Bernoulli(shift) share of a's misses."""
    rng = np.random.default_rng(seed)
    a = (rng.random(n) < 0.3).astype(np.float64)
    gain = (rng.random(n) < shift / 0.7) & (a == 0)
    return a, np.maximum(a, gain.astype(np.float64))


def test_known_difference_is_inside_interval_and_significant():
    a, b = arms()
    res = paired_bootstrap(a, b, n_boot=500, seed=1, metric="R@10")
    assert res.metric == "R@10" and res.n_boot == 500 and res.level == 0.95
    assert res.diff == pytest.approx(b.mean() - a.mean())
    assert res.mean_a == pytest.approx(a.mean()) and res.mean_b == pytest.approx(b.mean())
    assert res.ci_low <= 0.05 <= res.ci_high
    assert res.ci_low <= res.diff <= res.ci_high
    assert res.ci_low > 0 and res.significant()
    assert res.p_value == pytest.approx(2 / 501)  # no resample reaches 0: floor of the estimate


def test_negative_difference_is_significant_below_zero():
    a, b = arms(seed=3)
    res = paired_bootstrap(b, a, n_boot=300, seed=0)
    assert res.diff < 0 and res.ci_high < 0 and res.significant()


def test_identical_arms_have_zero_difference():
    a, _ = arms(n=1000)
    res = paired_bootstrap(a, a.copy(), n_boot=200)
    assert res.diff == 0.0 and res.ci_low == 0.0 and res.ci_high == 0.0
    assert res.ci_low <= 0.0 <= res.ci_high and not res.significant()
    assert res.p_value == 1.0


def test_noise_only_difference_is_not_significant():
    rng = np.random.default_rng(7)
    a = rng.random(2000)
    b = a + rng.normal(0.0, 0.1, size=2000)
    b = b - (b - a).mean()  # zero mean difference, up to rounding
    res = paired_bootstrap(a, b, n_boot=400, seed=2)
    assert res.ci_low < 0.0 < res.ci_high and not res.significant() and res.p_value > 0.5


def test_same_seed_same_interval_other_seed_differs():
    rng = np.random.default_rng(4)
    a, b = rng.random(800), rng.random(800)  # continuous, so two seeds cannot tie by chance
    first = paired_bootstrap(a, b, n_boot=300, seed=42)
    assert paired_bootstrap(a, b, n_boot=300, seed=42) == first
    other = paired_bootstrap(a, b, n_boot=300, seed=43)
    assert (other.ci_low, other.ci_high) != (first.ci_low, first.ci_high)


def test_chunking_does_not_change_the_draws(monkeypatch):
    a, b = arms(n=600)
    whole = paired_bootstrap(a, b, n_boot=120, seed=5)
    monkeypatch.setattr(B, "_MAX_DRAWS_PER_CHUNK", 600 * 7)  # 7 resamples per chunk, ragged end
    assert paired_bootstrap(a, b, n_boot=120, seed=5) == whole


def test_matches_loop_reference():
    a, b = arms(n=300, seed=9)
    rng = np.random.default_rng(11)
    diffs = []
    for _ in range(100):
        idx = rng.integers(0, 300, size=300)
        diffs.append(np.mean(b[idx] - a[idx]))
    res = paired_bootstrap(a, b, n_boot=100, level=0.9, seed=11)
    low, high = np.quantile(diffs, [0.05, 0.95])
    assert res.ci_low == pytest.approx(low) and res.ci_high == pytest.approx(high)
    below = (sum(d <= 0 for d in diffs) + 1) / 101
    above = (sum(d >= 0 for d in diffs) + 1) / 101
    assert res.p_value == pytest.approx(min(1.0, 2 * min(below, above)))


def test_to_dict_is_plain_and_complete():
    res = BootstrapResult("N@10", 0.1, 0.2, 0.1, 0.05, 0.15, 0.95, 100, 0.01)
    out = res.to_dict()
    assert out == {"metric": "N@10", "mean_a": 0.1, "mean_b": 0.2, "diff": 0.1, "ci_low": 0.05,
                   "ci_high": 0.15, "level": 0.95, "n_boot": 100, "p_value": 0.01, "significant": True}
    assert not BootstrapResult("m", 0, 0, 0, -0.1, 0.1, 0.95, 10, 1.0).significant()


@pytest.mark.parametrize(
    ("a", "b", "kw", "message"),
    [
        (np.zeros(3), np.zeros(4), {}, "same length, got 3 and 4"),
        (np.zeros(0), np.zeros(0), {}, "a and b are empty"),
        (np.zeros(3), np.zeros(3), {"level": 1.0}, r"level must be in \(0, 1\), got 1.0"),
        (np.zeros(3), np.zeros(3), {"level": 0.0}, r"level must be in \(0, 1\), got 0.0"),
        (np.zeros(3), np.zeros(3), {"n_boot": 0}, "n_boot must be >= 1, got 0"),
        (np.zeros((3, 1)), np.zeros((3, 1)), {}, "must be 1-D"),
        (np.array([0.0, np.nan]), np.zeros(2), {}, "must be finite"),
    ],
)
def test_errors_are_clear(a, b, kw, message):
    with pytest.raises(ValueError, match=message):
        paired_bootstrap(a, b, **kw)


def test_compare_arms():
    a, b = arms(n=1000)
    per_user = {"base": {"R@10": a, "N@10": a * 0.5}, "new": {"R@10": b, "N@10": b * 0.5},
                "same": {"R@10": a.copy(), "N@10": a * 0.5}}
    out = compare_arms(per_user, "base", ["R@10", "N@10"], n_boot=100, seed=3)
    assert set(out) == {"new", "same"} and set(out["new"]) == {"R@10", "N@10"}
    assert out["new"]["R@10"] == paired_bootstrap(a, b, n_boot=100, seed=3, metric="R@10").to_dict()
    assert out["new"]["N@10"]["diff"] == pytest.approx(0.5 * (b.mean() - a.mean()))
    assert out["same"]["R@10"]["diff"] == 0.0 and not out["same"]["R@10"]["significant"]
    with pytest.raises(ValueError, match="control arm 'nope' not found; arms are"):
        compare_arms(per_user, "nope", ["R@10"])
    with pytest.raises(ValueError, match=r"arm 'new' has no per-user values for metrics \['MRR'\]"):
        compare_arms({"base": {"MRR": a}, "new": {}}, "base", ["MRR"])
