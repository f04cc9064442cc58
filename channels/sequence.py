"""The sequence-model toolkit the two-tower and COBRA channels share: one causal transformer over a
left-padded history, one way to cut training windows and batch them, one negative sampler (with the
logQ correction), one training loop with early stopping (and an optional refit on the full
history).

    x = item inputs (B, L, d)                      built by the channel (item tower / codes + dense)
    h = CausalEncoder(x, valid)                    pre-LN blocks, positions counted back from the
                                                   most recent item, padded keys ignored
    windows -> batches -> train_loop(step, evaluate)

`train_loop` knows nothing about the model's loss: the channel passes one function that runs a
training step on a batch of window rows and returns its losses, and (optionally) a validation
function returning metrics; the loop keeps the best weights by `metric`, stops after `patience`
epochs without improvement or after `max_seconds`, and restores the best weights. Under Ray
Train each rank runs its rows of every batch (pipeline/core/data_parallel.py); the step
averages its gradients over the ranks after backward.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from pipeline.core import data_parallel
from pipeline.core.types import DAY, PAD

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SequenceConfig:
    d_model: int = 64  # transformer width
    n_layers: int = 2  # transformer blocks
    n_heads: int = 2  # attention heads
    d_ff: int = 256  # feed-forward width
    max_len: int = 50  # history items read (and training window length)
    dropout: float = 0.2  # dropout in the transformer
    time_buckets: int = 0  # 0: no time-gap embedding


class Block(nn.Module):
    """Pre-LN transformer block with causal self-attention that ignores padded keys."""

    def __init__(self, cfg: SequenceConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.n_heads = cfg.n_heads
        self.dropout = cfg.dropout
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, cfg.d_ff), nn.GELU(), nn.Linear(cfg.d_ff, d), nn.Dropout(cfg.dropout))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        B, L, d = x.shape
        nh, hs = self.n_heads, d // self.n_heads
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)  # 3 x (B, L, d)
        q = q.view(B, L, nh, hs).transpose(1, 2)  # (B, nh, L, hs)
        k = k.view(B, L, nh, hs).transpose(1, 2)  # (B, nh, L, hs)
        v = v.view(B, L, nh, hs).transpose(1, 2)  # (B, nh, L, hs)
        p = self.dropout if self.training else 0.0
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p)  # (B, nh, L, hs)
        att = att.transpose(1, 2).reshape(B, L, d)  # (B, L, d)
        x = x + self.drop(self.out(att))  # (B, L, d)
        return x + self.mlp(self.ln2(x))  # (B, L, d)


class CausalEncoder(nn.Module):
    """h_t = Transformer(x_<=t): inputs scaled by sqrt(d) plus learned positions counted back from
    the most recent column (and optionally time-gap buckets); a padded query sees only itself."""

    def __init__(self, cfg: SequenceConfig) -> None:
        super().__init__()
        if cfg.d_model % cfg.n_heads:
            raise ValueError(f"d_model {cfg.d_model} is not divisible by n_heads {cfg.n_heads}")
        self.cfg = cfg
        self.pos = nn.Embedding(cfg.max_len, cfg.d_model)
        self.gap = nn.Embedding(cfg.time_buckets, cfg.d_model) if cfg.time_buckets else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)

    def forward(self, x: torch.Tensor, valid: torch.Tensor, gaps: torch.Tensor | None = None) -> torch.Tensor:
        """x: history item inputs (B, L, d), valid: bool (B, L) (left padding), gaps: int64
        (B, L) time-gap buckets. Returns the state at every position (B, L, d)."""
        B, L, d = x.shape
        if L > self.cfg.max_len:
            raise ValueError(f"history width {L} exceeds max_len {self.cfg.max_len}")
        back = torch.arange(L - 1, -1, -1, device=x.device)  # (L,) 0 = most recent column
        h = x * math.sqrt(d) + self.pos(back)  # (B, L, d)
        if self.gap is not None and gaps is not None:
            h = h + self.gap(gaps)  # (B, L, d)
        h = self.drop(h) * valid.unsqueeze(-1)  # (B, L, d)
        causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()  # (L, L)
        diag = torch.eye(L, dtype=torch.bool, device=x.device)  # (L, L) a padded query sees itself
        allowed = ((causal & valid[:, None, :]) | diag).unsqueeze(1)  # (B, 1, L, L)
        for block in self.blocks:
            h = block(h, allowed)  # (B, L, d)
        return self.ln_f(h)  # (B, L, d)


def gap_buckets(times: torch.Tensor, valid: torch.Tensor, n_buckets: int) -> torch.Tensor:
    """Bucket of log2(1 + days since the previous history item): 0 for padding and the first
    item, 1..n_buckets-1 otherwise. times: int64 (B, L) unix seconds."""
    prev = torch.roll(times, 1, dims=1)  # (B, L)
    prev_valid = torch.roll(valid, 1, dims=1)  # (B, L)
    prev_valid[:, 0] = False
    days = (times - prev).clamp(min=0).double() / DAY  # (B, L)
    bucket = torch.floor(torch.log2(1.0 + days)).long() + 1  # (B, L)
    bucket = bucket.clamp(max=n_buckets - 1)  # (B, L)
    return torch.where(valid & prev_valid, bucket, torch.zeros_like(bucket))  # (B, L)


# ---- training data ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Windows:
    """Training windows, left-padded with PAD: inputs, their times and the next-item targets."""

    inputs: np.ndarray  # int64 [W, max_len]
    times: np.ndarray  # int64 [W, max_len]
    targets: np.ndarray  # int64 [W, max_len], targets[w, j] follows inputs[w, j]
    lengths: np.ndarray  # int64 [W]


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


def batches(windows: Windows, batch_size: int, rng: np.random.Generator, chunk: int = 50) -> list[np.ndarray]:
    """Shuffled batches of window rows; rows are sorted by length inside chunks of `chunk` batches
    so that short histories do not pay for padding."""
    perm = rng.permutation(len(windows.lengths))
    span = batch_size * chunk
    out = []
    for lo in range(0, len(perm), span):
        part = perm[lo : lo + span]
        part = part[np.argsort(windows.lengths[part], kind="stable")]
        out += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    return [out[i] for i in rng.permutation(len(out))]


def trim(history: np.ndarray, *more: np.ndarray) -> tuple[np.ndarray, ...]:
    """Drop the leading columns that are padding in every row."""
    filled = (history != PAD).any(axis=0)
    first = int(np.argmax(filled)) if filled.any() else history.shape[1] - 1
    return tuple(a[:, first:] for a in (history, *more))


# ---- sampled negatives -----------------------------------------------------------------------
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


# ---- the training loop ------------------------------------------------------------------------
@dataclass(frozen=True)
class LoopConfig:
    max_epochs: int = 40  # with validation: early stopping inside this many epochs
    patience: int = 4
    epochs: int = 15  # without validation: this many epochs
    max_seconds: float | None = None  # stop after the epoch that crosses this budget
    metric: str = "N@10"  # the validation metric kept best (larger is better)
    prefix: str = ""  # validation metrics enter the epoch rows as prefix + name
    progress: bool = True
    name: str = "model"  # progress-bar and log label


@dataclass
class FitReport:
    epochs: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best: dict = field(default_factory=dict)
    seconds: float = 0.0  # wall clock
    cpu_seconds: float = 0.0  # CPU time of this process (all threads): comparable on a shared machine


def train_loop(model: nn.Module, windows: Windows, batch_size: int, rng: np.random.Generator,
               step: Callable[[np.ndarray], dict[str, float]], cfg: LoopConfig,
               evaluate: Callable[[], dict] | None = None) -> FitReport:
    """Train `model` in place: `step(rows)` runs one optimiser step on the window rows `rows` and
    returns its losses (floats); `evaluate()` (eval mode) returns validation metrics. With
    `evaluate`, keep the best weights by cfg.metric and restore them; else run cfg.epochs epochs."""
    report, best_state, start, cpu_start = FitReport(), None, time.perf_counter(), time.process_time()
    key = cfg.prefix + cfg.metric
    n_epochs = cfg.max_epochs if evaluate is not None else cfg.epochs
    progress = cfg.progress and data_parallel.is_main()
    data_parallel.broadcast_parameters(model)
    for epoch in range(1, n_epochs + 1):
        model.train()
        sums: dict[str, float] = {}
        count, t0 = 0, time.perf_counter()
        data_parallel.sync_rng(rng)  # the same shuffle on every rank; each takes its rows of every batch
        mine = data_parallel.shard(batches(windows, batch_size, rng))
        bar = tqdm(mine, desc=f"{cfg.name} epoch {epoch}", unit="batch", leave=False, disable=not progress)
        for rows in bar:
            for k, v in step(rows).items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            bar.set_postfix(loss=f"{sums.get('loss', 0.0) / count:.4f}")
        row = {"epoch": epoch, "train_seconds": round(time.perf_counter() - t0, 2)} | {k: v / max(count, 1) for k, v in sums.items()}
        if evaluate is not None:
            model.eval()
            row |= {cfg.prefix + k: v for k, v in evaluate().items()}
            if best_state is None or row[key] > report.best[key]:
                report.best, report.best_epoch, best_state = dict(row), epoch, copy.deepcopy(model.state_dict())
        report.epochs.append(row)
        shown = {k: round(v, 4) for k, v in row.items() if k != "epoch"}
        log.info("%s epoch %d: %s", cfg.name, epoch, shown)
        if progress:
            tqdm.write(f"{cfg.name} epoch {epoch}: {shown}")
        patience_out = evaluate is not None and epoch - report.best_epoch >= cfg.patience
        over_time = cfg.max_seconds is not None and time.perf_counter() - start > cfg.max_seconds
        if data_parallel.agree(patience_out or over_time):  # ranks stop together (clocks differ)
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        report.best_epoch, report.best = len(report.epochs), dict(report.epochs[-1]) if report.epochs else {}
    report.seconds, report.cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    model.eval()
    return report
