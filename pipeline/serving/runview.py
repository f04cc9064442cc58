"""What a serving process needs from a run folder, loaded piece by piece.

`load_run` loads every channel; a channel replica needs one, the ingress none (it keeps the id
maps, the users' histories and a popularity fallback). `RunView` reads the manifest, config and
data once and builds single components on demand, with the same rules as `load_run`: a saved
channel is loaded from its folder, one without save/load is refitted from the run's data.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import ChannelConfig, Config, ConfigError, StageConfig
from pipeline.core.protocols import Channel, FitData
from pipeline.data import Dataset
from pipeline.registry import RANKER_KINDS, RERANKER_KINDS, build_channel, build_stage, channel_class
from pipeline.workflow import fit_data, open_run_folder


@dataclass
class RunView:
    path: Path
    config: Config
    stage: str
    dataset: Dataset
    split: Any
    manifest: dict
    extra: tuple[ChannelConfig, ...] = ()

    @classmethod
    def open(cls, path: str | Path, extra: list[ChannelConfig] | tuple[ChannelConfig, ...] = ()) -> "RunView":
        path = Path(path)
        manifest, cfg, dataset, split = open_run_folder(path)
        view = cls(path, cfg, manifest["stage"], dataset, split, manifest, tuple(extra))
        clash = {c.name for c in extra} & {c.name for c in cfg.enabled_channels()}
        if clash:
            raise ConfigError(f"extra_channels: names {sorted(clash)} are already channels of the run {path}")
        return view

    @property
    def fingerprint(self) -> str:
        """The data fingerprint of the run: stages built from the same data agree on ids."""
        return str(self.manifest.get("data_fingerprint") or self.dataset.fingerprint())

    def channel_configs(self) -> dict[str, ChannelConfig]:
        """Every served channel by name: the run's enabled channels, then the serving extras."""
        out = {c.name: c for c in self.config.enabled_channels()}
        out.update({c.name: c for c in self.extra if c.enabled})
        return out

    def fit_data(self) -> FitData:
        return fit_data(self.dataset, self.split, self.stage, self.config.run.seed)

    def load_channel(self, name: str) -> Channel:
        cfgs = self.channel_configs()
        if name not in cfgs:
            raise ConfigError(f"{self.path}: no channel '{name}'; served channels: {sorted(cfgs)}")
        saved = {e["name"]: e["saved"] for e in self.manifest["channels"]}
        if saved.get(name):
            return channel_class(cfgs[name]).load(self.path / "channels" / name)
        return build_channel(cfgs[name]).fit(self.fit_data())

    def build_ranker(self, cfg: StageConfig | None = None) -> Any:
        """The run's trained ranker (when `cfg` is the run's own ranker and one was saved), else a
        fresh one; a trainable kind that this run did not train is an error."""
        from pipeline.workflow import is_trainable, ranker_class

        cfg = cfg or self.config.ranker
        entry = self.manifest.get("ranker")
        if entry and cfg == self.config.ranker:
            return ranker_class(self.config).load(self.path / entry["path"])
        trained = self.trained_arm_ranker(cfg)
        if trained is not None:  # an offline arm of the run trained this very ranker
            return ranker_class(self.config.model_copy(update={"ranker": cfg})).load(self.path / trained)
        ranker = build_stage(cfg, RANKER_KINDS, "ranker")
        if is_trainable(ranker):
            raise ConfigError(f"ranker '{cfg.kind}' {cfg.params} must be trained: the run {self.path} trained no "
                              "ranker with these settings (neither its own nor an offline arm's); add an arm with "
                              "this ranker to the training config's `arms:` and train again, or serve a run that has it")
        return ranker

    def trained_arm_ranker(self, cfg: StageConfig) -> str | None:
        """The folder (relative to the run) of an offline arm ranker trained with exactly `cfg`."""
        saved = self.manifest.get("arm_rankers") or {}
        for arm in self.config.arms:
            if arm.ranker == cfg and arm.name in saved:
                return saved[arm.name]["path"]
        return None

    def build_reranker(self, cfg: StageConfig | None = None) -> Any:
        from pipeline.workflow import bind_reranker, load_rerank_vectors

        reranker = build_stage(cfg or self.config.rerank, RERANKER_KINDS, "rerank")
        return bind_reranker(reranker, self.dataset, load_rerank_vectors(self.path, self.manifest))


@dataclass(frozen=True)
class IdMaps:
    """Original id strings <-> dense indices, for users and items."""

    user_index: dict[str, int]
    item_index: dict[str, int]
    user_ids: np.ndarray
    item_ids: np.ndarray

    @classmethod
    def of(cls, dataset: Dataset) -> "IdMaps":
        users = dataset.user_ids.astype(str)
        items = dataset.item_ids.astype(str)
        return cls({u: i for i, u in enumerate(users)}, {t: i for i, t in enumerate(items)}, users, items)


@dataclass(frozen=True)
class Histories:
    """Each known user's stored history (dense item ids and times, oldest first), CSR-packed."""

    items: np.ndarray  # int64 [N]
    times: np.ndarray  # int64 [N]
    offsets: np.ndarray  # int64 [n_users + 1]

    @classmethod
    def of(cls, interactions: pd.DataFrame, n_users: int) -> "Histories":
        frame = interactions.sort_values(["user_id", "timestamp", "seq"], kind="stable")
        counts = np.bincount(frame["user_id"].to_numpy(np.int64), minlength=n_users)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return cls(frame["item_id"].to_numpy(np.int64), frame["timestamp"].to_numpy(np.int64), offsets)

    def of_user(self, user: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.offsets[user], self.offsets[user + 1]
        return self.items[lo:hi], self.times[lo:hi]
