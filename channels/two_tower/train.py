"""Training of the two towers: every position of every training sequence is a target.

Loss (TrainConfig.loss):
- 'full': softmax cross-entropy over the whole catalog (cheap at ~10k items).
- 'sampled': sampled softmax over the batch's unique targets (in-batch negatives) plus
  `n_negatives` items drawn from a uniform or popularity**power sampler, with the logQ
  correction: every candidate's logit is reduced by log P(candidate is in the set).
Early stopping on validation N@10 (restoring the best weights) when validation requests are
given, else a fixed number of epochs. Batches group sequences of similar length (sorted inside
shuffled chunks) so that short histories do not pay for padding.
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from channels.two_tower.model import ItemInputs, TwoTowerModel
from pipeline.types import PAD

log = logging.getLogger(__name__)
LOSSES = ("full", "sampled")
WEIGHTINGS = ("batch", "target")
SAMPLERS = ("uniform", "popularity")


@dataclass(frozen=True)
class TrainConfig:
    loss: str = "full"
    n_negatives: int = 1024
    sampler: str = "popularity"
    sampler_power: float = 0.75
    temperature: float = 1.0
    weighting: str = "batch"  # 'batch': mean loss of each batch; 'target': every target weighs the same
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    max_epochs: int = 60
    patience: int = 5
    epochs: int = 20  # fixed epoch count when there is no validation data
    max_len: int = 50
    seed: int = 0
    eval_batch_size: int = 1024
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
class Windows:
    """Training windows, left-padded with PAD: inputs, their times and the next-item targets."""

    inputs: np.ndarray  # int64 [W, max_len]
    times: np.ndarray  # int64 [W, max_len]
    targets: np.ndarray  # int64 [W, max_len], targets[w, j] follows inputs[w, j]
    lengths: np.ndarray  # int64 [W]


@dataclass(frozen=True)
class Requests:
    """Evaluation requests: left-padded histories and one target per row."""

    history: np.ndarray  # int64 [U, L]
    times: np.ndarray  # int64 [U, L]
    targets: np.ndarray  # int64 [U]


@dataclass
class FitReport:
    epochs: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best: dict = field(default_factory=dict)
    seconds: float = 0.0  # wall clock
    cpu_seconds: float = 0.0  # CPU time of this process (all threads): comparable on a shared machine


def user_sequences(frame: pd.DataFrame) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Users and their item / time sequences (frame sorted by user then time, as FitData is)."""
    users = frame["user_id"].to_numpy(np.int64)
    items = frame["item_id"].to_numpy(np.int64)
    times = frame["timestamp"].to_numpy(np.int64) if "timestamp" in frame else np.zeros(len(frame), np.int64)
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(users) else np.zeros(0, np.int64)
    return users[starts], np.split(items, starts[1:]), np.split(times, starts[1:])


def build_windows(frame: pd.DataFrame, max_len: int) -> Windows:
    """Cut every sequence into windows of at most max_len targets, so every position is used."""
    _, seqs, tseqs = user_sequences(frame)
    rows_i, rows_t, rows_y = [], [], []
    for seq, ts in zip(seqs, tseqs):
        end = len(seq)
        while end > 1:
            start = max(1, end - max_len)
            rows_y.append(seq[start:end])
            rows_i.append(seq[start - 1 : end - 1])
            rows_t.append(ts[start - 1 : end - 1])
            end = start
    n = len(rows_y)
    out = [np.full((n, max_len), PAD, np.int64), np.zeros((n, max_len), np.int64), np.full((n, max_len), PAD, np.int64)]
    lengths = np.array([len(y) for y in rows_y], np.int64)
    for w, (a, t, y) in enumerate(zip(rows_i, rows_t, rows_y)):
        m = len(y)
        out[0][w, max_len - m :], out[1][w, max_len - m :], out[2][w, max_len - m :] = a, t, y
    return Windows(out[0], out[1], out[2], lengths)


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


def trim(history: np.ndarray, *more: np.ndarray) -> tuple[np.ndarray, ...]:
    """Drop the leading columns that are padding in every row."""
    filled = (history != PAD).any(axis=0)
    first = int(np.argmax(filled)) if filled.any() else history.shape[1] - 1
    return tuple(a[:, first:] for a in (history, *more))


@torch.no_grad()
def evaluate(model: TwoTowerModel, items: ItemInputs, req: Requests, k: int = 10, batch_size: int = 1024) -> dict:
    """R@k / N@k over the full catalog with each row's history excluded (the SPEC protocol)."""
    model.eval()
    raw = model.item_tower(items)  # (N, d)
    vecs = model.output(raw)  # (N, d)
    ranks = []
    for lo in range(0, len(req.targets), batch_size):
        hist, times = trim(req.history[lo : lo + batch_size], req.times[lo : lo + batch_size])
        h = torch.from_numpy(hist)  # (B, L)
        u = model.user_states(raw, h, torch.from_numpy(times))[:, -1]  # (B, d)
        scores = u @ vecs.T  # (B, N)
        rows, cols = np.nonzero(hist != PAD)
        scores[rows, hist[rows, cols]] = -torch.inf
        tgt = torch.from_numpy(req.targets[lo : lo + batch_size])  # (B,)
        t_score = scores.gather(1, tgt[:, None])  # (B, 1)
        rank = (scores > t_score).sum(1).double()  # (B,)
        ranks.append(torch.where(torch.isfinite(t_score[:, 0]), rank, torch.full_like(rank, np.inf)))
    rank = torch.cat(ranks)  # (U,)
    hit = rank < k
    return {f"R@{k}": float(hit.double().mean()), f"N@{k}": float((hit / torch.log2(rank + 2)).mean())}


