"""CobraConfig: every parameter of the COBRA channel in one typed object (issue 18).

The channel receives this one object and hands each part its own nested config as is: `encoder`
(content vectors), `ids` (the semantic-ID tokenizer), `items` (item features), `model` (the
transformer), `train` (the training loop), `beam` (beam search and BeamFusion), `ann` (the faiss
index). A new parameter is one field in the config of the part that reads it, plus its use.

Configs may also be written flat, as they were before the parts were nested (`fusion_tau: 1.0`
for `beam: {tau: 1.0}`; pipeline.core.schema.PartsConfig). DERIVED: the seeds, TIGER's
disambiguation level (from the mode), the training window (from `model.max_len`) and the progress
bars (the top-level switch) are filled in when fitting.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Literal

from pydantic import Field, model_validator

from channels.cobra.beam import BeamConfig
from channels.cobra.catalog import IndexConfig
from channels.cobra.encoder import EncoderConfig
from channels.cobra.model import ModelConfig
from channels.cobra.semantic_ids import IdConfig
from channels.cobra.train import TrainConfig
from pipeline.core.schema import PartsConfig


@dataclass(frozen=True)
class ModelParams:
    """The transformer's hyper-parameters; ModelConfig adds what fitting derives (sizes, widths)."""

    d_model: int = 64  # transformer width
    n_layers: int = 2  # transformer blocks
    n_heads: int = 2  # attention heads
    d_ff: int = 256  # feed-forward width
    max_len: int = 50  # history items the model reads (and the training windows' length)
    dropout: float = 0.2  # dropout in the transformer
    dense_dim: int = 64  # width of the dense item vectors
    id_embedding: bool = False  # the item encoder also learns an item-id embedding
    dense_levels: int | None = None  # ID levels the dense head is conditioned on (None: all)
    dense_head: str = "identity"  # state -> dense vector: 'identity' (dense_dim == d_model), 'linear' or 'mlp'
    item_head: str = "linear"  # item-encoder output layer: 'linear' or 'mlp'
    embed_std: float | None = None  # init std of the embeddings (None: d_model ** -0.5)
    tied_input: bool = False  # history items enter as their item vector (needs dense_dim == d_model)
    dense_cond: str = "shared"  # how the ID enters the dense state: 'shared' or 'residual' (model.py)

    def build(self, *, code_sizes: tuple[int, ...], n_tokens: int, content_dim: int, n_price: int, n_items: int,
              dense: bool) -> ModelConfig:
        own = {k: v for k, v in asdict(self).items() if k != "id_embedding"}
        return ModelConfig(code_sizes=code_sizes, n_tokens=n_tokens, content_dim=content_dim, n_price=n_price,
                           n_items=n_items if self.id_embedding else 0, dense=dense, **own)


@dataclass(frozen=True)
class ItemParams:
    """The item side: per-item features and optional external collaborative vectors."""

    max_tokens: int = 32  # title/description tokens per item
    price_buckets: int = 10  # price quantile buckets
    collab_vectors_path: str | None = None  # a .npy of item vectors replacing the co-visitation ones


class CobraConfig(PartsConfig):
    DERIVED = {"encoder": {"seed"}, "ids": {"seed", "disambiguate"}, "train": {"seed", "max_len", "progress"}}
    RENAMED = {
        "fusion_tau": ("beam", "tau"), "fusion_psi": ("beam", "psi"), "fusion_sparse_weight": ("beam", "sparse_weight"),
        "fusion_dense_weight": ("beam", "dense_weight"), "dense_loss_weight": ("train", "dense_weight"),
        "sparse_loss_weight": ("train", "sparse_weight"), "max_train_seconds": ("train", "max_seconds"),
        "index": ("ann", "kind"),
    }

    mode: Literal["cobra", "cobra_sparse", "tiger"] = Field("cobra", description="which parts: see channels/cobra/parts.py")
    encoder: EncoderConfig = EncoderConfig(collab="covisit")
    ids: IdConfig = IdConfig()
    items: ItemParams = ItemParams()
    model: ModelParams = ModelParams()
    train: TrainConfig = TrainConfig(temperature=1.0, negatives="full", similarity="dot", dense_condition="sampled")
    beam: BeamConfig = BeamConfig()
    ann: IndexConfig = IndexConfig()
    cold_quota: int = Field(0, description="last places of an answer kept for items without interactions")
    valid_users: int | None = Field(5000, description="users of the early-stopping evaluation (None: all)")
    refit: bool = Field(False, description="retrain on the full history for the best epoch count")
    num_threads: int | None = Field(2, description="torch threads (None: torch's default)")
    seed: int | None = Field(None, description="None: the run's seed")
    progress: bool = Field(True, description="progress bars while training")
    eval_batch_size: int = Field(1024, ge=1, description="requests per block at retrieval")
    device: str = Field("cpu", description="auto | cpu | cuda[:N]")

    @model_validator(mode="after")
    def _check(self) -> "CobraConfig":
        from channels.cobra.parts import MODES

        if self.cold_quota < 0 or (self.cold_quota > 0 and not MODES[self.mode].head.dense):
            raise ValueError(f"cold_quota must be >= 0, and 0 in mode {self.mode!r} (it needs the dense vectors), "
                             f"got {self.cold_quota}")
        return self


def derived(cfg: CobraConfig, seed: int, unique_ids: bool) -> tuple[EncoderConfig, IdConfig, TrainConfig]:
    """The parts' configs with the fields fitting derives filled in."""
    return (replace(cfg.encoder, seed=seed), replace(cfg.ids, seed=seed, disambiguate=unique_ids),
            replace(cfg.train, seed=seed, max_len=cfg.model.max_len, progress=cfg.progress))
