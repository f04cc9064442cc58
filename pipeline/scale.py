"""Heavy offline steps on Ray (config `train.backend: ray`, SPEC section 10).

The ranker's label-fold pools and cross features are computed per user: a fold's requests are cut
into ranges of whole batches, and Ray Data actors (`train.workers` of them) each take ranges, run
the fold's fitted channels, pool and cross features on them (`rankers.training_data.collect_range`)
and hand the labelled groups back as .npz bytes (no pickle on the way back). The driver puts the
ranges in row order, so the arrays are the same as the in-process pass (tests/test_scale.py).

The fitted fold channels and features reach the actors once per fold through Ray's object store.
On one machine `ray.init` starts a local cluster sized to the workers; `train.address` names an
existing cluster (every node then needs this package, and nothing else: the fold state travels
with the job).
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from pipeline.config import TrainConfig
from rankers.training_data import RangeRunner, RankingData, collect_range

log = logging.getLogger(__name__)


def ensure_ray(cfg: TrainConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    if cfg.address:
        ray.init(address=cfg.address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    else:  # one CPU per actor and one for Ray Data's own tasks (with none left over they never run)
        ray.init(num_cpus=cfg.workers + 1, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)


class _PoolActor:
    """A Ray Data actor holding one fold's state; answers (lo, hi) row ranges."""

    def __init__(self, state: list, threads: int = 1) -> None:
        import ray
        import torch

        torch.set_num_threads(threads)
        self.node = ray.get_runtime_context().get_node_id()
        self.fold_index, self.ev, self.pools_of, self.features, self.batch_size = ray.get(state[0])

    def __call__(self, chunk: pd.DataFrame) -> pd.DataFrame:
        rows = []
        for lo, hi in zip(chunk["lo"].tolist(), chunk["hi"].tolist()):
            part, n_pos, sizes = collect_range(self.fold_index, self.ev, lo, hi, self.pools_of, self.features,
                                               self.batch_size)
            rows.append({"lo": lo, "node": self.node, "blob": b"" if part is None else part.to_bytes(), "n_pos": n_pos,
                         "sizes": np.asarray(sizes, np.int64).tobytes()})
        return pd.DataFrame(rows)


def ray_runner(cfg: TrainConfig, batches_per_range: int = 4) -> RangeRunner:
    """A `collect` runner that spreads a fold's rows over `cfg.workers` Ray Data actors."""

    def run(fold_index: int, ev, pools_of, features, batch_size: int):
        import ray

        ensure_ray(cfg)
        step = batch_size * batches_per_range  # ranges of whole batches: the same batches as one pass
        table = pd.DataFrame({"lo": np.arange(0, len(ev), step, dtype=np.int64)})
        table["hi"] = np.minimum(table["lo"] + step, len(ev))
        state = ray.put((fold_index, ev, pools_of, features, batch_size))
        ds = ray.data.from_pandas([table.iloc[i: i + 1] for i in range(len(table))])
        out = ds.map_batches(_PoolActor, fn_constructor_kwargs={"state": [state]}, batch_size=1,
                             batch_format="pandas", compute=ray.data.ActorPoolStrategy(size=cfg.workers),
                             num_cpus=1).to_pandas()
        out = out.sort_values("lo", kind="stable")
        if len(out) != len(table):
            raise RuntimeError(f"Ray returned {len(out)} of {len(table)} row ranges of fold {fold_index}")
        log.info("fold %d: %d row ranges over %d Ray workers on nodes %s", fold_index, len(table), cfg.workers,
                 sorted(set(out["node"])))
        return [(RankingData.from_bytes(bytes(b)) if len(b) else None, int(n), np.frombuffer(bytes(s), np.int64).tolist())
                for b, n, s in zip(out["blob"], out["n_pos"], out["sizes"])]

    return run


def pool_runner(cfg: TrainConfig) -> RangeRunner | None:
    """The runner `collect` should use under this config (None: in process)."""
    return ray_runner(cfg) if cfg.backend == "ray" else None
