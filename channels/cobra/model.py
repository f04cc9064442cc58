"""The COBRA-style generative model: a causal transformer over the user's history in which every
history item enters as its sparse code tokens (one embedding per level, summed) together with its
dense vector (projected), followed by a cascaded head that generates the next item level by level:

    h_t = Transformer(items_<=t)                      one position per history item
    s_0 = h_t;  logits_l = Head_l(s_{l-1} ...)        code level l given the levels before it
    s_l = s_{l-1} + Cond_l[c_l]                        teacher forcing: the true (train) or beam code
    v_hat = DenseHead(s_D)                             the dense vector, conditioned on the ID
                                                       (its first D = dense_levels levels; all by default)

One position per item (not one per token as in COBRA's interleaved sequence) keeps the sequence
as short as SASRec's: the ID-then-dense cascade happens in the head. The dense item vectors come
from `ItemEncoder`, a trainable encoder over each item's content (see features.py), so a new item
gets a vector without retraining. `dense=False` gives the sparse-only model (TIGER, cobra_sparse).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


HEADS = ("identity", "linear", "mlp")


@dataclass(frozen=True)
class ModelConfig:
    code_sizes: tuple[int, ...]  # codebook size per level (TIGER: + the disambiguation level)
    n_tokens: int = 1  # item-encoder vocabulary (+1: id 0 pads)
    content_dim: int = 0  # fused content vector width (0: not used)
    n_price: int = 1  # price buckets (+1: 0 = unknown)
    n_items: int = 0  # > 0: the item encoder also has an item-id embedding (row 0 = unknown item)
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    d_ff: int = 256
    max_len: int = 50
    dropout: float = 0.2
    dense: bool = True  # dense vectors in the input and the dense head (COBRA); False: sparse only
    dense_dim: int = 64
    dense_levels: int | None = None  # ID levels the dense head is conditioned on (None: all)
    dense_head: str = "identity"  # state -> predicted dense vector: 'identity' (dense_dim == d_model), 'linear', 'mlp'
    item_head: str = "linear"  # item-encoder output layer: 'linear' or 'mlp' (LayerNorm + 2 layers)
    embed_std: float | None = None  # init std of the token/code/id embeddings (None: d_model ** -0.5)

    def __post_init__(self) -> None:
        if self.dense_head not in HEADS:
            raise ValueError(f"dense_head must be one of {HEADS}, got {self.dense_head!r}")
        if self.item_head not in HEADS[1:]:
            raise ValueError(f"item_head must be one of {HEADS[1:]}, got {self.item_head!r}")
        if self.dense and self.dense_head == "identity" and self.dense_dim != self.d_model:
            raise ValueError(f"dense_head 'identity' needs dense_dim == d_model, got {self.dense_dim} and {self.d_model}")

    @property
    def dense_after(self) -> int:
        n = len(self.code_sizes)
        return n if self.dense_levels is None else max(0, min(int(self.dense_levels), n))


def _mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(d_in), nn.Linear(d_in, d_hidden), nn.GELU(), nn.Linear(d_hidden, d_out))


def _head(kind: str, d_in: int, d_out: int) -> nn.Module:
    if kind == "identity":
        return nn.Identity()
    return nn.Linear(d_in, d_out) if kind == "linear" else _mlp(d_in, 2 * d_in, d_out)


class ItemEncoder(nn.Module):
    """Dense item vectors from content: weighted bag of terms + content vector + price (+ id)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.tokens = nn.EmbeddingBag(max(cfg.n_tokens, 1), d, mode="sum", padding_idx=0)
        self.content = nn.Linear(cfg.content_dim, d) if cfg.content_dim else None
        self.price = nn.Embedding(max(cfg.n_price, 1), d)
        self.ids = nn.Embedding(cfg.n_items + 1, d) if cfg.n_items else None
        self.out = nn.Linear(d, cfg.dense_dim) if cfg.item_head == "linear" else _mlp(d, d, cfg.dense_dim)

    def forward(self, f: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.tokens(f["tokens"], per_sample_weights=f["weights"])  # (N, d)
        if self.content is not None:
            x = x + self.content(f["content"])  # (N, d)
        x = x + self.price(f["price"])
        if self.ids is not None:
            x = x + self.ids(f["ids"])
        return self.out(x)  # (N, dense_dim)


class Block(nn.Module):
    """Pre-LN transformer block with causal, padding-aware attention."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.ff = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_ff), nn.GELU(), nn.Linear(cfg.d_ff, cfg.d_model))
        self.drop = nn.Dropout(cfg.dropout)
        self.p_attn = cfg.dropout

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)  # 3 x (B, T, d)
        q, k, v = (z.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2) for z in (q, k, v))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=self.p_attn if self.training else 0.0)
        y = y.transpose(1, 2).reshape(b, t, d)  # (B, T, d)
        x = x + self.drop(self.proj(y))
        return x + self.drop(self.ff(self.ln2(x)))


class CobraModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.d_model % cfg.n_heads:
            raise ValueError(f"d_model {cfg.d_model} must be divisible by n_heads {cfg.n_heads}")
        self.cfg = cfg
        d = cfg.d_model
        self.code_in = nn.ModuleList(nn.Embedding(k, d) for k in cfg.code_sizes)  # history item tokens
        self.code_cond = nn.ModuleList(nn.Embedding(k, d) for k in cfg.code_sizes)  # head conditioning
        self.dense_in = nn.Linear(cfg.dense_dim, d) if cfg.dense else None
        self.item_encoder = ItemEncoder(cfg) if cfg.dense else None
        self.pos = nn.Embedding(cfg.max_len, d)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(d)
        self.code_heads = nn.ModuleList(_mlp(d, d, k) for k in cfg.code_sizes)
        self.dense_head = _head(cfg.dense_head, d, cfg.dense_dim) if cfg.dense else None
        self.apply(self._init)
        # token, code and id embeddings are then redrawn at embed_std (the first design kept 0.02)
        embed_std = d ** -0.5 if cfg.embed_std is None else cfg.embed_std
        if embed_std != 0.02:
            inputs = [*self.code_in] + ([self.item_encoder.tokens, self.item_encoder.price, self.item_encoder.ids] if cfg.dense else [])
            for emb in inputs:
                if emb is not None:
                    nn.init.normal_(emb.weight, std=embed_std)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.Embedding, nn.EmbeddingBag)):
            nn.init.normal_(m.weight, std=0.02)

    @property
    def n_levels(self) -> int:
        return len(self.cfg.code_sizes)

    def encode(self, codes: torch.Tensor, dense: torch.Tensor | None, real: torch.Tensor) -> torch.Tensor:
        """History states. codes int64 (B, T, L); dense (B, T, dense_dim) or None; real bool (B, T)
        (False = left padding). Returns (B, T, d); row t has seen items <= t only."""
        b, t, _ = codes.shape
        x = sum(emb(codes[..., i]) for i, emb in enumerate(self.code_in))  # (B, T, d)
        if self.dense_in is not None and dense is not None:
            x = x + self.dense_in(dense)
        pos = torch.arange(self.cfg.max_len - t, self.cfg.max_len, device=codes.device)  # most recent = last
        x = self.drop((x + self.pos(pos)) * real[..., None])
        causal = torch.ones(t, t, dtype=torch.bool, device=codes.device).tril()  # (T, T)
        eye = torch.eye(t, dtype=torch.bool, device=codes.device)
        allowed = (causal & (real[:, None, :] | eye))[:, None]  # (B, 1, T, T): pads see only themselves
        for block in self.blocks:
            x = block(x, allowed)
        return self.ln_f(x)

    def condition(self, state: torch.Tensor, level: int, code: torch.Tensor) -> torch.Tensor:
        """s_{l+1} = s_l + Cond_l[code] (state (..., d), code int64 (...))."""
        return state + self.code_cond[level](code)

    def code_logits(self, state: torch.Tensor, level: int) -> torch.Tensor:
        return self.code_heads[level](state)  # (..., K_level)

    def dense_vector(self, state: torch.Tensor) -> torch.Tensor:
        """The predicted dense vector from the state after the ID (unnormalised)."""
        assert self.dense_head is not None, "sparse-only model has no dense head"
        return self.dense_head(state)

    def teacher_forced(self, h: torch.Tensor, target_codes: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Per-level logits (list of (..., K_l)) and the dense prediction (..., dense_dim) with the
        true codes as the conditioning (h (..., d), target_codes int64 (..., L)); the dense head
        reads the state after the first `cfg.dense_after` levels."""
        logits, state, dense_state = [], h, h
        for level in range(self.n_levels):
            logits.append(self.code_logits(state, level))
            state = self.condition(state, level, target_codes[..., level])
            if level + 1 == self.cfg.dense_after:
                dense_state = state
        return logits, (self.dense_vector(dense_state) if self.dense_head is not None else None)
