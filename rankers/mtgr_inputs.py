"""Tensors the MTGR model reads: a request batch's user and history features and the candidate pools
padded to one matrix. Shared by training (rankers.mtgr_train) and scoring (rankers.mtgr_ranker), so
that serving never imports the training loop."""
from __future__ import annotations

import numpy as np
import torch

from pipeline.core import device
from pipeline.core.types import DAY, PAD, RequestBatch
from rankers.mtgr import MTGRInputs


def request_inputs(batch: RequestBatch) -> dict[str, torch.Tensor]:
    """User and history tensors of a RequestBatch (left-padded, most recent last)."""
    hist = batch.history
    valid = hist != PAD
    width = hist.shape[1]
    times = batch.history_times.astype(np.float64)
    now = batch.now.astype(np.float64)[:, None]
    lens = batch.lengths.astype(np.float64)
    first = np.where(valid, times, np.inf).min(axis=1)
    last = times[:, -1]
    has = lens > 0
    user = np.stack([
        np.log1p(lens),
        np.where(has, np.log1p(np.maximum(now[:, 0] - last, 0) / DAY), 0.0),
        np.where(has, np.log1p(np.maximum(last - np.where(has, first, last), 0) / DAY), 0.0),
    ], axis=1)
    return {
        "user": device.tensor(user.astype(np.float32)),
        "hist_items": device.tensor(np.where(valid, hist + 1, 0)),
        "hist_dist": device.tensor(np.broadcast_to(np.arange(width, 0, -1), hist.shape).copy()),
        "hist_age": device.tensor(np.where(valid, np.maximum(now - times, 0), 0).astype(np.float32)),
    }


def candidate_inputs(items: np.ndarray, cross: np.ndarray, offsets: np.ndarray) -> dict[str, torch.Tensor]:
    """Flat candidates of several pools (rows offsets[g]:offsets[g+1]) -> padded (G, M) tensors."""
    sizes = np.diff(offsets)
    g, m = len(sizes), max(int(sizes.max()) if len(sizes) else 0, 1)
    col = np.arange(int(offsets[-1])) - np.repeat(offsets[:-1], sizes)
    row = np.repeat(np.arange(g), sizes)
    cand = np.zeros((g, m), np.int64)
    feat = np.zeros((g, m, cross.shape[1]), np.float32)
    cand[row, col] = items + 1
    feat[row, col] = cross
    return {"cand_items": device.tensor(cand), "cand_cross": device.tensor(feat)}


def make_inputs(batch: RequestBatch, items: np.ndarray, cross: np.ndarray, offsets: np.ndarray) -> MTGRInputs:
    return MTGRInputs(**request_inputs(batch), **candidate_inputs(items, cross, offsets))
