"""Arms of the offline A/B comparison: pipeline variants built from one trained run.

An arm picks a subset of the run's channels, may override quotas and the pool budget, and may
swap the ranker or the re-ranker. All arms are evaluated on the same users of the same split.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from pipeline.cascade import Cascade
from pipeline.config import ArmConfig, ConfigError
from pipeline.core.types import RequestBatch
from pipeline.registry import RANKER_KINDS, RERANKER_KINDS, build_stage
from pipeline.workflow import bind_reranker

DEFAULT_ARM = "cascade"


@dataclass
class Arm:
    name: str
    cascade: Cascade


def _ranker(run, arm: ArmConfig):
    """The arm's ranker: the run's own when the arm sets none, the one trained for this arm in the
    run folder, or a fresh one for a ranker that needs no training (e.g. passthrough)."""
    if arm.ranker is None:
        return run.cascade.ranker
    trained = getattr(run, "rankers", None) or {}
    if arm.name in trained:
        return trained[arm.name]
    ranker = build_stage(arm.ranker, RANKER_KINDS, f"arm '{arm.name}' ranker")
    if callable(getattr(ranker, "fit", None)):
        raise ConfigError(f"arm '{arm.name}': its ranker '{arm.ranker.kind}' must be trained, and the run at "
                          f"{getattr(run, 'path', '?')} holds none for this arm; train the run with this arm in "
                          "the config (`hybridrec train`), which trains every arm's ranker")
    return ranker


def build_arm(run, arm: ArmConfig) -> Arm:
    """A Cascade for `arm` that shares the run's fitted channels (and trained rankers)."""
    names = arm.channels if arm.channels is not None else list(run.cascade.channel_names)
    missing = [n for n in names if n not in run.channels]
    if missing:
        raise ConfigError(f"arm '{arm.name}': the run has no channel(s) {missing}; it has {sorted(run.channels)}")
    names = [n for n in run.channels if n in names]  # the run's order, as an arm's ranker was trained with
    quotas = {n: run.cascade.quotas.get(n, 100) for n in names} | dict(arm.quotas)
    base = run.cascade
    reranker = base.reranker if arm.rerank is None else build_stage(arm.rerank, RERANKER_KINDS, f"arm '{arm.name}' rerank")
    if arm.rerank is not None:
        bind_reranker(reranker, run.dataset, getattr(run, "rerank_vectors", None))
    cascade = Cascade(
        [run.channels[n] for n in names], quotas, ranker=_ranker(run, arm), reranker=reranker,
        budget=arm.budget or base.pool_spec.budget, exclude_seen=base.pool_spec.exclude_seen,
        max_history=base.max_history, fallback=base.fallback,
    )
    return Arm(arm.name, cascade)


def build_arms(run, arms: list[ArmConfig] | None = None) -> list[Arm]:
    """The configured arms, or the run's own cascade as the single arm 'cascade'."""
    arms = arms if arms is not None else list(run.config.arms)
    if not arms:
        return [Arm(DEFAULT_ARM, run.cascade)]
    return [build_arm(run, a) for a in arms]


def request_latency_ms(fn, batch: RequestBatch, n: int, k: int, seed: int = 0) -> np.ndarray:
    """Per-request wall time (ms) of `fn(one_row_batch, k)` over a seeded sample of n rows."""
    rows = np.random.default_rng(seed).choice(len(batch), size=min(n, len(batch)), replace=False)
    fn(batch.take(rows[:1]), k)  # warm-up
    out = np.empty(len(rows))
    for i, r in enumerate(rows):
        one = batch.take(np.array([r]))
        t = time.perf_counter()
        fn(one, k)
        out[i] = (time.perf_counter() - t) * 1e3
    return out


def latency_summary(ms: np.ndarray) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "requests": int(ms.shape[0])}
