"""`device: auto | cpu | cuda` for the torch models (pipeline/core/device.py).

Here (no GPU) the CPU path is checked bit for bit and every CUDA request fails clearly before any
work; the tests marked `gpu` run the same models on CUDA where torch sees one.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from channels.cobra.channel import CobraChannel
from channels.two_tower.channel import TwoTowerChannel
from pipeline.config import ConfigError, parse_config
from pipeline.core import device
from pipeline.data import leave_one_out, synthesize
from pipeline.workflow import fit_data
from tests.helpers import batch_of

HAS_GPU = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="no CUDA device visible to torch (CPU build or no GPU)")
no_gpu = pytest.mark.skipif(HAS_GPU, reason="checks the error a machine without a GPU gives")
TWO_TOWER = {"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32, "max_len": 10, "epochs": 2, "batch_size": 64,
             "n_negatives": 64, "num_threads": 1, "seed": 0, "progress": False}
COBRA = {"levels": [8, 8], "svd_dim": 16, "collab_dim": 8, "d_model": 16, "n_heads": 2, "d_ff": 32, "dense_dim": 16,
         "max_len": 10, "epochs": 1, "batch_size": 64, "beam_size": 8, "num_threads": 1, "seed": 0, "progress": False,
         "valid_users": None}


@pytest.fixture(scope="module")
def data():
    ds = synthesize(n_users=200, n_items=80, n_categories=4, n_brands=8, mean_length=8, seed=2)
    return fit_data(ds, leave_one_out(ds.interactions), "test", seed=0)


def test_resolve_names_the_devices():
    assert device.resolve("cpu") == device.resolve(None) == torch.device("cpu")
    assert device.resolve("AUTO").type == ("cuda" if HAS_GPU else "cpu")
    with pytest.raises(ValueError, match="device must be auto, cpu, cuda or cuda:N, got 'gpu'"):
        device.resolve("gpu")


@no_gpu
def test_cuda_without_a_gpu_is_a_clear_error_before_any_work(data):
    with pytest.raises(ValueError, match=r"device 'cuda': torch .* sees no GPU; use device: cpu"):
        device.resolve("cuda")
    channel = TwoTowerChannel(**TWO_TOWER, device="cuda:0")
    with pytest.raises(ValueError, match="device 'cuda:0'"):
        channel.fit(data)
    assert not hasattr(channel, "model_")  # nothing trained, nothing half-built


def test_cpu_tensors_share_the_numpy_memory():
    a = np.arange(6, dtype=np.int64)
    t = device.tensor(a)
    a[0] = 42
    assert t.device.type == "cpu" and int(t[0]) == 42
    assert device.current().type == "cpu"
    with device.placed(torch.device("cpu")):
        assert torch.zeros(1).device.type == "cpu"


def test_train_device_reaches_the_torch_components_unless_they_name_one():
    raw = {"channels": [{"name": "pop", "kind": "popularity"},
                        {"name": "tt", "kind": "two_tower"},
                        {"name": "gen", "kind": "cobra", "params": {"device": "cpu"}}],
           "ranker": {"kind": "mtgr"}, "train": {"device": "auto"}}
    cfg = parse_config(raw)
    params = {c.name: c.params for c in cfg.channels}
    assert params == {"pop": {}, "tt": {"device": "auto"}, "gen": {"device": "cpu"}}
    assert cfg.ranker.params == {"device": "auto"}
    assert parse_config(raw | {"train": {}}).channels[1].params == {}  # no train.device: the component's default
    with pytest.raises(ConfigError, match="train.device"):
        parse_config(raw | {"train": {"device": "gpu"}})


def test_device_is_a_saved_parameter(tmp_path, data):
    channel = TwoTowerChannel(**TWO_TOWER, device="auto").fit(data)
    channel.save(tmp_path / "tt")
    again = TwoTowerChannel.load(tmp_path / "tt")
    assert again.device == "auto" and next(again.model_.parameters()).device == device.resolve("auto")
    batch = batch_of([[1, 5, 9], [30]])
    np.testing.assert_array_equal(channel.retrieve(batch, 10).items, again.retrieve(batch, 10).items)


@needs_gpu
@pytest.mark.parametrize("cls, params", [(TwoTowerChannel, TWO_TOWER), (CobraChannel, COBRA)])
def test_a_channel_trains_and_answers_on_cuda(data, cls, params):
    cpu = cls(**params).fit(data)
    gpu = cls(**params, device="cuda").fit(data)
    assert next(gpu.model_.parameters()).device.type == "cuda"
    batch = batch_of([[1, 5, 9], [30], [2, 4, 6, 8]])
    got, want = gpu.retrieve(batch, 10), cpu.retrieve(batch, 10)
    assert got.items.shape == want.items.shape and np.isfinite(got.scores[:, 0]).all()
    # another float path (and another RNG stream): the lists overlap, they are not bit-equal
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got.items, want.items)])
    assert overlap > 0.3
