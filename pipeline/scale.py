"""Heavy offline steps on Ray (config `train.backend: ray`, SPEC section 10).

Torch models (the channels whose class sets `data_parallel = True`: two-tower, COBRA) train under
Ray Train's TorchTrainer with `train.workers` workers: each worker builds the channel from the same
config and seed, fits it on the same FitData (it reaches the workers once, through the object
store) and the training loop shards every epoch's batches and averages gradients over the ranks
(pipeline/core/data_parallel.py). Rank 0 saves the fitted channel as the Ray Train checkpoint; the
driver loads it back with the channel's own `load` (JSON, .npy, faiss and weights-only torch files,
no pickle). Checkpoints go to `train.storage` (default: a temporary folder on this machine; on a
cluster of several machines it must be a path every node sees, e.g. NFS).

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
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import ChannelConfig, TrainConfig
from pipeline.core.raystart import start_or_join
from rankers.training_data import RangeRunner, RankingData, collect_range

log = logging.getLogger(__name__)


def ensure_ray(cfg: TrainConfig, min_cpus: int = 0) -> None:
    import ray

    if ray.is_initialized():
        return
    # locally: one CPU per actor and one for Ray Data's own tasks (with none left over they never run)
    start_or_join(cfg.address, num_cpus=max(cfg.workers + 1, min_cpus), include_dashboard=False, log_to_driver=False,
                  logging_level=logging.WARNING)


def map_rows(table: pd.DataFrame, actor: type, workers: int, **init) -> pd.DataFrame:
    """Every row of `table` through a pool of `workers` Ray Data actors `actor(**init)` (one CPU
    each, one row per call): a row names a range of work, the actor answers it as a frame."""
    import ray

    ds = ray.data.from_pandas([table.iloc[i: i + 1] for i in range(len(table))])
    return ds.map_batches(actor, fn_constructor_kwargs=init, batch_size=1, batch_format="pandas",
                          compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1).to_pandas()


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
        out = map_rows(table, _PoolActor, cfg.workers, state=[state])
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


# ---- torch models under Ray Train ----------------------------------------------------------
def trains_on_ray(component, cfg: TrainConfig) -> bool:
    """Whether `component` (a channel or a ranker) is fitted by Ray Train under this config."""
    return cfg.backend == "ray" and bool(getattr(type(component), "data_parallel", False))


def fit_channel(ccfg: ChannelConfig, data, cfg: TrainConfig):
    """A channel built from `ccfg` and fitted on `data`: in process, or under Ray Train when the
    config says `backend: ray` and the channel is a torch model."""
    from pipeline.registry import build_channel

    channel = build_channel(ccfg)
    return fit_on_ray(channel, (data,), cfg, ccfg.name) if trains_on_ray(channel, cfg) else channel.fit(data)


def _train_worker(config: dict) -> None:
    """One Ray Train worker: fit its copy of the component (the loops shard and all-reduce);
    rank 0 saves it as the checkpoint."""
    import ray
    import ray.train

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    component = ray.get(config["component"])
    if config["use_gpu"]:  # Ray shows each worker its own GPU only: it is cuda:0 there
        component.device, component.device_ = "cuda", None
    own_threads = component.num_threads
    component.num_threads = config["threads"]
    if rank != 0:
        component.progress = False
    t = time.perf_counter()
    component.fit(*ray.get(config["args"]))
    nodes = [ray.get_runtime_context().get_node_id()]
    if ctx.get_world_size() > 1:  # every rank's node, in rank order (on rank 0's report)
        import torch.distributed

        nodes = [None] * ctx.get_world_size()
        torch.distributed.all_gather_object(nodes, ray.get_runtime_context().get_node_id())
    metrics = {"rank": rank, "world": ctx.get_world_size(), "fit_seconds": time.perf_counter() - t, "nodes": nodes}
    component.num_threads = own_threads  # the saved component serves with its configured threads
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        component.save(Path(tmp) / "model")
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def fit_on_ray(component, args: tuple, cfg: TrainConfig, name: str):
    """`component.fit(*args)` by `cfg.workers` Ray Train workers (CPU workers and gloo; GPU workers
    and NCCL when the component's device asks for CUDA): each fits a copy from the same seed;
    returns rank 0's fitted copy, loaded from its checkpoint with the class's own `load`. The
    component's torch threads are shared out over the workers."""
    import ray
    import ray.train
    import torch
    from ray.train.torch import TorchConfig, TorchTrainer

    threads = max(1, (component.num_threads or torch.get_num_threads()) // cfg.workers)
    ensure_ray(cfg, min_cpus=cfg.workers * threads)
    # GPU workers (NCCL) for cuda, and for auto where every worker gets a GPU
    wants = str(getattr(component, "device", "cpu")).lower()
    use_gpu = wants.startswith("cuda") or (wants == "auto" and ray.cluster_resources().get("GPU", 0) >= cfg.workers)
    storage = Path(cfg.storage).resolve() if cfg.storage else Path(tempfile.mkdtemp(prefix="hybridrec-train-"))
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"component": ray.put(component), "args": ray.put(args), "threads": threads,
                           "use_gpu": use_gpu},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        # a worker holds as many CPUs as it runs threads: Ray then sets its OMP/BLAS threads to match,
        # so 1 worker computes exactly what this process would
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.workers, use_gpu=use_gpu,
                                               resources_per_worker={"CPU": threads}),
        run_config=ray.train.RunConfig(name=f"fit-{name}-{time.time_ns()}", storage_path=str(storage)),
    )
    t = time.perf_counter()
    try:
        result = trainer.fit()
        if result.checkpoint is None:
            raise RuntimeError(f"'{name}': Ray Train finished without a checkpoint ({result.error})")
        with result.checkpoint.as_directory() as folder:
            fitted = type(component).load(Path(folder) / "model")
    finally:
        if not cfg.storage:
            shutil.rmtree(storage, ignore_errors=True)
    fitted.ray_train_ = {"workers": cfg.workers, "threads_per_worker": threads, "seconds": time.perf_counter() - t,
                         "fit_seconds": result.metrics.get("fit_seconds"), "nodes": result.metrics.get("nodes")}
    log.info("'%s' fitted by %d Ray Train workers in %.1f s", name, cfg.workers, fitted.ray_train_["seconds"])
    return fitted


