"""Orders by score and cuts to k; reasons name the channels that found each item."""
from __future__ import annotations

import numpy as np

from pipeline.core.types import CandidateSet, RequestBatch


class PassThroughReRanker:
    name = "passthrough"

    def rerank(self, batch: RequestBatch, pools: list[CandidateSet], k: int) -> list[CandidateSet]:
        out = []
        for pool in pools:
            order = np.lexsort((pool.items, -pool.scores))[:k]
            chosen = pool.select(order)
            chosen.reasons = [[f"channel:{c}" for c in chosen.found_by(i)] for i in range(len(chosen))]
            out.append(chosen)
        return out
