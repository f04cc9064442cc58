"""Train: data -> split -> fit every stage -> a run folder with a manifest. Load it back.

The run folder (written atomically):
  manifest.json            config, stage fitted for, data fingerprint, versions, per-stage times
  data/                    the canonical dataset (Parquet) the run was fitted on
  channels/<name>/         each channel's artifacts (JSON, Parquet, .npy, faiss, torch weights)
  ranker/                  a trained ranker (LightGBM text model or torch state_dict + JSON, .npy)
Channels are fitted on split.history(stage) only: the targets of that stage, and anything after
them, never reach fitting (see tests/test_leakage.py).
A trainable ranker (one with fit/bind/save/load, e.g. `lgbm`, `mtgr`) is trained on label folds
strictly before `stage` (rankers/training_data.py): for each fold the channels are fitted again on
the fold's history, pools are built for the fold's targets, label = the target. Then its serving
features are bound to the stage's fit data (see tests/test_rank_leakage.py).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from pipeline.core.artifacts import atomic_dir, atomic_write_json, new_run_dir, read_json, versions
from pipeline.cascade import Cascade
from pipeline.config import Config, ConfigError, DataConfig, parse_config
from pipeline.data import Dataset, leave_one_out, load_dataset, shuffle_ties, synthesize, temporal_split
from pipeline.core.protocols import BindsItems, FitData, HasItemVectors, Persistent, Trainable
from pipeline.registry import (
    RANKER_KINDS, RERANKER_KINDS, build_channel, build_stage, channel_class, check_components, import_object,
)
from pipeline.scale import fit_channel, fit_on_ray, trains_on_ray

log = logging.getLogger(__name__)
FALLBACK = "fallback"  # name of the cascade's own fallback channel
RERANK_VECTORS = "rerank_vectors.npy"  # item vectors for the re-ranker's similarity (MMR), in the run folder


def prepare_data(cfg: DataConfig) -> Dataset:
    """The configured dataset, its same-timestamp rows shuffled when `shuffle_ties` is set."""
    dataset = _load_data(cfg)
    return dataset if cfg.shuffle_ties is None else shuffle_ties(dataset, cfg.shuffle_ties)


def _load_data(cfg: DataConfig) -> Dataset:
    if cfg.source == "synthetic":
        s = cfg.synthetic
        return synthesize(n_users=s.n_users, n_items=s.n_items, n_categories=s.n_categories,
                          n_brands=s.n_brands, mean_length=s.mean_length, seed=s.seed)
    options = {}
    if cfg.source == "generic":
        options = {"columns": cfg.columns, "items_path": cfg.items_path}
    return load_dataset(cfg.source, cfg.path, **options)


def protocol_name(cfg: Config) -> str:
    """'A' (standard: file order, request time = target time), 'B' (robust: ties shuffled and
    request time 'last' everywhere), or 'custom' for any other mix (SPEC section 9)."""
    if cfg.data.shuffle_ties is None and cfg.eval.request_time == "target":
        return "A"
    if cfg.data.shuffle_ties is not None and cfg.eval.request_time == "last":
        return "B"
    return "custom"


def make_split(dataset: Dataset, cfg: DataConfig):
    return split_frame(dataset.interactions, cfg)


def split_frame(interactions, cfg: DataConfig):
    """The configured split of any interaction frame (also used to step back for ranker folds)."""
    return leave_one_out(interactions) if cfg.split == "leave_one_out" else temporal_split(interactions)


def fit_data(dataset: Dataset, split, stage: str, seed: int) -> FitData:
    test = stage == "test"
    return FitData(
        train=split.history(stage), items=dataset.items, n_users=dataset.n_users, n_items=dataset.n_items,
        has_time=dataset.has_time, valid=split.targets("valid") if test else None,
        valid_history=split.history("valid") if test else None, seed=seed, user_ids=dataset.user_ids, item_ids=dataset.item_ids,
    )


@dataclass
class Run:
    """A trained run, loaded: config, data, split, fitted channels and the assembled cascade."""

    path: Path
    config: Config
    stage: str
    dataset: Dataset
    split: object
    channels: dict
    cascade: Cascade
    manifest: dict
    rankers: dict = field(default_factory=dict)  # arm name -> the ranker trained for that arm
    rerank_vectors: np.ndarray | None = None  # item vectors the re-rankers are bound with (see reranker_vectors)


def fallback_channel(data: FitData):
    """The cascade's own fallback (a popularity channel, which declares the fallback role), fitted on
    the stage's data: a separate object from any configured channel, so it still answers when they
    all fail, and it exists when no channel declaring the role is configured."""
    from channels.popularity import PopularityChannel

    return PopularityChannel(name=FALLBACK).fit(data)


def build_cascade(cfg: Config, channels: dict, ranker=None, reranker=None, fallback=None) -> Cascade:
    """The cascade of a config over fitted channels; `ranker`/`reranker` default to fresh ones
    built from the config (a trained ranker comes from the run folder, see load_run); `fallback`
    answers empty histories and requests whose channels all failed (see fallback_channel)."""
    enabled = [channels[c.name] for c in cfg.enabled_channels()]
    quotas = {c.name: c.quota for c in cfg.enabled_channels()}
    return Cascade(
        enabled, quotas,
        ranker=ranker if ranker is not None else build_stage(cfg.ranker, RANKER_KINDS, "ranker"),
        reranker=reranker if reranker is not None else build_stage(cfg.rerank, RERANKER_KINDS, "rerank"),
        budget=cfg.pool.budget, exclude_seen=cfg.pool.exclude_seen, max_history=cfg.data.max_history,
        fallback=fallback,
    )


def reranker_vectors(channels: dict, n_items: int) -> tuple[np.ndarray | None, str | None]:
    """Item vectors for the re-ranker's diversity term: those of the first fitted channel (config
    order) that has `item_vectors(ids)` returning them (two-tower, COBRA in dense mode)."""
    ids = np.arange(n_items, dtype=np.int64)
    for name, channel in channels.items():
        vectors = channel.item_vectors(ids) if isinstance(channel, HasItemVectors) else None
        if vectors is not None:
            return np.ascontiguousarray(vectors, np.float32), name
    return None, None


def bind_reranker(reranker, dataset: Dataset, vectors: np.ndarray | None):
    """Give a re-ranker that needs them the item table, the item vectors and the original ids."""
    return bind_items(reranker, dataset.items, vectors, dataset.item_ids)


def bind_items(reranker, items: pd.DataFrame, vectors: np.ndarray | None, item_ids: np.ndarray):
    """`bind_reranker` with the tables given (the serving re-ranker rebinds with live items)."""
    if isinstance(reranker, BindsItems):
        reranker.bind(items, vectors, item_ids)
    return reranker


def load_rerank_vectors(path: Path, manifest: dict) -> np.ndarray | None:
    entry = manifest.get("rerank_vectors")
    return np.load(Path(path) / entry["path"], allow_pickle=False) if entry else None


def train(cfg: Config, stage: str | None = None, run_dir: Path | None = None, dataset: Dataset | None = None,
          labelled=None) -> Path:
    """Fit every enabled channel for `stage` (default cfg.eval.stage), then a trainable ranker;
    returns the run folder. `labelled`: the ranker's RankingData, when already built (benchmarks)."""
    stage = stage or cfg.eval.stage
    check_components(cfg)  # an unknown kind or a bad parameter fails here, before any training
    t0 = time.perf_counter()
    dataset = dataset if dataset is not None else prepare_data(cfg.data)
    split = make_split(dataset, cfg.data)
    data = fit_data(dataset, split, stage, cfg.run.seed)
    times = {"data": time.perf_counter() - t0}
    target = Path(run_dir) if run_dir else new_run_dir(cfg.run.root, cfg.run.name)
    manifest_channels, fitted = [], {}
    with atomic_dir(target) as tmp:
        dataset.save(tmp / "data")
        for ccfg in tqdm(cfg.enabled_channels(), desc="fit channels", unit="channel", disable=None):
            t = time.perf_counter()
            channel = fit_channel(ccfg, data, cfg.train)
            savable = isinstance(channel, Persistent)
            if savable:
                channel.save(tmp / "channels" / ccfg.name)
            times[f"fit.{ccfg.name}"] = time.perf_counter() - t
            manifest_channels.append({"name": ccfg.name, "saved": savable})
            fitted[ccfg.name] = channel
        vectors, source = reranker_vectors(fitted, dataset.n_items)
        rerank_entry = None
        if vectors is not None:
            np.save(tmp / RERANK_VECTORS, vectors, allow_pickle=False)
            rerank_entry = {"path": RERANK_VECTORS, "channel": source, "dim": int(vectors.shape[1])}
        fitted.clear()
        ranker_entry = None
        cache: dict = {}  # fold channel fits shared by the run's ranker and the arms' rankers
        ranker = build_stage(cfg.ranker, RANKER_KINDS, "ranker")
        if is_trainable(ranker):
            t = time.perf_counter()
            ranker_entry = fit_ranker(ranker, cfg, dataset, split, stage, data, labelled=labelled, channel_cache=cache)
            ranker.save(tmp / "ranker")
            ranker_entry |= {"path": "ranker", "kind": cfg.ranker.kind, "seconds": time.perf_counter() - t}
            times["fit.ranker"] = ranker_entry["seconds"]
        arm_rankers = {}
        for arm in cfg.arms:
            arm_cfg = arm_config(cfg, arm)
            if arm.ranker is None or arm_cfg is None:
                continue
            arm_ranker = build_stage(arm.ranker, RANKER_KINDS, f"arm '{arm.name}' ranker")
            if not is_trainable(arm_ranker):
                continue
            t = time.perf_counter()
            entry = fit_ranker(arm_ranker, arm_cfg, dataset, split, stage, data, channel_cache=cache)
            arm_ranker.save(tmp / "rankers" / arm.name)
            arm_rankers[arm.name] = entry | {"path": f"rankers/{arm.name}", "kind": arm.ranker.kind,
                                             "seconds": time.perf_counter() - t}
            times[f"fit.ranker.{arm.name}"] = arm_rankers[arm.name]["seconds"]
        cache.clear()
        manifest = {
            "config": cfg.model_dump(mode="json"), "stage": stage, "data_fingerprint": dataset.fingerprint(),
            "data": {"name": dataset.name, "users": dataset.n_users, "items": dataset.n_items,
                     "interactions": len(dataset.interactions), "has_time": dataset.has_time,
                     "tie_order": dataset.tie_order, "request_time": cfg.eval.request_time,
                     "protocol": protocol_name(cfg)},
            "channels": manifest_channels, "rerank_vectors": rerank_entry, "ranker": ranker_entry, "arm_rankers": arm_rankers, "seconds": times, "versions": versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        atomic_write_json(tmp / "manifest.json", manifest)
    log.info("run written to %s", target)
    return target


def open_run_folder(path: str | Path) -> tuple[dict, Config, Dataset, object]:
    """A run folder's manifest, config, dataset and split (no component is loaded)."""
    mf = Path(path) / "manifest.json"
    if not mf.is_file():
        raise ConfigError(f"{path}: not a run folder (no manifest.json); create one with `hybridrec train`")
    manifest = read_json(mf)
    cfg = parse_config(manifest["config"], str(mf))
    dataset = Dataset.load(Path(path) / "data")
    return manifest, cfg, dataset, make_split(dataset, cfg.data)


def load_run(path: str | Path) -> Run:
    path = Path(path)
    manifest, cfg, dataset, split = open_run_folder(path)
    stage = manifest["stage"]
    channels = {}
    for entry, ccfg in zip(manifest["channels"], cfg.enabled_channels()):
        if entry["saved"]:
            channels[ccfg.name] = channel_class(ccfg).load(path / "channels" / ccfg.name)
        else:  # a plug-in without save/load is refitted from the same data
            channels[ccfg.name] = build_channel(ccfg).fit(fit_data(dataset, split, stage, cfg.run.seed))
    ranker = None
    if manifest.get("ranker"):
        ranker = ranker_class(cfg).load(path / manifest["ranker"]["path"])
    rankers = {name: ranker_class(arm_config(cfg, arm)).load(path / manifest["arm_rankers"][name]["path"])
               for arm in cfg.arms if (name := arm.name) in (manifest.get("arm_rankers") or {})}
    vectors = load_rerank_vectors(path, manifest)
    reranker = bind_reranker(build_stage(cfg.rerank, RERANKER_KINDS, "rerank"), dataset, vectors)
    fallback = fallback_channel(fit_data(dataset, split, stage, cfg.run.seed))
    return Run(path, cfg, stage, dataset, split, channels, build_cascade(cfg, channels, ranker, reranker, fallback), manifest,
               rankers, vectors)


def arm_config(cfg: Config, arm) -> Config | None:
    """The config an arm's own ranker is trained under: the arm's channels (and quotas), pool budget
    and ranker in place of the run's; None when the arm sets no ranker."""
    if arm.ranker is None:
        return None
    names = arm.channels if arm.channels is not None else [c.name for c in cfg.enabled_channels()]
    channels = [c.model_copy(update={"quota": arm.quotas.get(c.name, c.quota)}) for c in cfg.enabled_channels()
                if c.name in names]
    pool = cfg.pool.model_copy(update={"budget": arm.budget}) if arm.budget else cfg.pool
    return cfg.model_copy(update={"channels": channels, "pool": pool, "ranker": arm.ranker, "arms": []})


# -- the ranker stage -------------------------------------------------------------------------
def is_trainable(ranker) -> bool:
    return isinstance(ranker, Trainable)


def ranker_class(cfg: Config) -> type:
    kind = cfg.ranker.kind
    return import_object(kind if ":" in kind else RANKER_KINDS[kind])


def retrieval_pools(cascade: Cascade):
    """batch -> the merged pools of `cascade`'s channels (retrieval and pool merge only)."""
    return cascade.pools


def ranking_data(cfg: Config, dataset: Dataset, split, stage: str, n_folds: int, features_config,
                 like: FitData | None = None, channel_cache: dict | None = None):
    """Labelled pools for a ranker evaluated on `stage`: channels refitted on each fold's history.
    `channel_cache` (fold, channel config) -> fitted channel lets several rankers of one run (the
    arms') share the fold fits."""
    from rankers.features import CrossFeatures
    from rankers.passthrough import PassThroughRanker
    from pipeline.scale import pool_runner
    from rankers.training_data import RankingData, collect, fold_fit_data, ranking_folds

    like = like or fit_data(dataset, split, stage, cfg.run.seed)
    runner = pool_runner(cfg.train)  # None: in process; else the folds' rows spread over Ray workers
    parts = []
    for i, fold in enumerate(ranking_folds(split, stage, n_folds, lambda f: split_frame(f, cfg.data))):
        fdata = fold_fit_data(fold, like)
        channels = {}
        for ccfg in tqdm(cfg.enabled_channels(), desc=f"fit channels (ranker fold {fold.name})", unit="channel", disable=None):
            key = (fold.name, ccfg.model_dump_json(exclude={"quota"}))  # the quota shapes the pool, not the fit
            if channel_cache is not None and key in channel_cache:
                channels[ccfg.name] = channel_cache[key]
                continue
            channels[ccfg.name] = fit_channel(ccfg, fdata, cfg.train)
            if channel_cache is not None:
                channel_cache[key] = channels[ccfg.name]
        cascade = build_cascade(cfg, channels, ranker=PassThroughRanker())
        features = CrossFeatures(cascade.channel_names, features_config).fit(fdata)
        bar = lambda it, n=fold.name: tqdm(it, desc=f"ranker pools {n}", unit="batch", leave=False, disable=None)
        parts.append(collect(i, fold, retrieval_pools(cascade), features, cfg.data.max_history,
                             cfg.eval.batch_size, progress=bar, request_time=cfg.eval.request_time, runner=runner))
        log.info("ranker fold %s: %s", fold.name, parts[-1].stats)
    return RankingData.concat(parts)


def fit_ranker(ranker, cfg: Config, dataset: Dataset, split, stage: str, data: FitData, labelled=None,
               channel_cache: dict | None = None) -> dict:
    """Train `ranker` for `stage` (label folds before it, a user holdout for early stopping), then
    bind its serving features to `data` (the stage's fit data). Returns the manifest entry.
    `labelled`: RankingData already built by `ranking_data` for this stage (benchmarks cache it)."""
    t = time.perf_counter()
    if labelled is None:
        labelled = ranking_data(cfg, dataset, split, stage, int(ranker.train_folds), ranker.feature_config, data,
                                channel_cache)
    train_part, holdout = labelled.split_holdout(float(ranker.holdout), cfg.run.seed)
    t_pools = time.perf_counter() - t
    # bind first: the serving features hold the item tables a model may be built from
    ranker.bind(data, tuple(c.name for c in cfg.enabled_channels()))
    if trains_on_ray(ranker, cfg.train):  # the caller's ranker object takes the state Ray Train fitted
        vars(ranker).update(vars(fit_on_ray(ranker, (train_part, holdout), cfg.train, cfg.ranker.kind)))
    else:
        ranker.fit(train_part, holdout)
    return {"folds": labelled.stats, "train_groups": len(train_part), "holdout_groups": len(holdout),
            "features": list(labelled.names), "seconds_pools": t_pools, "report": getattr(ranker, "report_", None)}
