"""Train: data -> split -> fit every stage -> a run folder with a manifest. Load it back.

The run folder (written atomically):
  manifest.json            config, stage fitted for, data fingerprint, versions, per-stage times
  data/                    the canonical dataset (Parquet) the run was fitted on
  channels/<name>/         each channel's artifacts (JSON, Parquet, .npy, faiss, torch weights)
Channels are fitted on split.history(stage) only: the targets of that stage, and anything after
them, never reach fitting (see tests/test_leakage.py).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from pipeline.artifacts import atomic_dir, atomic_write_json, new_run_dir, read_json, versions
from pipeline.cascade import Cascade
from pipeline.config import Config, ConfigError, DataConfig, parse_config
from pipeline.data import Dataset, leave_one_out, load_dataset, synthesize, temporal_split
from pipeline.protocols import FitData
from pipeline.registry import RANKER_KINDS, RERANKER_KINDS, build_channel, build_stage, channel_class

log = logging.getLogger(__name__)


def prepare_data(cfg: DataConfig) -> Dataset:
    if cfg.source == "synthetic":
        s = cfg.synthetic
        return synthesize(n_users=s.n_users, n_items=s.n_items, n_categories=s.n_categories,
                          n_brands=s.n_brands, mean_length=s.mean_length, seed=s.seed)
    options = {}
    if cfg.source == "generic":
        options = {"columns": cfg.columns, "items_path": cfg.items_path}
    return load_dataset(cfg.source, cfg.path, **options)


def make_split(dataset: Dataset, cfg: DataConfig):
    return leave_one_out(dataset.interactions) if cfg.split == "leave_one_out" else temporal_split(dataset.interactions)


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


def build_cascade(cfg: Config, channels: dict) -> Cascade:
    enabled = [channels[c.name] for c in cfg.enabled_channels()]
    quotas = {c.name: c.quota for c in cfg.enabled_channels()}
    fallback = next((ch for ch in enabled if type(ch).__name__ == "PopularityChannel"), None)
    return Cascade(
        enabled, quotas,
        ranker=build_stage(cfg.ranker, RANKER_KINDS, "ranker"),
        reranker=build_stage(cfg.rerank, RERANKER_KINDS, "rerank"),
        budget=cfg.pool.budget, exclude_seen=cfg.pool.exclude_seen, max_history=cfg.data.max_history,
        fallback=fallback,
    )


def train(cfg: Config, stage: str | None = None, run_dir: Path | None = None, dataset: Dataset | None = None) -> Path:
    """Fit every enabled channel for `stage` (default cfg.eval.stage); returns the run folder."""
    stage = stage or cfg.eval.stage
    t0 = time.perf_counter()
    dataset = dataset if dataset is not None else prepare_data(cfg.data)
    split = make_split(dataset, cfg.data)
    data = fit_data(dataset, split, stage, cfg.run.seed)
    times = {"data": time.perf_counter() - t0}
    target = Path(run_dir) if run_dir else new_run_dir(cfg.run.root, cfg.run.name)
    manifest_channels = []
    with atomic_dir(target) as tmp:
        dataset.save(tmp / "data")
        for ccfg in tqdm(cfg.enabled_channels(), desc="fit channels", unit="channel", disable=None):
            t = time.perf_counter()
            channel = build_channel(ccfg).fit(data)
            savable = callable(getattr(channel, "save", None)) and callable(getattr(type(channel), "load", None))
            if savable:
                channel.save(tmp / "channels" / ccfg.name)
            times[f"fit.{ccfg.name}"] = time.perf_counter() - t
            manifest_channels.append({"name": ccfg.name, "saved": savable})
        manifest = {
            "config": cfg.model_dump(mode="json"), "stage": stage, "data_fingerprint": dataset.fingerprint(),
            "data": {"name": dataset.name, "users": dataset.n_users, "items": dataset.n_items,
                     "interactions": len(dataset.interactions), "has_time": dataset.has_time},
            "channels": manifest_channels, "seconds": times, "versions": versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        atomic_write_json(tmp / "manifest.json", manifest)
    log.info("run written to %s", target)
    return target


def load_run(path: str | Path) -> Run:
    path = Path(path)
    mf = path / "manifest.json"
    if not mf.is_file():
        raise ConfigError(f"{path}: not a run folder (no manifest.json); create one with `hybridrec train`")
    manifest = read_json(mf)
    cfg = parse_config(manifest["config"], str(mf))
    dataset = Dataset.load(path / "data")
    split = make_split(dataset, cfg.data)
    stage = manifest["stage"]
    channels = {}
    for entry, ccfg in zip(manifest["channels"], cfg.enabled_channels()):
        if entry["saved"]:
            channels[ccfg.name] = channel_class(ccfg).load(path / "channels" / ccfg.name)
        else:  # a plug-in without save/load is refitted from the same data
            channels[ccfg.name] = build_channel(ccfg).fit(fit_data(dataset, split, stage, cfg.run.seed))
    return Run(path, cfg, stage, dataset, split, channels, build_cascade(cfg, channels), manifest)
