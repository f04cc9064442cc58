"""The sequence-model toolkit shared by the two-tower and COBRA channels: the training loop's early
stopping, and the refit on the full history (both channels)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn as nn

from channels.cobra.channel import CobraChannel
from channels.sequence import CausalEncoder, LoopConfig, Windows, train_loop
from channels.two_tower.channel import TwoTowerChannel
from pipeline.data import leave_one_out, synthesize
from pipeline.workflow import fit_data


def _windows(n: int = 10) -> Windows:
    z = np.zeros((n, 2), np.int64)
    return Windows(z, z, z, np.full(n, 2, np.int64))


def _run(scores: list[float], **loop) -> tuple[nn.Linear, object, list[float]]:
    """A model whose weight counts the optimiser steps; validation returns `scores` in turn."""
    model = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(model.weight)
    after_epoch: list[float] = []

    def step(rows):
        with torch.no_grad():
            model.weight += 1.0
        return {"loss": float(len(rows))}

    it = iter(scores)

    def evaluate():
        after_epoch.append(model.weight.item())
        return {"N@10": next(it)}

    cfg = LoopConfig(**({"max_epochs": len(scores), "patience": 2, "progress": False} | loop))
    report = train_loop(model, _windows(), 4, np.random.default_rng(0), step, cfg, evaluate if scores else None)
    return model, report, after_epoch


def test_early_stopping_restores_the_best_epoch():
    model, report, after = _run([0.1, 0.3, 0.2, 0.25, 0.9])
    assert [r["epoch"] for r in report.epochs] == [1, 2, 3, 4]  # two epochs without a better score
    assert report.best_epoch == 2 and report.best["N@10"] == 0.3
    assert model.weight.item() == after[1] == 6.0  # 3 batches an epoch; the weights after epoch 2
    assert report.epochs[0]["loss"] == pytest.approx(10 / 3)  # batches of 4, 4 and 2 rows


def test_without_validation_the_epoch_count_is_fixed():
    model, report, _ = _run([], epochs=3)
    assert len(report.epochs) == 3 and report.best_epoch == 3 and model.weight.item() == 9.0


def test_time_budget_stops_after_the_crossing_epoch():
    _, report, _ = _run([0.1, 0.2, 0.3], max_seconds=0.0)
    assert len(report.epochs) == 1


def test_the_prefix_names_validation_metrics():
    _, report, _ = _run([0.1, 0.2], prefix="valid_")
    assert report.best["valid_N@10"] == 0.2


@pytest.fixture(scope="module")
def world():
    ds = synthesize(n_users=200, n_items=80, n_categories=5, n_brands=8, seed=4)
    split = leave_one_out(ds.interactions)
    return ds, split, fit_data(ds, split, "test", 0)


TOWER = dict(d_model=8, n_heads=2, d_ff=16, max_len=8, n_negatives=16, max_epochs=4, patience=2, lr=3e-3,
             batch_size=32, progress=False, num_threads=1, seed=0, text_buckets=64)
COBRA = dict(levels=[4, 4], d_model=8, n_heads=2, d_ff=16, dense_dim=8, svd_dim=4, collab_dim=4, max_tokens=4,
             max_len=8, max_epochs=3, patience=2, valid_users=None, progress=False, num_threads=1, beam_size=4,
             batch_size=32, lr=3e-3, seed=0, kmeans_iter=5)


@pytest.mark.parametrize("cls, params", [(TwoTowerChannel, TOWER), (CobraChannel, COBRA)], ids=["two_tower", "cobra"])
def test_refit_is_a_fresh_model_trained_on_the_full_history_for_the_best_epoch_count(world, cls, params):
    """Refit = what a channel trained without validation data, on train (validation targets
    included), for the chosen number of epochs gives: the same weights, bit for bit."""
    _, _, data = world
    refit = cls(**params, refit=True).fit(data)
    best = refit.fit_report_["best_epoch"]
    assert refit.fit_report_["refit"]["epochs"] == best >= 1
    plain = cls(**(params | {"epochs": best})).fit(dataclasses.replace(data, valid=None, valid_history=None))
    a, b = refit.model_.state_dict(), plain.model_.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    early = cls(**params).fit(data)  # without refit the model is the early-stopped one
    assert "refit" not in early.fit_report_
    assert any(not torch.equal(early.model_.state_dict()[k], a[k]) for k in a)


def test_both_channels_run_the_same_history_encoder(world):
    _, _, data = world
    tower = TwoTowerChannel(**(TOWER | {"max_epochs": 1})).fit(data)
    cobra = CobraChannel(**(COBRA | {"max_epochs": 1})).fit(data)
    assert type(tower.model_.user_tower) is CausalEncoder and type(cobra.model_.backbone) is CausalEncoder
