"""Saving and loading a fitted CobraChannel: JSON, .npy, a weights-only state_dict and faiss
files (no pickle). The channel's save/load call these; `restore_channel` runs under the channel's
device (pipeline/core/device.py), so the model and the trie are made there."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from channels.cobra.catalog import leaf_log_prior
from channels.cobra.encoder import ContentEncoder
from channels.cobra.features import ItemFeatures
from channels.cobra.model import CobraModel, ModelConfig
from channels.cobra.semantic_ids import load_quantizer
from channels.cobra.trie import CodeTrie
from pipeline.core.artifacts import atomic_write_json, read_json

FORMAT = 2  # saved-artifact layout: 2 = the shared causal encoder (channels/sequence.py)
ARRAYS = ("codes_", "active_", "popularity_", "price_edges_")


def save_channel(ch, path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    torch.save(ch.model_.state_dict(), path / "model.pt")
    ch.encoder_.save(path / "encoder")
    ch.quantizer_.save(path / "quantizer")
    for name in ARRAYS:
        np.save(path / f"{name[:-1]}.npy", getattr(ch, name), allow_pickle=False)
    ch.features_.save(path)
    ch.parts.head.save(ch, path)
    model_cfg = asdict(ch.model_cfg_) | {"code_sizes": list(ch.model_cfg_.code_sizes)}
    atomic_write_json(path / "semantic_ids_report.json", ch.report_)
    atomic_write_json(path / "params.json", {"format": FORMAT, "params": ch._params(), "sizes": ch.sizes_,
                                             "model": model_cfg, "fit_report": ch.fit_report_})


def read_meta(path: Path) -> dict:
    """params.json of a saved channel, refused when written in another format."""
    meta = read_json(path / "params.json")
    if meta.get("format", 1) != FORMAT:
        raise ValueError(f"{path}: a COBRA channel saved in format {meta.get('format', 1)} (before the shared "
                         f"sequence encoder); this version reads format {FORMAT}: retrain it")
    return meta


def restore_channel(ch, path: Path, meta: dict):
    """Fill the fitted state of `ch` (built from meta['params']) from its saved folder."""
    ch.sizes_, ch.fit_report_ = [int(s) for s in meta["sizes"]], meta["fit_report"]
    ch.report_ = read_json(path / "semantic_ids_report.json")
    ch.encoder_ = ContentEncoder.load(path / "encoder")
    ch.quantizer_ = load_quantizer(path / "quantizer", ch.config.ids.quantizer)
    for name in ARRAYS:
        setattr(ch, name, np.load(path / f"{name[:-1]}.npy", allow_pickle=False))
    ch.features_ = ItemFeatures.load(path)
    ch.model_cfg_ = ModelConfig(**(meta["model"] | {"code_sizes": tuple(meta["model"]["code_sizes"])}))
    ch.model_ = CobraModel(ch.model_cfg_)
    ch.model_.load_state_dict(torch.load(path / "model.pt", map_location="cpu", weights_only=True))
    ch.model_.eval()
    ch.trie_ = CodeTrie.build(ch.codes_, tuple(ch.sizes_), ch.active_)
    ch.log_prior_ = leaf_log_prior(ch.trie_, ch.popularity_, ch.active_)
    ch.parts.head.restore(ch, path)
    ch.cold_ = ch.cold_items()
    return ch
