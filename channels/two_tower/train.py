"""Training of the two towers: every position of every training sequence is a target.

Loss (TrainConfig.loss):
- 'full': softmax cross-entropy over the whole catalog (cheap at ~10k items).
- 'sampled': sampled softmax over the batch's unique targets (in-batch negatives) plus
  `n_negatives` items drawn from a uniform or popularity**power sampler, with the logQ
  correction: every candidate's logit is reduced by log P(candidate is in the set).
Windows, batches and the loop (early stopping on validation N@10, best weights restored, else a
fixed number of epochs) are the shared ones of channels/sequence.py.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from channels.sequence import (
    FitReport, LoopConfig, NegativeSampler, Windows, train_loop, trim, user_sequences,
)
from channels.two_tower.model import ItemInputs, TwoTowerModel
from pipeline.core import data_parallel, device
from pipeline.core.types import PAD

log = logging.getLogger(__name__)
LOSSES = ("full", "sampled")
WEIGHTINGS = ("batch", "target")
SAMPLERS = ("uniform", "popularity")


@dataclass(frozen=True)
class TrainConfig:
    loss: str = "full"  # 'full' softmax over the catalog or 'sampled' negatives
    n_negatives: int = 1024  # 'sampled': items drawn per batch
    sampler: str = "popularity"  # 'uniform' or 'popularity' negatives
    sampler_power: float = 0.75  # popularity sampler: frequency ** this
    temperature: float = 1.0  # logits are divided by this
    weighting: str = "batch"  # 'batch': mean loss of each batch; 'target': every target weighs the same
    lr: float = 1e-3  # Adam learning rate
    weight_decay: float = 0.0  # weight decay
    batch_size: int = 128  # training windows per step
    max_epochs: int = 60  # epochs at most with early stopping
    patience: int = 5  # epochs without a better validation N@10 before stopping
    epochs: int = 20  # fixed epoch count when there is no validation data
    max_len: int = 50
    seed: int = 0
    eval_batch_size: int = 1024  # validation requests per block
    progress: bool = True

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


@dataclass(frozen=True)
class Requests:
    """Evaluation requests: left-padded histories and one target per row."""

    history: np.ndarray  # int64 [U, L]
    times: np.ndarray  # int64 [U, L]
    targets: np.ndarray  # int64 [U]


def build_requests(history: pd.DataFrame, targets: pd.DataFrame, max_len: int) -> Requests:
    """One request per target row: the user's history rows (last max_len), left-padded, rows
    ordered by history length."""
    users, seqs, tseqs = user_sequences(history)
    tg = targets.sort_values("user_id", kind="stable")
    t_users = tg["user_id"].to_numpy(np.int64)
    pos = np.searchsorted(users, t_users)
    known = np.zeros(len(t_users), bool)
    if len(users):
        known = (pos < len(users)) & (users[np.minimum(pos, len(users) - 1)] == t_users)
    hist = np.full((len(tg), max_len), PAD, np.int64)
    times = np.zeros((len(tg), max_len), np.int64)
    for r in np.flatnonzero(known):
        s, t = seqs[pos[r]][-max_len:], tseqs[pos[r]][-max_len:]
        hist[r, max_len - len(s) :], times[r, max_len - len(s) :] = s, t
    order = np.argsort((hist != PAD).sum(1), kind="stable")  # similar lengths batch together (less padding)
    return Requests(hist[order], times[order], np.array(tg["item_id"].to_numpy(np.int64))[order])


@torch.no_grad()
def evaluate(model: TwoTowerModel, items: ItemInputs, req: Requests, k: int = 10, batch_size: int = 1024) -> dict:
    """R@k / N@k over the full catalog with each row's history excluded (the SPEC protocol)."""
    model.eval()
    raw = model.item_tower(items)  # (N, d)
    vecs = model.output(raw)  # (N, d)
    ranks = []
    for lo in range(0, len(req.targets), batch_size):
        hist, times = trim(req.history[lo : lo + batch_size], req.times[lo : lo + batch_size])
        h = device.tensor(hist)  # (B, L)
        u = model.user_states(raw, h, device.tensor(times))[:, -1]  # (B, d)
        scores = u @ vecs.T  # (B, N)
        rows, cols = np.nonzero(hist != PAD)
        scores[rows, hist[rows, cols]] = -torch.inf
        tgt = device.tensor(req.targets[lo : lo + batch_size])  # (B,)
        t_score = scores.gather(1, tgt[:, None])  # (B, 1)
        rank = (scores > t_score).sum(1).double()  # (B,)
        ranks.append(torch.where(torch.isfinite(t_score[:, 0]), rank, torch.full_like(rank, np.inf)))
    rank = torch.cat(ranks)  # (U,)
    hit = rank < k
    return {f"R@{k}": float(hit.double().mean()), f"N@{k}": float((hit / torch.log2(rank + 2)).mean())}


