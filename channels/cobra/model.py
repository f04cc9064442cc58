"""The COBRA-style generative model: a causal transformer over the user's history in which every
history item enters as its sparse code tokens (one embedding per level, summed) together with its
dense vector (projected), followed by a cascaded head that generates the next item level by level:

    h_t = Transformer(items_<=t)                      one position per history item (the shared
                                                       causal encoder of channels/sequence.py)
    s_0 = h_t;  logits_l = Head_l(s_{l-1} ...)        code level l given the levels before it
    s_l = s_{l-1} + Cond_l[c_l]                        c_l: the true code (sparse loss), the beam's
                                                       code (inference)
    v_hat = DenseHead(s_D)                             the dense vector, conditioned on the ID
                                                       (its first D = dense_levels levels; all by default)

Training conditions the dense head on the true codes (teacher forcing) or on codes drawn from the
model's own distribution (`sample_codes`, trie-constrained like the beam search), so that the
dense vector learns to find the target from the IDs the beams will actually hold (train.py).
One position per item (not one per token as in COBRA's interleaved sequence) keeps the sequence
as short as SASRec's: the ID-then-dense cascade happens in the head. The dense item vectors come
from `ItemEncoder`, a trainable encoder over each item's content (see features.py), so a new item
gets a vector without retraining. `dense=False` gives the sparse-only model (TIGER, cobra_sparse).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from channels.sequence import CausalEncoder, SequenceConfig


HEADS = ("identity", "linear", "mlp")
# 'shared': the dense head reads the sparse head's state after the ID (h + sum_l Cond_l[c_l]);
# 'residual': its own code embeddings, initialised at zero (h + sum_l DenseCond_l[c_l]), so the
# conditioned vector starts as the unconditioned one and moves only where the ID helps the dense loss
DENSE_CONDS = ("shared", "residual")


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
    tied_input: bool = False  # history items enter with their item vector as is (needs dense_dim == d_model)
    dense_cond: str = "shared"  # how the ID enters the dense state: see DENSE_CONDS

    def __post_init__(self) -> None:
        if self.dense_head not in HEADS:
            raise ValueError(f"dense_head must be one of {HEADS}, got {self.dense_head!r}")
        if self.item_head not in HEADS[1:]:
            raise ValueError(f"item_head must be one of {HEADS[1:]}, got {self.item_head!r}")
        if self.dense_cond not in DENSE_CONDS:
            raise ValueError(f"dense_cond must be one of {DENSE_CONDS}, got {self.dense_cond!r}")
        if self.dense and self.tied_input and self.dense_dim != self.d_model:
            raise ValueError(f"tied_input needs dense_dim == d_model, got {self.dense_dim} and {self.d_model}")
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


class CobraModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.d_model % cfg.n_heads:
            raise ValueError(f"d_model {cfg.d_model} must be divisible by n_heads {cfg.n_heads}")
        self.cfg = cfg
        d = cfg.d_model
        self.code_in = nn.ModuleList(nn.Embedding(k, d) for k in cfg.code_sizes)  # history item tokens
        self.code_cond = nn.ModuleList(nn.Embedding(k, d) for k in cfg.code_sizes)  # head conditioning
        # history items enter as their codes plus their dense vector: projected, or the item vector
        # itself (`tied_input`, SASRec's shared input/output item space, as the two-tower does)
        self.dense_in = (nn.Identity() if cfg.tied_input else nn.Linear(cfg.dense_dim, d)) if cfg.dense else None
        self.item_encoder = ItemEncoder(cfg) if cfg.dense else None
        self.code_heads = nn.ModuleList(_mlp(d, d, k) for k in cfg.code_sizes)
        self.dense_head = _head(cfg.dense_head, d, cfg.dense_dim) if cfg.dense else None
        residual = cfg.dense and cfg.dense_cond == "residual"
        self.dense_cond = nn.ModuleList(nn.Embedding(k, d) for k in cfg.code_sizes[: cfg.dense_after]) if residual else None
        self.apply(self._init)
        for emb in self.dense_cond or ():
            nn.init.zeros_(emb.weight)
        # token, code and id embeddings are then redrawn at embed_std (the first design kept 0.02)
        embed_std = d ** -0.5 if cfg.embed_std is None else cfg.embed_std
        if embed_std != 0.02:
            inputs = [*self.code_in] + ([self.item_encoder.tokens, self.item_encoder.price, self.item_encoder.ids] if cfg.dense else [])
            for emb in inputs:
                if emb is not None:
                    nn.init.normal_(emb.weight, std=embed_std)
        # the history encoder is the two-tower's (channels/sequence.py), with its own initialisation
        self.backbone = CausalEncoder(SequenceConfig(d_model=d, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                                                     d_ff=cfg.d_ff, max_len=cfg.max_len, dropout=cfg.dropout))

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
        x = sum(emb(codes[..., i]) for i, emb in enumerate(self.code_in))  # (B, T, d)
        if self.dense_in is not None and dense is not None:
            x = x + self.dense_in(dense)
        return self.backbone(x, real)  # (B, T, d)

    def condition(self, state: torch.Tensor, level: int, code: torch.Tensor) -> torch.Tensor:
        """s_{l+1} = s_l + Cond_l[code] (state (..., d), code int64 (...))."""
        return state + self.code_cond[level](code)

    def code_logits(self, state: torch.Tensor, level: int) -> torch.Tensor:
        return self.code_heads[level](state)  # (..., K_level)

    def dense_vector(self, state: torch.Tensor) -> torch.Tensor:
        """The predicted dense vector from the state after the ID (unnormalised)."""
        assert self.dense_head is not None, "sparse-only model has no dense head"
        return self.dense_head(state)

    def conditioned_state(self, h: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """The state the dense head reads: h plus the conditioning of the first `cfg.dense_after`
        levels of `codes` (h (..., d), codes int64 (..., L)), through the sparse head's code
        embeddings ('shared') or the dense head's own ('residual')."""
        state = h
        for level in range(self.cfg.dense_after):
            if self.dense_cond is None:
                state = self.condition(state, level, codes[..., level])
            else:
                state = state + self.dense_cond[level](codes[..., level])
        return state

    @torch.no_grad()
    def sample_codes(self, h: torch.Tensor, child: list[torch.Tensor] | None = None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """IDs drawn from the model's own level-by-level distribution for states h (P, d):
        code l ~ softmax(Head_l(s_l)), restricted to existing IDs when the trie's child tables
        are given (as the beam search is). Returns int64 (P, L)."""
        state, node, out = h, torch.zeros(h.shape[0], dtype=torch.long), []
        for level in range(self.n_levels):
            logits = self.code_logits(state, level).float()  # (P, K)
            if child is not None:
                nxt = child[level][node]  # (P, K) next trie node per code, -1 if absent
                logits = logits.masked_fill(nxt < 0, float("-inf"))
            code = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)[:, 0]  # (P,)
            if child is not None:
                node = nxt.gather(1, code[:, None])[:, 0]
            out.append(code)
            state = self.condition(state, level, code)
        return torch.stack(out, dim=1)

    def teacher_forced(self, h: torch.Tensor, target_codes: torch.Tensor,
                       dense_codes: torch.Tensor | None = None) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Per-level logits (list of (..., K_l)) with the true codes as the conditioning (h (..., d),
        target_codes int64 (..., L)), and the dense prediction (..., dense_dim) conditioned on
        `dense_codes` (default: the true codes) through their first `cfg.dense_after` levels."""
        logits, state = [], h
        for level in range(self.n_levels):
            logits.append(self.code_logits(state, level))
            state = self.condition(state, level, target_codes[..., level])
        if self.dense_head is None:
            return logits, None
        codes = target_codes if dense_codes is None else dense_codes
        return logits, self.dense_vector(self.conditioned_state(h, codes))
