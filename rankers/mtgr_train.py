"""Training the MTGR ranker: labelled pools -> tensors -> listwise + pointwise loss, early stopping.

Loss per request: softmax cross-entropy over its pool with the true next item as the positive
(listwise), plus `pointwise_weight` x binary cross-entropy of every candidate (the pointwise head;
Beauty has a single signal, a data set with clicks and purchases would give it its own label).
Early stopping on the held-out users' NDCG@10 inside their pools. Under Ray Train every rank takes
its rows of each batch and averages gradients (pipeline/core/data_parallel.py).
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.core import data_parallel, device
from rankers.mtgr import MTGR, MTGRInputs
from rankers.mtgr_config import TrainConfig
from rankers.mtgr_inputs import make_inputs

log = logging.getLogger(__name__)


@dataclass
class TrainReport:
    epochs: int = 0
    best_epoch: int = 0
    best_holdout_ndcg10: float = 0.0
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def _group_inputs(data, groups: np.ndarray, cfg: TrainConfig, rng: np.random.Generator | None):
    """Inputs and the positive's column for a set of groups, negatives sampled when configured."""
    starts, ends = data.offsets[groups], data.offsets[groups + 1]
    pos_rows = starts + data.positive[groups]
    rows, new_offsets, positive = [], [0], []
    for s, e, p in zip(starts, ends, pos_rows):
        r = np.arange(s, e)
        k = cfg.max_train_candidates
        if rng is not None and k is not None and len(r) > k:
            neg = rng.choice(r[r != p], size=k - 1, replace=False)
            r = np.sort(np.concatenate([neg, [p]]))
        rows.append(r)
        positive.append(int(np.searchsorted(r, p)))
        new_offsets.append(new_offsets[-1] + len(r))
    rows = np.concatenate(rows)
    inp = make_inputs(data.batch(groups), data.items[rows], data.features[rows], np.asarray(new_offsets))
    return inp, device.tensor(positive)


def _loss(model: MTGR, inp: MTGRInputs, positive: torch.Tensor, pointwise_weight: float) -> torch.Tensor:
    listwise, pointwise = model(inp)  # (B, M)
    loss = F.cross_entropy(listwise, positive)
    if pointwise_weight:
        valid = (inp.cand_items > 0).float()
        target = F.one_hot(positive, listwise.shape[1]).float()
        bce = F.binary_cross_entropy_with_logits(pointwise, target, reduction="none")
        loss = loss + pointwise_weight * (bce * valid).sum() / valid.sum()
    return loss


@torch.no_grad()
def holdout_metrics(model: MTGR, data, batch_size: int = 64) -> dict[str, float]:
    """NDCG@10 / Recall@10 of the positive inside its pool (every held-out pool holds it)."""
    if not len(data):
        return {"ndcg10": 0.0, "recall10": 0.0}
    model.eval()
    ranks = []
    for lo in range(0, len(data), batch_size):
        groups = np.arange(lo, min(lo + batch_size, len(data)))
        inp, positive = _group_inputs(data, groups, TrainConfig(), None)
        scores, _ = model(inp)
        pos_score = scores.gather(1, positive[:, None])
        ranks.append(device.numpy((scores > pos_score).sum(1)))
    r = np.concatenate(ranks)
    return {"ndcg10": float(np.where(r < 10, 1.0 / np.log2(r + 2.0), 0.0).mean()), "recall10": float((r < 10).mean())}


def train_model(model: MTGR, train, holdout, cfg: TrainConfig, progress: bool = False) -> TrainReport:
    """Adam on the listwise + pointwise loss; keeps the weights of the best holdout epoch."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    report, best_state, bad = TrainReport(), None, 0
    t0 = time.perf_counter()
    progress = progress and data_parallel.is_main()
    data_parallel.broadcast_parameters(model)
    for epoch in range(1, cfg.max_epochs + 1):
        model.train()
        data_parallel.sync_rng(rng)  # the same permutation on every rank (Ray Train); each takes its rows of every batch
        order = rng.permutation(len(train))
        total, steps = 0.0, 0
        for part in data_parallel.shard([order[lo : lo + cfg.batch_size] for lo in range(0, len(order), cfg.batch_size)]):
            groups = np.sort(part)
            inp, positive = _group_inputs(train, groups, cfg, rng)
            loss = _loss(model, inp, positive, cfg.pointwise_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            data_parallel.average_gradients(model.parameters())  # no-op in one process
            opt.step()
            total, steps = total + loss.item(), steps + 1
        metrics = holdout_metrics(model, holdout)
        entry = {"epoch": epoch, "loss": total / max(steps, 1), **metrics, "seconds": time.perf_counter() - t0}
        report.history.append(entry)
        if progress:
            print(f"  mtgr epoch {epoch}: loss {entry['loss']:.4f} holdout N@10 {metrics['ndcg10']:.4f} "
                  f"R@10 {metrics['recall10']:.4f} ({entry['seconds']:.0f}s)", flush=True)
        if best_state is None or metrics["ndcg10"] > report.best_holdout_ndcg10:
            report.best_epoch, report.best_holdout_ndcg10 = epoch, metrics["ndcg10"]
            best_state, bad = copy.deepcopy(model.state_dict()), 0
        else:
            bad += 1
        if data_parallel.agree(bad >= cfg.patience):
            break
    report.epochs, report.seconds = len(report.history), time.perf_counter() - t0
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return report