def full_loss(model: TwoTowerModel, items: ItemInputs, inputs: torch.Tensor, times: torch.Tensor,
              targets: torch.Tensor, temperature: float) -> torch.Tensor:
    raw = model.item_tower(items)  # (N, d)
    states = model.user_states(raw, inputs, times)  # (B, L, d)
    has_t = targets >= 0  # (B, L)
    logits = (states[has_t] / temperature) @ model.output(raw).T  # (P, N) scale the small side
    return F.cross_entropy(logits, targets[has_t])


def sampled_loss(model: TwoTowerModel, items: ItemInputs, inputs: torch.Tensor, times: torch.Tensor,
                 targets: torch.Tensor, cfg: TrainConfig, sampler: NegativeSampler,
                 rng: np.random.Generator) -> torch.Tensor:
    has_t = targets >= 0  # (B, L)
    pos = targets[has_t]  # (P,)
    negs = device.tensor(sampler.sample(cfg.n_negatives, rng))  # (S,)
    cand, cand_inv = torch.unique(torch.cat([pos, negs]), return_inverse=True)  # (C,), (P+S,)
    needed, needed_inv = torch.unique(torch.cat([cand, inputs[inputs >= 0]]), return_inverse=True)  # (M,)
    raw = model.item_tower(items.take(needed))  # (M, d) only the items this batch touches
    local = torch.full((len(items),), PAD, dtype=torch.long)  # (N,) item id -> row of `raw`
    local[needed] = torch.arange(len(needed))
    hist = torch.where(inputs >= 0, local[inputs.clamp(min=0)], inputs)  # (B, L)
    u = model.user_states(raw, hist, times)[has_t]  # (P, d)
    c = model.output(raw[needed_inv[: len(cand)]])  # (C, d)
    log_q = device.tensor(sampler.log_q(device.numpy(cand), len(pos), cfg.n_negatives)).float()  # (C,)
    logits = (u / cfg.temperature) @ c.T - log_q  # (P, C)
    return F.cross_entropy(logits, cand_inv[: len(pos)])


def n_batches(windows: Windows, batch_size: int, chunk: int = 50) -> int:
    """How many batches `batches` cuts the windows into (independent of the shuffle)."""
    n, span = len(windows.lengths), batch_size * chunk
    return sum(-(-min(span, n - lo) // batch_size) for lo in range(0, n, span))


def fit_model(model: TwoTowerModel, items: ItemInputs, windows: Windows, cfg: TrainConfig,
              valid: Requests | None = None) -> FitReport:
    """Train in place (channels/sequence.train_loop); with `valid`, early-stop on N@10 and
    restore the best weights, else run cfg.epochs epochs."""
    rng = np.random.default_rng(cfg.seed)
    freq = np.bincount(windows.targets[windows.targets >= 0], minlength=len(items)).astype(np.float64)
    sampler = NegativeSampler(freq, cfg.sampler, cfg.sampler_power)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    per_batch = float((windows.targets >= 0).sum()) / max(n_batches(windows, cfg.batch_size), 1)  # targets in an average batch

    def step(rows: np.ndarray) -> dict[str, float]:
        arrays = trim(windows.inputs[rows], windows.times[rows], windows.targets[rows])
        inputs, times, targets = (device.tensor(a) for a in arrays)  # (b, L) each
        if cfg.loss == "full":
            loss = full_loss(model, items, inputs, times, targets, cfg.temperature)
        else:
            loss = sampled_loss(model, items, inputs, times, targets, cfg, sampler, rng)
        if cfg.weighting == "target":  # batches of long sequences hold more targets: weigh them by it
            loss = loss * (float((targets >= 0).sum()) / per_batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        data_parallel.average_gradients(model.parameters())  # no-op in one process
        opt.step()
        return {"loss": loss.item()}

    evaluate_fn = (lambda: evaluate(model, items, valid, 10, cfg.eval_batch_size)) if valid is not None else None
    loop = LoopConfig(max_epochs=cfg.max_epochs, patience=cfg.patience, epochs=cfg.epochs, progress=cfg.progress,
                      name="two_tower")
    return train_loop(model, windows, cfg.batch_size, rng, step, loop, evaluate_fn)
