"""Keeps the pool's fused score: the cascade runs before a learned ranker is trained."""
from __future__ import annotations

import numpy as np

from pipeline.core.types import CandidateSet, RequestBatch


class PassThroughRanker:
    name = "passthrough"

    def score(self, batch: RequestBatch, pools: list[CandidateSet]) -> list[np.ndarray]:
        return [p.scores.astype(np.float32, copy=True) for p in pools]
