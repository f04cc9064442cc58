"""The two towers, as plain nn.Modules with a small frozen config each.

ItemTower: item id embedding (+ one shared 'unknown' row, index n_items, for items added after
training) plus content features: category, brand and full category path embeddings, a price
bucket embedding and an EmbeddingBag over hashed title/category tokens, projected to d_model.
UserTower: the causal transformer shared with COBRA (channels/sequence.CausalEncoder) over the
recent history (left-padded, most recent last) whose inputs are the item tower's vectors of the
history items (so input and output item spaces are shared, as in SASRec, and a new item in a
history needs no retraining), plus learned positions counted back from the most recent item and,
optionally, time-gap buckets. The user vector at a position is that position's output; for a
request it is the last position's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from channels.sequence import CausalEncoder, SequenceConfig, gap_buckets

UserTowerConfig = SequenceConfig  # the user tower is the shared causal encoder (channels/sequence.py)


@dataclass(frozen=True)
class ItemTowerConfig:
    n_items: int  # items with a trained id row; row n_items is the shared 'unknown' row
    d_model: int = 64
    use_content: bool = True
    n_category: int = 1  # table sizes, unknown row 0 included
    n_brand: int = 1
    n_path: int = 1
    n_price: int = 1
    text_buckets: int = 2
    id_dropout: float = 0.0  # training only: probability of replacing an id by the unknown row


@dataclass(frozen=True)
class ItemInputs:
    """Tensors describing N items: ids (>= n_items means unknown) and content codes."""

    ids: torch.Tensor  # int64 (N,)
    category: torch.Tensor  # int64 (N,)
    brand: torch.Tensor  # int64 (N,)
    path: torch.Tensor  # int64 (N,)
    price: torch.Tensor  # int64 (N,)
    tokens: torch.Tensor  # int64 (N, T), 0 = padding

    def take(self, rows: torch.Tensor) -> "ItemInputs":
        return ItemInputs(*(getattr(self, f)[rows] for f in ("ids", "category", "brand", "path", "price", "tokens")))

    def __len__(self) -> int:
        return int(self.ids.shape[0])


class ItemTower(nn.Module):
    def __init__(self, cfg: ItemTowerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.id_emb = nn.Embedding(cfg.n_items + 1, d)
        nn.init.normal_(self.id_emb.weight, std=d**-0.5)
        with torch.no_grad():
            self.id_emb.weight[cfg.n_items].zero_()  # the unknown row starts at zero
        if cfg.use_content:
            self.category = nn.Embedding(cfg.n_category, d)
            self.brand = nn.Embedding(cfg.n_brand, d)
            self.path = nn.Embedding(cfg.n_path, d)
            self.price = nn.Embedding(cfg.n_price, d)
            self.text = nn.EmbeddingBag(cfg.text_buckets, d, mode="mean")
            self.proj = nn.Linear(5 * d, d)

    def forward(self, items: ItemInputs) -> torch.Tensor:
        unknown = self.cfg.n_items
        ids = torch.where(items.ids >= unknown, torch.full_like(items.ids, unknown), items.ids)  # (N,)
        if self.training and self.cfg.id_dropout > 0:
            drop = torch.rand(ids.shape, device=ids.device) < self.cfg.id_dropout  # (N,)
            ids = torch.where(drop, torch.full_like(ids, unknown), ids)  # (N,)
        vec = self.id_emb(ids)  # (N, d)
        if self.cfg.use_content:
            present = items.tokens > 0  # (N, T)
            counts = present.sum(1)  # (N,)
            text = self.text(items.tokens[present], counts.cumsum(0) - counts)  # (N, d) mean, 0 if no token
            parts = [self.category(items.category), self.brand(items.brand), self.path(items.path),
                     self.price(items.price), text]  # 5 x (N, d)
            vec = vec + self.proj(torch.cat(parts, dim=-1))  # (N, 5d) -> (N, d)
        return vec  # (N, d)


class TwoTowerModel(nn.Module):
    """Both towers and the scoring convention: dot product, optionally of L2-normalised vectors."""

    def __init__(self, item_cfg: ItemTowerConfig, user_cfg: UserTowerConfig, normalize: bool = False) -> None:
        super().__init__()
        if item_cfg.d_model != user_cfg.d_model:
            raise ValueError(f"item d_model {item_cfg.d_model} != user d_model {user_cfg.d_model}")
        self.item_tower = ItemTower(item_cfg)
        self.user_tower = CausalEncoder(user_cfg)
        self.normalize = normalize

    def output(self, vec: torch.Tensor) -> torch.Tensor:
        """Raw tower output -> the vector that is scored / indexed."""
        return F.normalize(vec, dim=-1) if self.normalize else vec

    def user_states(self, item_raw: torch.Tensor, history: torch.Tensor, times: torch.Tensor | None) -> torch.Tensor:
        """item_raw: raw item-tower vectors (N, d) indexed by item id; history: int64 (B, L), -1
        = padding. Returns scored user vectors at every position (B, L, d)."""
        valid = history >= 0  # (B, L)
        x = item_raw[history.clamp(min=0)] * valid.unsqueeze(-1)  # (B, L, d)
        gaps = None
        if self.user_tower.cfg.time_buckets and times is not None:
            gaps = gap_buckets(times, valid, self.user_tower.cfg.time_buckets)  # (B, L)
        return self.output(self.user_tower(x, valid, gaps))  # (B, L, d)
