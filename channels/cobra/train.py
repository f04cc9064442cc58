"""Training of the COBRA model: every position of every training sequence is a target.

Loss = mean over levels of the code cross-entropy (teacher forcing: level l is predicted from the
history state plus the true codes of levels < l)
     + dense_weight * contrastive loss of the dense vector predicted after the true ID against the
       target item's encoder vector; negatives are the other targets of the batch ('in_batch',
       with the logQ correction for their popularity when `logq`), or the whole catalog: 'full'
       back-propagates into every item's encoder pass, 'catalog' only into the batch's items (the
       other rows come from a no-grad pass; several times cheaper, the query side gets the full
       softmax gradient).
Early stopping on a validation callback (N@10 of the real retrieval path; best weights restored),
else a fixed number of epochs. Batches group windows of similar length (sorted inside shuffled
chunks) and are trimmed to their longest window, so short histories do not pay for padding.
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from channels.cobra.model import CobraModel
from pipeline.types import PAD

log = logging.getLogger(__name__)
NEGATIVES = ("in_batch", "catalog", "full")
SIMILARITIES = ("cosine", "dot")


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    max_epochs: int = 40
    patience: int = 4
    epochs: int = 15  # fixed epoch count when there is no validation data
    dense_weight: float = 1.0
    temperature: float = 0.05
    negatives: str = "in_batch"
    logq: bool = True
    id_dropout: float = 0.1
    max_len: int = 50
    seed: int = 0
    progress: bool = True
    max_seconds: float | None = None  # stop after the epoch that crosses this budget
    clip_norm: float | None = None  # clip the gradient's global norm (None: no clipping)
    similarity: str = "cosine"  # dense logits: cosine / temperature, or the raw dot product / temperature
    sparse_weight: float = 1.0  # weight of the code cross-entropy in the loss

    def __post_init__(self) -> None:
        if self.negatives not in NEGATIVES:
            raise ValueError(f"negatives must be one of {NEGATIVES}, got {self.negatives!r}")
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {self.similarity!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.clip_norm is not None and self.clip_norm <= 0:
            raise ValueError(f"clip_norm must be > 0 or None, got {self.clip_norm}")


@dataclass(frozen=True)
class Windows:
    inputs: np.ndarray  # int64 [W, max_len], left-padded with PAD
    targets: np.ndarray  # int64 [W, max_len], targets[w, j] follows inputs[w, j]
    lengths: np.ndarray  # int64 [W]


@dataclass
class FitReport:
    epochs: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best: dict = field(default_factory=dict)
    seconds: float = 0.0


def sequences(frame: pd.DataFrame) -> list[np.ndarray]:
    """Item sequences per user (frame sorted by user then time)."""
    users = frame["user_id"].to_numpy(np.int64)
    items = frame["item_id"].to_numpy(np.int64)
    if not len(users):
        return []
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    return np.split(items, starts[1:])


def build_windows(frame: pd.DataFrame, max_len: int) -> Windows:
    """Cut every sequence into windows of at most max_len targets, so every position is used."""
    rows_i, rows_y = [], []
    for seq in sequences(frame):
        end = len(seq)
        while end > 1:
            start = max(1, end - max_len)
            rows_y.append(seq[start:end])
            rows_i.append(seq[start - 1 : end - 1])
            end = start
    n = len(rows_y)
    inputs, targets = np.full((n, max_len), PAD, np.int64), np.full((n, max_len), PAD, np.int64)
    lengths = np.array([len(y) for y in rows_y], np.int64)
    for w, (a, y) in enumerate(zip(rows_i, rows_y)):
        inputs[w, max_len - len(y) :], targets[w, max_len - len(y) :] = a, y
    return Windows(inputs, targets, lengths)


def batches(windows: Windows, batch_size: int, rng: np.random.Generator, chunk: int = 50) -> list[np.ndarray]:
    """Shuffled batches of window indices; windows sorted by length inside chunks of batches."""
    order = rng.permutation(len(windows.lengths))
    span = batch_size * chunk
    out = []
    for lo in range(0, len(order), span):
        part = order[lo : lo + span]
        part = part[np.argsort(windows.lengths[part], kind="stable")]
        out += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    return [out[i] for i in rng.permutation(len(out))]


class BatchLoss:
    """The training loss of one batch (a callable so the tests can pin it)."""

    def __init__(self, model: CobraModel, codes: torch.Tensor, features: dict[str, torch.Tensor],
                 log_q: torch.Tensor | None, cfg: TrainConfig) -> None:
        self.model, self.codes, self.features, self.log_q, self.cfg = model, codes, features, log_q, cfg

    def _encode_items(self, idx: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        f = {k: v[idx] for k, v in self.features.items()}
        if self.model.training and self.cfg.id_dropout > 0:
            drop = torch.rand(idx.shape[0], generator=gen) < self.cfg.id_dropout
            f["ids"] = torch.where(drop, torch.zeros_like(f["ids"]), f["ids"])
        return self.model.item_encoder(f)  # (U, dense_dim)

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor, gen: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        model, cfg = self.model, self.cfg
        real = inputs != PAD  # (B, T)
        has_target = targets != PAD  # (B, T)
        hist_codes = self.codes[inputs.clamp(min=0)]  # (B, T, L)
        tgt = targets[has_target]  # (P,)
        dense_hist, vecs, uniq = None, None, None
        if model.item_encoder is not None:
            uniq = torch.unique(torch.cat([inputs[real], tgt]))  # (U,)
            vecs = self._encode_items(uniq, gen)  # (U, Dd)
            dense_hist = vecs[torch.searchsorted(uniq, inputs.clamp(min=0))]  # (B, T, Dd)
        h = model.encode(hist_codes, dense_hist, real)[has_target]  # (P, d)
        tcodes = self.codes[tgt]  # (P, L)
        logits, v_hat = model.teacher_forced(h, tcodes)
        sparse = torch.stack([F.cross_entropy(lg, tcodes[:, i]) for i, lg in enumerate(logits)]).mean()
        out = {"sparse": sparse, "loss": cfg.sparse_weight * sparse}
        if v_hat is not None:
            dense = self._dense_loss(v_hat, tgt, vecs, uniq, gen)
            out["dense"] = dense
            out["loss"] = out["loss"] + cfg.dense_weight * dense
        return out

    def _dense_loss(self, v_hat, tgt, vecs, uniq, gen) -> torch.Tensor:
        cfg = self.cfg
        if cfg.negatives == "full":
            cand = torch.arange(self.codes.shape[0])
            cand_vecs = self._encode_items(cand, gen)  # (N, Dd)
        elif cfg.negatives == "catalog":
            cand = torch.arange(self.codes.shape[0])
            with torch.no_grad():
                table = self._encode_items(cand, gen)  # (N, Dd), no gradient
            cand_vecs = table.index_copy(0, uniq, vecs)  # the batch's items carry gradient
        else:
            cand = torch.unique(tgt)  # (C,)
            cand_vecs = vecs[torch.searchsorted(uniq, cand)]  # (C, Dd)
        labels = torch.searchsorted(cand, tgt)  # (P,)
        if cfg.similarity == "cosine":
            v_hat, cand_vecs = F.normalize(v_hat, dim=-1), F.normalize(cand_vecs, dim=-1)
        logits = v_hat @ cand_vecs.T / cfg.temperature  # (P, C)
        if cfg.negatives == "in_batch" and cfg.logq and self.log_q is not None:
            logits = logits - self.log_q[cand][None, :]
        return F.cross_entropy(logits, labels)


def fit_model(model: CobraModel, codes: torch.Tensor, features: dict[str, torch.Tensor], windows: Windows,
              popularity: np.ndarray, cfg: TrainConfig,
              evaluate: Callable[[], dict] | None = None) -> FitReport:
    """Train in place; with `evaluate` (returns a dict with 'N@10'), early-stop and restore the
    best weights, else run cfg.epochs epochs."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    q = popularity.astype(np.float64) + 1.0
    log_q = torch.from_numpy(np.log(q / q.sum()).astype(np.float32))
    loss_fn = BatchLoss(model, codes, features, log_q, cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    report, best_state, bad = FitReport(), None, 0
    n_epochs = cfg.max_epochs if evaluate is not None else cfg.epochs
    start = time.perf_counter()
    for epoch in range(1, n_epochs + 1):
        model.train()
        sums, steps, t0 = {}, 0, time.perf_counter()
        for idx in tqdm(batches(windows, cfg.batch_size, rng), desc=f"cobra epoch {epoch}", unit="batch",
                        leave=False, disable=not cfg.progress or None):
            width = int(windows.lengths[idx].max())
            inputs = torch.from_numpy(windows.inputs[idx, -width:])
            targets = torch.from_numpy(windows.targets[idx, -width:])
            out = loss_fn(inputs, targets, gen)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            if cfg.clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
            opt.step()
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            steps += 1
        row = {"epoch": epoch, "seconds": round(time.perf_counter() - t0, 1)} | {k: v / max(steps, 1) for k, v in sums.items()}
        if evaluate is not None:
            model.eval()
            row |= {f"valid_{k}": v for k, v in evaluate().items()}
        report.epochs.append(row)
        log.info("cobra %s", row)
        if cfg.progress:
            print("cobra", {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
        if evaluate is not None:
            if best_state is None or row["valid_N@10"] > report.best["valid_N@10"]:
                report.best, report.best_epoch, bad = row, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad += 1
                if bad >= cfg.patience:
                    break
        if cfg.max_seconds is not None and time.perf_counter() - start > cfg.max_seconds:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        report.best_epoch, report.best = len(report.epochs), (report.epochs[-1] if report.epochs else {})
    model.eval()
    report.seconds = time.perf_counter() - start
    return report
