"""MTGRRankerConfig: every parameter of the MTGR ranker in one typed object (issue 18).

Parts: `model` (MTGRParams; MTGRConfig adds the sizes binding and training derive), `train` (the
training loop, rankers.mtgr_train), `labels` and `features` (shared with LightGBM: rankers.base,
rankers.features). Flat keys work as well (`lr: 0.001`; pipeline.core.schema.PartsConfig). Scoring
imports this module, never the training loop.
"""
from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field

from pipeline.core.schema import PartsConfig
from rankers.base import LabelParams
from rankers.features import FeatureConfig


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 1e-3  # AdamW learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    batch_size: int = 32  # requests per step
    max_epochs: int = 20  # epochs at most
    patience: int = 3  # epochs without a better holdout NDCG before stopping
    pointwise_weight: float = 0.2  # weight of the pointwise loss beside the listwise one
    max_train_candidates: int | None = None  # sample the pool's negatives down to this (None: all)
    seed: int = 0  # training seed


@dataclass(frozen=True)
class MTGRParams:
    """The model's settings; MTGRConfig adds the sizes binding and training derive."""

    d_model: int = 64  # transformer width
    n_layers: int = 2  # transformer blocks
    n_heads: int = 2  # attention heads
    dropout: float = 0.2  # dropout in the transformer
    id_dropout: float = 0.1  # training: share of item ids replaced by the 'unknown' id
    pos_buckets: int = 64  # history position buckets
    time_buckets: int = 24  # time-gap buckets of the history tokens
    group_norm: bool = True  # False: one LayerNorm for every token type (ablation)
    cross_features: bool = True  # False: candidate tokens carry item features only (ablation)
    mask: str = "dynamic"  # "full": candidates also see each other (ablation; not one-pass exact)


class MTGRRankerConfig(PartsConfig):
    model: MTGRParams = MTGRParams()
    train: TrainConfig = TrainConfig()
    labels: LabelParams = LabelParams()
    features: FeatureConfig = FeatureConfig()
    num_threads: int | None = Field(None, description="torch threads (None: torch's default)")
    score_batch: int = Field(64, ge=1, description="requests per forward pass when scoring")
    progress: bool = Field(False, description="progress bars while training")
    device: str = Field("cpu", description="auto | cpu | cuda[:N]")