class NegativeSampler:
    """Draws negatives from uniform or popularity**power, and gives candidates' log inclusion
    probabilities for the logQ correction."""

    def __init__(self, target_freq: np.ndarray, kind: str, power: float) -> None:
        n = target_freq.shape[0]
        self.p_target = target_freq / max(target_freq.sum(), 1.0)
        weights = np.ones(n) if kind == "uniform" else np.maximum(target_freq, 0.0) ** power
        self.p_sampler = weights / weights.sum()
        self.cdf = np.cumsum(self.p_sampler)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.minimum(np.searchsorted(self.cdf, rng.random(n) * self.cdf[-1], "right"), len(self.cdf) - 1)

    def log_q(self, cand: np.ndarray, n_pos: int, n_neg: int) -> np.ndarray:
        """log P(item in the candidate set) for n_pos in-batch targets and n_neg draws."""
        log_miss = n_pos * np.log1p(-np.minimum(self.p_target[cand], 1 - 1e-12)) + n_neg * np.log1p(
            -np.minimum(self.p_sampler[cand], 1 - 1e-12)
        )
        return np.log(np.maximum(-np.expm1(log_miss), 1e-30))


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
    negs = torch.from_numpy(sampler.sample(cfg.n_negatives, rng))  # (S,)
    cand, cand_inv = torch.unique(torch.cat([pos, negs]), return_inverse=True)  # (C,), (P+S,)
    needed, needed_inv = torch.unique(torch.cat([cand, inputs[inputs >= 0]]), return_inverse=True)  # (M,)
    raw = model.item_tower(items.take(needed))  # (M, d) only the items this batch touches
    local = torch.full((len(items),), PAD, dtype=torch.long)  # (N,) item id -> row of `raw`
    local[needed] = torch.arange(len(needed))
    hist = torch.where(inputs >= 0, local[inputs.clamp(min=0)], inputs)  # (B, L)
    u = model.user_states(raw, hist, times)[has_t]  # (P, d)
    c = model.output(raw[needed_inv[: len(cand)]])  # (C, d)
    log_q = torch.from_numpy(sampler.log_q(cand.numpy(), len(pos), cfg.n_negatives)).float()  # (C,)
    logits = (u / cfg.temperature) @ c.T - log_q  # (P, C)
    return F.cross_entropy(logits, cand_inv[: len(pos)])


def batches(windows: Windows, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of window rows; rows are sorted by length inside chunks of 50 batches."""
    perm = rng.permutation(len(windows.lengths))
    chunk = batch_size * 50
    out = []
    for lo in range(0, len(perm), chunk):
        part = perm[lo : lo + chunk]
        part = part[np.argsort(windows.lengths[part], kind="stable")]
        out += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    return [out[i] for i in rng.permutation(len(out))]


def run_epoch(model: TwoTowerModel, items: ItemInputs, windows: Windows, cfg: TrainConfig, opt: torch.optim.Optimizer,
              sampler: NegativeSampler, rng: np.random.Generator, desc: str) -> float:
    model.train()
    total, count = 0.0, 0
    order = batches(windows, cfg.batch_size, rng)
    per_batch = float((windows.targets >= 0).sum()) / max(len(order), 1)  # targets in an average batch
    bar = tqdm(order, desc=desc, unit="batch", leave=False, disable=not cfg.progress)
    for rows in bar:
        arrays = trim(windows.inputs[rows], windows.times[rows], windows.targets[rows])
        inputs, times, targets = (torch.from_numpy(a) for a in arrays)  # (b, L) each
        if cfg.loss == "full":
            loss = full_loss(model, items, inputs, times, targets, cfg.temperature)
        else:
            loss = sampled_loss(model, items, inputs, times, targets, cfg, sampler, rng)
        if cfg.weighting == "target":  # batches of long sequences hold more targets: weigh them by it
            loss = loss * (float((targets >= 0).sum()) / per_batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total, count = total + loss.item(), count + 1
        bar.set_postfix(loss=f"{total / count:.4f}")
    return total / max(count, 1)


def fit_model(model: TwoTowerModel, items: ItemInputs, windows: Windows, cfg: TrainConfig,
              valid: Requests | None = None) -> FitReport:
    """Train in place; with `valid`, early-stop on N@10 and restore the best weights."""
    rng = np.random.default_rng(cfg.seed)
    freq = np.bincount(windows.targets[windows.targets >= 0], minlength=len(items)).astype(np.float64)
    sampler = NegativeSampler(freq, cfg.sampler, cfg.sampler_power)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    report, best_state, start, cpu_start = FitReport(), None, time.perf_counter(), time.process_time()
    n_epochs = cfg.max_epochs if valid is not None else cfg.epochs
    for epoch in range(1, n_epochs + 1):
        t = time.perf_counter()
        loss = run_epoch(model, items, windows, cfg, opt, sampler, rng, f"two_tower epoch {epoch}")
        row = {"epoch": epoch, "loss": loss, "train_seconds": time.perf_counter() - t}
        if valid is not None:
            row |= evaluate(model, items, valid, 10, cfg.eval_batch_size)
            if row["N@10"] > report.best.get("N@10", -1.0):
                report.best, report.best_epoch, best_state = dict(row), epoch, copy.deepcopy(model.state_dict())
        report.epochs.append(row)
        log.info("two_tower epoch %d: %s", epoch, {k: round(v, 4) for k, v in row.items() if k != "epoch"})
        if valid is not None and epoch - report.best_epoch >= cfg.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        report.best_epoch, report.best = len(report.epochs), dict(report.epochs[-1]) if report.epochs else {}
    report.seconds, report.cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    model.eval()
    return report
