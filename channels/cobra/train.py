"""Training of the COBRA model: every position of every training sequence is a target.

Loss = mean over levels of the code cross-entropy (teacher forcing: level l is predicted from the
history state plus the true codes of levels < l)
     + dense_weight * contrastive loss of the dense vector predicted after an ID against the
       target item's encoder vector; negatives are the other targets of the batch ('in_batch',
       with the logQ correction for their popularity when `logq`), those plus `n_negatives` items
       drawn from popularity**0.75 ('sampled', the two-tower's loss; logQ-corrected), or the whole catalog: 'full'
       back-propagates into every item's encoder pass, 'catalog' only into the batch's items (the
       other rows come from a no-grad pass; several times cheaper, the query side gets the full
       softmax gradient).
The ID the dense vector is conditioned on (`dense_condition`): 'teacher', the target's true ID;
'sampled', an ID drawn from the model's own trie-constrained distribution (what the beams hold at
inference, often not the target's); 'mixed', the true ID with probability `teacher_prob`, else a
drawn one. In every case the dense target is the true item: the vector learns to find the target
from the ID a beam carries, right or wrong.
Windows, batches and the loop (early stopping on a validation callback, N@10 of the real
retrieval path, best weights restored; else a fixed number of epochs) are channels/sequence.py's.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from channels.cobra.model import CobraModel
from channels.sequence import FitReport, LoopConfig, NegativeSampler, Windows, train_loop, trim
from pipeline.core import data_parallel, device
from pipeline.core.types import PAD

log = logging.getLogger(__name__)
NEGATIVES = ("in_batch", "sampled", "catalog", "full")
SIMILARITIES = ("cosine", "dot")
CONDITIONS = ("teacher", "sampled", "mixed")


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 1e-3  # AdamW learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    batch_size: int = 128  # training windows per step
    max_epochs: int = 40  # epochs at most with early stopping
    patience: int = 4  # epochs without a better validation N@10 before stopping
    epochs: int = 15  # fixed epoch count when there is no validation data
    dense_weight: float = 1.0  # weight of the dense contrastive loss
    temperature: float = 0.05  # dense logits are divided by this
    negatives: str = "in_batch"  # dense loss negatives: 'in_batch', 'sampled', 'catalog' or 'full'
    logq: bool = True  # logQ correction of sampled negatives
    id_dropout: float = 0.1  # training: share of item-id embeddings replaced by 'unknown'
    max_len: int = 50
    seed: int = 0
    progress: bool = True
    max_seconds: float | None = None  # stop after the epoch that crosses this budget
    clip_norm: float | None = None  # clip the gradient's global norm (None: no clipping)
    similarity: str = "cosine"  # dense logits: cosine / temperature, or the raw dot product / temperature
    sparse_weight: float = 1.0  # weight of the code cross-entropy in the loss
    n_negatives: int = 2048  # 'sampled': items drawn per batch
    dense_condition: str = "teacher"  # the ID the dense head is conditioned on: see the module docstring
    teacher_prob: float = 0.5  # 'mixed': probability of the true ID
    uncond_weight: float = 0.0  # > 0: the unconditioned vector (the history state alone) gets the dense loss too

    def __post_init__(self) -> None:
        if self.negatives not in NEGATIVES:
            raise ValueError(f"negatives must be one of {NEGATIVES}, got {self.negatives!r}")
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {self.similarity!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.dense_condition not in CONDITIONS:
            raise ValueError(f"dense_condition must be one of {CONDITIONS}, got {self.dense_condition!r}")
        if self.uncond_weight < 0:
            raise ValueError(f"uncond_weight must be >= 0, got {self.uncond_weight}")
        if not 0.0 <= self.teacher_prob <= 1.0:
            raise ValueError(f"teacher_prob must be in [0, 1], got {self.teacher_prob}")
        if self.clip_norm is not None and self.clip_norm <= 0:
            raise ValueError(f"clip_norm must be > 0 or None, got {self.clip_norm}")


class BatchLoss:
    """The training loss of one batch (a callable so the tests can pin it)."""

    def __init__(self, model: CobraModel, codes: torch.Tensor, features: dict[str, torch.Tensor],
                 log_q: torch.Tensor | None, cfg: TrainConfig, child: list[torch.Tensor] | None = None,
                 sampler: NegativeSampler | None = None, rng: np.random.Generator | None = None) -> None:
        self.model, self.codes, self.features, self.log_q, self.cfg = model, codes, features, log_q, cfg
        self.sampler, self.rng = sampler, rng  # 'sampled' negatives
        self.child = child  # the trie's child tables: drawn IDs are existing ones (None: any code)

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
        logits, v_hat = model.teacher_forced(h, tcodes, self._dense_codes(h, tcodes, gen))
        sparse = torch.stack([F.cross_entropy(lg, tcodes[:, i]) for i, lg in enumerate(logits)]).mean()
        out = {"sparse": sparse, "loss": cfg.sparse_weight * sparse}
        if v_hat is not None:
            queries = [v_hat] + ([model.dense_vector(h)] if cfg.uncond_weight > 0 else [])
            dense, *uncond = self._dense_loss(queries, tgt, vecs, uniq, gen)
            out["dense"] = dense
            out["loss"] = out["loss"] + cfg.dense_weight * dense
            if uncond:
                out["dense_uncond"] = uncond[0]
                out["loss"] = out["loss"] + cfg.uncond_weight * uncond[0]
        return out

    def _dense_codes(self, h: torch.Tensor, tcodes: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor | None:
        """The IDs the dense head is conditioned on (None: the true ones)."""
        mode = self.cfg.dense_condition
        if self.model.dense_head is None or mode == "teacher" or self.model.cfg.dense_after == 0:
            return None
        drawn = self.model.sample_codes(h.detach(), self.child, gen)  # (P, L)
        if mode == "sampled":
            return drawn
        keep = torch.rand(tcodes.shape[0], generator=gen) < self.cfg.teacher_prob  # (P,)
        return torch.where(keep[:, None], tcodes, drawn)

    def _dense_loss(self, queries: list[torch.Tensor], tgt, vecs, uniq, gen) -> list[torch.Tensor]:
        """The contrastive loss of each predicted-vector tensor in `queries` (each (P, Dd)), over
        one shared candidate set."""
        cfg = self.cfg
        if cfg.negatives == "full":
            cand = torch.arange(self.codes.shape[0])
            cand_vecs = self._encode_items(cand, gen)  # (N, Dd)
        elif cfg.negatives == "catalog":
            cand = torch.arange(self.codes.shape[0])
            with torch.no_grad():
                table = self._encode_items(cand, gen)  # (N, Dd), no gradient
            cand_vecs = table.index_copy(0, uniq, vecs)  # the batch's items carry gradient
        elif cfg.negatives == "sampled":
            negs = device.tensor(self.sampler.sample(cfg.n_negatives, self.rng))  # (S,)
            cand = torch.unique(torch.cat([tgt, negs]))  # (C,)
            cand_vecs = self._encode_items(cand, gen)  # (C, Dd)
        else:
            cand = torch.unique(tgt)  # (C,)
            cand_vecs = vecs[torch.searchsorted(uniq, cand)]  # (C, Dd)
        labels = torch.searchsorted(cand, tgt)  # (P,)
        if cfg.similarity == "cosine":
            cand_vecs = F.normalize(cand_vecs, dim=-1)
        shift = None
        if cfg.negatives == "in_batch" and cfg.logq and self.log_q is not None:
            shift = self.log_q[cand][None, :]
        elif cfg.negatives == "sampled":
            log_q = self.sampler.log_q(device.numpy(cand), len(tgt), cfg.n_negatives)  # log P(in the candidate set)
            shift = device.tensor(log_q).float()[None, :]
        losses = []
        for v_hat in queries:
            if cfg.similarity == "cosine":
                v_hat = F.normalize(v_hat, dim=-1)
            logits = v_hat @ cand_vecs.T / cfg.temperature  # (P, C)
            losses.append(F.cross_entropy(logits if shift is None else logits - shift, labels))
        return losses


def fit_model(model: CobraModel, codes: torch.Tensor, features: dict[str, torch.Tensor], windows: Windows,
              popularity: np.ndarray, cfg: TrainConfig, evaluate: Callable[[], dict] | None = None,
              child: list[torch.Tensor] | None = None) -> FitReport:
    """Train in place (channels/sequence.train_loop); with `evaluate` (returns a dict with
    'N@10'), early-stop and restore the best weights, else run cfg.epochs epochs. `child`: the
    trie's child tables, for the drawn conditioning IDs."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    gen = device.generator(cfg.seed)
    q = popularity.astype(np.float64) + 1.0
    log_q = device.tensor(np.log(q / q.sum()).astype(np.float32))
    sampler = None
    if cfg.negatives == "sampled":
        freq = np.bincount(windows.targets[windows.targets >= 0], minlength=codes.shape[0]).astype(np.float64)
        sampler = NegativeSampler(freq, "popularity", 0.75)
    loss_fn = BatchLoss(model, codes, features, log_q, cfg, child, sampler, rng)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def step(rows: np.ndarray) -> dict[str, float]:
        inputs, targets = (device.tensor(a) for a in trim(windows.inputs[rows], windows.targets[rows]))
        out = loss_fn(inputs, targets, gen)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        data_parallel.average_gradients(model.parameters())  # no-op in one process
        if cfg.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
        opt.step()
        return {k: float(v.detach()) for k, v in out.items()}

    loop = LoopConfig(max_epochs=cfg.max_epochs, patience=cfg.patience, epochs=cfg.epochs, max_seconds=cfg.max_seconds,
                      prefix="valid_", progress=cfg.progress, name="cobra")
    return train_loop(model, windows, cfg.batch_size, rng, step, loop, evaluate)
