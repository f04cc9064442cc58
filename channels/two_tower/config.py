"""TwoTowerConfig: every parameter of the two-tower channel in one typed object (issue 18).

Parts, each handed as is to what reads it: `user` (the user tower: the shared causal encoder,
channels/sequence.py), `item` (the item tower's own settings; the table sizes come from fitting),
`features` (the item-feature vocabularies), `train` (the training loop), `ann` (the faiss index).
Flat keys work as well (`lr: 0.004`, `index: hnsw`; pipeline.core.schema.PartsConfig). DERIVED: the
training window (from `user.max_len`), the seed and the progress bars are filled in when fitting.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from pydantic import Field

from channels.sequence import SequenceConfig
from channels.two_tower.index import IndexConfig
from channels.two_tower.train import TrainConfig
from pipeline.core.schema import PartsConfig


@dataclass(frozen=True)
class ItemParams:
    """The item tower's settings; ItemTowerConfig adds the sizes fitting derives."""

    use_content: bool = True  # category, brand, path, price and text features beside the id embedding
    id_dropout: float = 0.0  # training only: probability of replacing an id by the unknown row
    normalize: bool = False  # L2-normalise both towers' outputs (cosine scores)


@dataclass(frozen=True)
class FeatureParams:
    """The item-feature vocabularies (ItemFeatureEncoder)."""

    text_buckets: int = 32768  # hashed title tokens
    max_tokens: int = 32  # title tokens per item
    price_buckets: int = 10  # price quantile buckets
    min_count: int = 2  # values on fewer items map to 'unknown'


class TwoTowerConfig(PartsConfig):
    DERIVED = {"train": {"seed", "max_len", "progress"}}
    RENAMED = {"index": ("ann", "kind")}

    user: SequenceConfig = SequenceConfig(dropout=0.4)
    item: ItemParams = ItemParams()
    features: FeatureParams = FeatureParams()
    train: TrainConfig = TrainConfig(loss="sampled", n_negatives=2048, lr=4e-3, batch_size=256)
    ann: IndexConfig = IndexConfig()
    refit: bool = Field(False, description="retrain on the full history for the best epoch count")
    num_threads: int | None = Field(2, description="torch threads (None: torch's default)")
    seed: int | None = Field(None, description="None: the run's seed")
    progress: bool = Field(True, description="progress bars while training")
    device: str = Field("cpu", description="auto | cpu | cuda[:N]")


def train_config(cfg: TwoTowerConfig, seed: int) -> TrainConfig:
    """The training part with what fitting derives filled in."""
    return replace(cfg.train, seed=seed, max_len=cfg.user.max_len, progress=cfg.progress)
