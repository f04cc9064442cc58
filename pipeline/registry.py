"""The one visible table of component kinds, and loading of user plug-ins by import path.

A new built-in channel is a class with `fit`/`retrieve` (see pipeline.core.protocols) plus one line in
CHANNEL_KINDS. Imports are lazy so that a process serving only classic channels never imports torch.
"""
from __future__ import annotations

import importlib
from typing import Any

from pydantic import ValidationError

from pipeline.config import ChannelConfig, ConfigError, StageConfig
from pipeline.core.schema import problems

CHANNEL_KINDS: dict[str, str] = {
    "popularity": "channels.popularity:PopularityChannel",
    "item2item": "channels.item2item:ItemToItemChannel",
    "table": "channels.table:CandidateTableChannel",
    "cobra": "channels.cobra.channel:CobraChannel",
    "two_tower": "channels.two_tower.channel:TwoTowerChannel",
    "http": "channels.http_channel:HttpChannel",
}

RANKER_KINDS: dict[str, str] = {
    "passthrough": "rankers.passthrough:PassThroughRanker",
    "lgbm": "rankers.lgbm:LightGBMRanker",
    "mtgr": "rankers.mtgr_ranker:MTGRRanker",
}

RERANKER_KINDS: dict[str, str] = {
    "passthrough": "rerank.passthrough:PassThroughReRanker",
    "rules": "rerank.reranker:RuleDiversityReRanker",
}


def import_object(path: str) -> Any:
    """Import 'package.module:Name' and return the named object, with a clear error."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"'{path}' is not an import path of the form 'package.module:ClassName'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"cannot import module '{module_name}' (from '{path}'): {err}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"module '{module_name}' has no attribute '{attr}' (from '{path}')") from None


def channel_class(cfg: ChannelConfig) -> type:
    if cfg.kind == "plugin":
        assert cfg.class_path is not None
        return import_object(cfg.class_path)
    if cfg.kind not in CHANNEL_KINDS:
        raise ConfigError(
            f"channel '{cfg.name}': unknown kind '{cfg.kind}'; known: {sorted(CHANNEL_KINDS) + ['plugin']}"
        )
    return import_object(CHANNEL_KINDS[cfg.kind])


def _construct(cls: type, what: str, **kwargs: Any) -> Any:
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{what}: bad parameters for {cls.__name__}: {err}") from None
    except ValidationError as err:  # a component with a config class (pipeline.core.schema)
        raise ConfigError(f"{what}: bad parameters for {cls.__name__}\n" + "\n".join(problems(err))) from None
    except ValueError as err:  # a component that validates its own parameters
        raise ConfigError(f"{what}: {err}") from None


def build_channel(cfg: ChannelConfig) -> Any:
    """A fresh (unfitted) channel from its config: `cls(name=..., **params)`."""
    cls = channel_class(cfg)
    channel = _construct(cls, f"channel '{cfg.name}'", name=cfg.name, **cfg.params)
    for method in ("fit", "retrieve"):
        if not callable(getattr(channel, method, None)):
            raise ConfigError(f"channel '{cfg.name}': {cls.__name__} has no {method}() method (see pipeline.core.protocols.Channel)")
    return channel


def build_stage(cfg: StageConfig, table: dict[str, str], what: str) -> Any:
    if ":" in cfg.kind:
        cls = import_object(cfg.kind)
    elif cfg.kind in table:
        cls = import_object(table[cfg.kind])
    else:
        raise ConfigError(f"{what}: unknown kind '{cfg.kind}'; known: {sorted(table)} or 'package.module:ClassName'")
    return _construct(cls, what, **cfg.params)


def check_components(cfg) -> None:
    """Build (without fitting) every component a config names: the channels, the ranker, the
    re-ranker and each arm's, so that an unknown kind or a bad parameter fails with a ConfigError
    before any data is read or anything is trained."""
    for ccfg in cfg.enabled_channels():
        build_channel(ccfg)
    build_stage(cfg.ranker, RANKER_KINDS, "ranker")
    build_stage(cfg.rerank, RERANKER_KINDS, "rerank")
    for arm in cfg.arms:
        if arm.ranker is not None:
            build_stage(arm.ranker, RANKER_KINDS, f"arm '{arm.name}' ranker")
        if arm.rerank is not None:
            build_stage(arm.rerank, RERANKER_KINDS, f"arm '{arm.name}' rerank")
