"""Torch models under Ray Train (pipeline/scale.py, pipeline/core/data_parallel.py): one worker fits the
model the local path fits, bit for bit (one torch thread: with two, even two local runs differ in
the last bits); two workers shard every batch, average gradients and reach the local quality."""
from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from pipeline.config import ChannelConfig, TrainConfig, parse_config
from pipeline.data import leave_one_out, synthesize
from pipeline.scale import fit_channel, trains_on_ray
from pipeline.workflow import fit_data
from tests.helpers import batch_of

TWO_TOWER = dict(d_model=16, n_layers=1, n_heads=2, d_ff=32, max_len=20, text_buckets=256, batch_size=64,
                 progress=False, num_threads=1, loss="sampled", n_negatives=32, max_epochs=4, patience=2)
COBRA = dict(levels=[8, 4, 4], d_model=16, n_heads=2, d_ff=32, dense_dim=16, svd_dim=8, collab_dim=4, max_tokens=8,
             max_epochs=3, patience=2, progress=False, num_threads=2)


def _equal_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---- the helpers in a real two-process gloo group (no Ray) ------------------------------------
def _group_worker(rank: int, world: int, port: int, out) -> None:
    from pipeline.core import data_parallel as dp

    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        a = torch.nn.Parameter(torch.zeros(3))
        b = torch.nn.Parameter(torch.zeros(2))  # a gradient on rank 0 only
        c = torch.nn.Parameter(torch.zeros(1))  # no gradient anywhere
        a.grad = torch.full((3,), float(rank + 1))
        b.grad = torch.ones(2) * 4 if rank == 0 else None
        dp.average_gradients([a, b, c])
        rng = np.random.default_rng(rank)  # different states: rank 0's wins
        dp.sync_rng(rng)
        batches = [np.arange(5), np.arange(5, 6), np.arange(6, 10)]
        out.put((rank, dp.world(), a.grad.tolist(), None if b.grad is None else b.grad.tolist(), c.grad,
                 rng.integers(1 << 30), [x.tolist() for x in dp.shard(batches)], dp.agree(rank == 1), dp.is_main()))
    finally:
        torch.distributed.destroy_process_group()


