"""Online A/B arms: what each arm changes, and deterministic assignment by a salted user hash.

An arm may change the channel set, the quotas, the pool budget, the ranker and the re-ranker's
parameters; whatever it leaves out is the run's own setting. A user id always lands in the same
arm for a given salt (sha256 of 'salt:user_id' mapped to [0, 1) against the cumulative weights);
a request without a user id goes to the first arm (the control). Without an experiment there is
one arm, 'default', which is the run as trained.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from pipeline.config import ChannelConfig, Config, ConfigError, StageConfig
from pipeline.serving.config import ArmConfig, ExperimentConfig

DEFAULT_ARM = "default"


@dataclass(frozen=True)
class ArmPlan:
    """Everything one arm does differently, resolved against the served channels."""

    name: str
    channels: tuple[str, ...]
    quotas: dict[str, int]
    budget: int
    exclude_seen: bool
    ranker: StageConfig
    rerank: StageConfig


class UnknownArm(ValueError):
    """A forced arm that the experiment does not have."""


def _plan(arm: ArmConfig, run: Config, served: dict[str, ChannelConfig]) -> ArmPlan:
    names = tuple(arm.channels) if arm.channels is not None else tuple(served)
    unknown = [n for n in list(names) + list(arm.quotas) if n not in served]
    if unknown:
        raise ConfigError(f"experiment arm '{arm.name}': unknown channel(s) {unknown}; served: {sorted(served)}")
    if not names:
        raise ConfigError(f"experiment arm '{arm.name}': needs at least one channel")
    quotas = {n: arm.quotas.get(n, served[n].quota) for n in names}
    return ArmPlan(
        name=arm.name, channels=names, quotas=quotas, budget=arm.budget or run.pool.budget,
        exclude_seen=run.pool.exclude_seen, ranker=arm.ranker or run.ranker, rerank=arm.rerank or run.rerank,
    )


class ArmTable:
    """The arms of the serving config's experiment, and the salted-hash assignment."""

    def __init__(self, experiment: ExperimentConfig | None, run: Config, served: dict[str, ChannelConfig]) -> None:
        arms = experiment.arms if experiment is not None else [ArmConfig(name=DEFAULT_ARM, weight=1.0)]
        self.experiment = experiment.name if experiment is not None else None
        self.salt = experiment.salt if experiment is not None else ""
        self.plans = {a.name: _plan(a, run, served) for a in arms}
        weights = np.array([a.weight for a in arms], np.float64)
        self.cumulative = np.cumsum(weights / weights.sum())
        self.names = [a.name for a in arms]

    @property
    def control(self) -> str:
        return self.names[0]

    def bucket(self, user_id: str) -> float:
        """The user's position in [0, 1) for this salt."""
        digest = hashlib.sha256(f"{self.salt}:{user_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2.0**64

    def assign(self, user_id: str | None, forced: str | None = None) -> ArmPlan:
        if forced is not None:
            if forced not in self.plans:
                raise UnknownArm(f"unknown arm '{forced}'; arms: {self.names}")
            return self.plans[forced]
        if user_id is None or len(self.names) == 1:
            return self.plans[self.control]
        i = int(np.searchsorted(self.cumulative, self.bucket(user_id), side="right"))
        return self.plans[self.names[min(i, len(self.names) - 1)]]

    def stage_configs(self, which: str) -> dict[str, StageConfig]:
        """arm -> its ranker ('ranker') or re-ranker ('rerank') config."""
        return {name: getattr(plan, which) for name, plan in self.plans.items()}