# ---- offline evaluation on Ray Data ---------------------------------------------------------
class _EvalActor:
    """A Ray Data actor that loads the run folder once and answers (key, lo, hi, k) row ranges of
    the evaluation set with the top-k lists of a channel or an arm."""

    def __init__(self, run_path: str, eval_args: dict, arms: list[dict] | None, threads: int = 1) -> None:
        import torch

        from pipeline.config import ArmConfig
        from pipeline.evaluation.arms import build_arms
        from pipeline.evaluation.harness import build_eval_set, channel_topk_fn
        from pipeline.workflow import load_run

        torch.set_num_threads(threads)
        run = load_run(run_path)
        self.evalset = build_eval_set(run.split, run.stage, **eval_args)
        built = build_arms(run, None if arms is None else [ArmConfig.model_validate(a) for a in arms])
        self.fns = {f"channel:{n}": channel_topk_fn(ch) for n, ch in run.channels.items()}
        self.fns |= {f"arm:{a.name}": a.cascade.topk for a in built}

    def __call__(self, chunk: pd.DataFrame) -> pd.DataFrame:
        from pipeline.core.types import PAD

        blobs = []
        for key, lo, hi, k in zip(chunk["key"], chunk["lo"].tolist(), chunk["hi"].tolist(), chunk["k"].tolist()):
            got = np.asarray(self.fns[key](self.evalset.batch.take(slice(lo, hi)), k), np.int64)
            out = np.full((hi - lo, k), PAD, np.int64)
            out[:, : got.shape[1]] = got[:, :k]
            blobs.append(out.tobytes())
        return chunk.assign(blob=blobs)


def ray_topk(run_path: str, eval_args: dict, arms: list[dict] | None, wanted: dict[str, int], n_rows: int,
             batch_size: int, cfg: TrainConfig) -> dict[str, np.ndarray]:
    """Top-k lists of every key in `wanted` ('channel:<name>' / 'arm:<name>' -> k) over the
    evaluation set's rows, batch by batch on `cfg.workers` actors; the same batches, hence the
    same arrays, as the in-process pass (tests/test_scale.py)."""
    ensure_ray(cfg)
    table = pd.DataFrame([{"key": key, "lo": lo, "hi": min(lo + batch_size, n_rows), "k": k}
                          for key, k in wanted.items() for lo in range(0, n_rows, batch_size)])
    out = map_rows(table, _EvalActor, cfg.workers, run_path=run_path, eval_args=eval_args, arms=arms)
    if len(out) != len(table):
        raise RuntimeError(f"Ray returned {len(out)} of {len(table)} evaluation row ranges")
    lists = {}
    for key, k in wanted.items():
        part = out[out["key"] == key].sort_values("lo", kind="stable")
        lists[key] = np.concatenate([np.frombuffer(bytes(b), np.int64).reshape(-1, k) for b in part["blob"]]) \
            if len(part) else np.zeros((0, k), np.int64)
    return lists