def test_data_parallel_helpers_in_a_two_process_group():
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_group_worker, args=(r, 2, port, out)) for r in range(2)]
    for p in procs:
        p.start()
    rows = sorted(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    expected_draw = np.random.default_rng(0).integers(1 << 30)
    for rank, (r, world, a, b, c, draw, shards, agreed, main) in enumerate(rows):
        assert (r, world, main) == (rank, (rank, 2), rank == 0)
        assert a == [1.5, 1.5, 1.5]  # mean of 1 and 2
        assert b == [2.0, 2.0]  # 4 on rank 0, counted as 0 on rank 1
        assert c is None  # no rank had one: the optimiser still skips it
        assert draw == expected_draw
        assert agreed is True  # rank 1 said stop: both stop
    assert rows[0][6] == [[0, 2, 4], [6, 8]] and rows[1][6] == [[1, 3], [7, 9]]  # the 1-row batch is dropped


def test_helpers_are_no_ops_outside_a_process_group():
    from pipeline.core import data_parallel as dp

    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([1.0, 2.0])
    dp.average_gradients([p])
    rng = np.random.default_rng(3)
    dp.sync_rng(rng)
    assert dp.world() == (0, 1) and dp.is_main() and p.grad.tolist() == [1.0, 2.0]
    assert rng.integers(1 << 30) == np.random.default_rng(3).integers(1 << 30)
    assert [b.tolist() for b in dp.shard([np.arange(3), np.arange(1)])] == [[0, 1, 2], [0]]
    assert dp.agree(False) is False and dp.agree(True) is True


# ---- Ray Train --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def data():
    ds = synthesize(n_users=400, n_items=120, n_categories=6, n_brands=12, mean_length=10, seed=3)
    return fit_data(ds, leave_one_out(ds.interactions), "test", seed=0)


def test_only_torch_models_train_on_ray():
    from pipeline.registry import build_channel

    ray_cfg = TrainConfig(backend="ray", workers=2)
    kinds = {k: build_channel(ChannelConfig(name=k, kind=k)) for k in ("two_tower", "cobra", "item2item", "popularity")}
    assert {k for k, ch in kinds.items() if trains_on_ray(ch, ray_cfg)} == {"two_tower", "cobra"}
    assert not trains_on_ray(kinds["two_tower"], TrainConfig())


def test_one_ray_worker_fits_the_local_two_tower(ray_local, data):
    ccfg = ChannelConfig(name="tt", kind="two_tower", params=TWO_TOWER)
    here = fit_channel(ccfg, data, TrainConfig())
    there = fit_channel(ccfg, data, TrainConfig(backend="ray", workers=1))
    assert there.ray_train_["workers"] == 1 and there.ray_train_["threads_per_worker"] == 1
    assert _equal_state(here.model_, there.model_)
    best_here, best_there = here.fit_report_["best"], there.fit_report_["best"]
    assert {k: best_here[k] for k in ("epoch", "loss", "R@10", "N@10")} == {k: best_there[k] for k in ("epoch", "loss", "R@10", "N@10")}
    assert best_here["R@10"] > 0.2
    batch = batch_of([[3, 7, 11], [5, 9], [40]])
    a, b = here.retrieve(batch, 10), there.retrieve(batch, 10)
    np.testing.assert_array_equal(a.items, b.items)
    np.testing.assert_array_equal(a.scores, b.scores)


def test_two_ray_workers_fit_cobra_to_the_local_quality(ray_local, data):
    ccfg = ChannelConfig(name="gen", kind="cobra", params=COBRA)
    here = fit_channel(ccfg, data, TrainConfig())
    there = fit_channel(ccfg, data, TrainConfig(backend="ray", workers=2))
    info = there.ray_train_
    assert (info["workers"], info["threads_per_worker"], len(info["nodes"])) == (2, 1, 2) and info["fit_seconds"] > 0
    np.testing.assert_array_equal(here.codes_, there.codes_)  # the semantic IDs are fitted identically on every rank
    assert not _equal_state(here.model_, there.model_)  # half a batch per rank: another float path
    local, ray2 = here.fit_report_["best"]["valid_N@10"], there.fit_report_["best"]["valid_N@10"]
    assert local > 0.05 and abs(ray2 - local) < 0.25 * local
    assert len(there.fit_report_["epochs"]) == len(here.fit_report_["epochs"])


def test_one_ray_worker_trains_the_local_mtgr_ranker(ray_local, tmp_path):
    from pipeline.registry import RANKER_KINDS, build_stage
    from pipeline.workflow import fit_ranker, make_split, prepare_data, ranking_data

    base = {
        "data": {"source": "synthetic", "synthetic": {"n_users": 300, "n_items": 150, "seed": 2}, "max_history": 20},
        "channels": [{"name": "popularity", "kind": "popularity", "quota": 30},
                     {"name": "item2item", "kind": "item2item", "quota": 40}],
        "pool": {"budget": 60},
        "ranker": {"kind": "mtgr", "params": {"d_model": 16, "n_layers": 1, "max_epochs": 2, "batch_size": 64,
                                              "holdout": 0.2, "num_threads": 1}},
    }
    cfg, ray_cfg = parse_config(base), parse_config(base | {"train": {"backend": "ray", "workers": 1}})
    ds = prepare_data(cfg.data)
    split = make_split(ds, cfg.data)
    stage_data = fit_data(ds, split, "test", cfg.run.seed)
    probe = build_stage(cfg.ranker, RANKER_KINDS, "ranker")
    labelled = ranking_data(cfg, ds, split, "test", int(probe.train_folds), probe.feature_config, stage_data)
    rankers = []
    for c in (cfg, ray_cfg):
        ranker = build_stage(c.ranker, RANKER_KINDS, "ranker")
        fit_ranker(ranker, c, ds, split, "test", stage_data, labelled=labelled)
        rankers.append(ranker)
    here, there = rankers
    assert getattr(there, "ray_train_", {}).get("workers") == 1 and not hasattr(here, "ray_train_")
    assert _equal_state(here.model_, there.model_)
    assert here.report_["history"][-1]["loss"] == there.report_["history"][-1]["loss"]
    there.save(tmp_path / "ranker")  # the adopted state saves like a local fit
    assert (tmp_path / "ranker" / "model.pt").is_file()
