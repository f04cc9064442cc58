"""The two towers, as plain nn.Modules with a small frozen config each.

ItemTower: item id embedding (+ one shared 'unknown' row, index n_items, for items added after
training) plus content features: category, brand and full category path embeddings, a price
bucket embedding and an EmbeddingBag over hashed title/category tokens, projected to d_model.
UserTower: a small causal pre-LN transformer over the recent history (left-padded, most recent
last) whose inputs are the item tower's vectors of the history items (so input and output item
spaces are shared, as in SASRec, and a new item in a history needs no retraining), plus learned
positions counted back from the most recent item and, optionally, time-gap buckets. The user
vector at a position is that position's output; for a request it is the last position's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

DAY = 86400.0


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
class UserTowerConfig:
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    d_ff: int = 256
    max_len: int = 50
    dropout: float = 0.2
    time_buckets: int = 0  # 0: no time-gap embedding


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


class Block(nn.Module):
    """Pre-LN transformer block with causal self-attention that ignores padded keys."""

    def __init__(self, cfg: UserTowerConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.n_heads = cfg.n_heads
        self.dropout = cfg.dropout
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, cfg.d_ff), nn.GELU(), nn.Linear(cfg.d_ff, d), nn.Dropout(cfg.dropout))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        B, L, d = x.shape
        nh, hs = self.n_heads, d // self.n_heads
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)  # 3 x (B, L, d)
        q = q.view(B, L, nh, hs).transpose(1, 2)  # (B, nh, L, hs)
        k = k.view(B, L, nh, hs).transpose(1, 2)  # (B, nh, L, hs)
        v = v.view(B, L, nh, hs).transpose(1, 2)  # (B, nh, L, hs)
        p = self.dropout if self.training else 0.0
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p)  # (B, nh, L, hs)
        att = att.transpose(1, 2).reshape(B, L, d)  # (B, L, d)
        x = x + self.drop(self.out(att))  # (B, L, d)
        return x + self.mlp(self.ln2(x))  # (B, L, d)


class UserTower(nn.Module):
    def __init__(self, cfg: UserTowerConfig) -> None:
        super().__init__()
        if cfg.d_model % cfg.n_heads:
            raise ValueError(f"d_model {cfg.d_model} is not divisible by n_heads {cfg.n_heads}")
        self.cfg = cfg
        self.pos = nn.Embedding(cfg.max_len, cfg.d_model)
        self.gap = nn.Embedding(cfg.time_buckets, cfg.d_model) if cfg.time_buckets else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)

    def forward(self, x: torch.Tensor, valid: torch.Tensor, gaps: torch.Tensor | None = None) -> torch.Tensor:
        """x: history item vectors (B, L, d), valid: bool (B, L) (left padding), gaps: int64
        (B, L) time-gap buckets. Returns the state at every position (B, L, d)."""
        B, L, d = x.shape
        if L > self.cfg.max_len:
            raise ValueError(f"history width {L} exceeds max_len {self.cfg.max_len}")
        back = torch.arange(L - 1, -1, -1, device=x.device)  # (L,) 0 = most recent column
        h = x * math.sqrt(d) + self.pos(back)  # (B, L, d)
        if self.gap is not None and gaps is not None:
            h = h + self.gap(gaps)  # (B, L, d)
        h = self.drop(h) * valid.unsqueeze(-1)  # (B, L, d)
        causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()  # (L, L)
        diag = torch.eye(L, dtype=torch.bool, device=x.device)  # (L, L) a padded query sees itself
        allowed = (causal & valid[:, None, :]) | diag  # (B, L, L)
        allowed = allowed.unsqueeze(1)  # (B, 1, L, L)
        for block in self.blocks:
            h = block(h, allowed)  # (B, L, d)
        return self.ln_f(h)  # (B, L, d)


def gap_buckets(times: torch.Tensor, valid: torch.Tensor, n_buckets: int) -> torch.Tensor:
    """Bucket of log2(1 + days since the previous history item): 0 for padding and the first
    item, 1..n_buckets-1 otherwise. times: int64 (B, L) unix seconds."""
    prev = torch.roll(times, 1, dims=1)  # (B, L)
    prev_valid = torch.roll(valid, 1, dims=1)  # (B, L)
    prev_valid[:, 0] = False
    days = (times - prev).clamp(min=0).double() / DAY  # (B, L)
    bucket = torch.floor(torch.log2(1.0 + days)).long() + 1  # (B, L)
    bucket = bucket.clamp(max=n_buckets - 1)  # (B, L)
    return torch.where(valid & prev_valid, bucket, torch.zeros_like(bucket))  # (B, L)


class TwoTowerModel(nn.Module):
    """Both towers and the scoring convention: dot product, optionally of L2-normalised vectors."""

    def __init__(self, item_cfg: ItemTowerConfig, user_cfg: UserTowerConfig, normalize: bool = False) -> None:
        super().__init__()
        if item_cfg.d_model != user_cfg.d_model:
            raise ValueError(f"item d_model {item_cfg.d_model} != user d_model {user_cfg.d_model}")
        self.item_tower = ItemTower(item_cfg)
        self.user_tower = UserTower(user_cfg)
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
