"""MTGR-style ranker: HSTU blocks over [user tokens | history tokens | K candidate tokens].

One sequence per request. Candidate tokens carry the item's features and the DLRM cross features
(rankers.features). The dynamic mask makes the user and history tokens a context that attends only
to itself, and each candidate attend to the context and to itself, never to another candidate. So
the context is encoded once and all K candidates are scored in one pass (`forward`), which the
per-candidate reference (`forward_reference`: one pass over [context | candidate] per candidate,
the DLRM way) must match. HSTU block (Zhai et al. 2024):

    U, V, Q, K = SiLU(f1(Norm(X)))                       # one projection, split in four
    A = SiLU(Q K^T + rab_pos + rab_time) / n_visible     # pointwise, normalised by visible length
    X = X + f2(Norm(A V) * U)                            # gated by U

Norm is a Group LayerNorm (MTGR): one set of LayerNorm parameters per token type (user, history,
candidate), because the three kinds of token have different statistics.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

USER, HIST, CAND = 0, 1, 2
N_TYPES = 3
N_USER_FEATURES = 3  # log history length, log days since last item, log history span in days


@dataclass(frozen=True)
class MTGRConfig:
    n_items: int
    attr_sizes: tuple[int, ...]  # vocabulary size of each item attribute (code 0 = unknown)
    n_price_buckets: int  # price bucket codes 0..n-1 (0 = unknown)
    n_cross: int  # cross features per candidate
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    dropout: float = 0.1
    id_dropout: float = 0.1  # training: share of item ids replaced by the 'unknown' id
    pos_buckets: int = 64
    time_buckets: int = 24
    group_norm: bool = True  # False: one LayerNorm for every token type (ablation)
    cross_features: bool = True  # False: candidate tokens carry item features only (ablation)
    mask: str = "dynamic"  # "full": candidates also see each other (ablation; not one-pass exact)

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} must be divisible by n_heads {self.n_heads}")
        if self.mask not in ("dynamic", "full"):
            raise ValueError(f"mask must be 'dynamic' or 'full', got {self.mask!r}")


@dataclass
class MTGRInputs:
    """Tensors of one batch of requests. Items are dense ids + 1 (0 = padding / unknown)."""

    user: torch.Tensor  # float [B, N_USER_FEATURES]
    hist_items: torch.Tensor  # long [B, L], 0 on the left padding
    hist_dist: torch.Tensor  # long [B, L], 1 = the most recent item
    hist_age: torch.Tensor  # float [B, L], seconds between the item and the request
    cand_items: torch.Tensor  # long [B, M], 0 = padding
    cand_cross: torch.Tensor  # float [B, M, n_cross], standardised

    def take_candidates(self, j: int) -> "MTGRInputs":
        return MTGRInputs(self.user, self.hist_items, self.hist_dist, self.hist_age,
                          self.cand_items[:, j : j + 1], self.cand_cross[:, j : j + 1])


class GroupLayerNorm(nn.Module):
    """LayerNorm with one (weight, bias) per token type; a single group when disabled."""

    def __init__(self, d: int, groups: int, enabled: bool = True) -> None:
        super().__init__()
        self.enabled = enabled
        n = groups if enabled else 1
        self.weight = nn.Parameter(torch.ones(n, d))
        self.bias = nn.Parameter(torch.zeros(n, d))

    def forward(self, x: torch.Tensor, kind: torch.Tensor | int) -> torch.Tensor:
        y = F.layer_norm(x, x.shape[-1:])
        if not self.enabled:
            return y * self.weight[0] + self.bias[0]
        return y * self.weight[kind] + self.bias[kind]


class RelativeBias(nn.Module):
    """rab(q, k) = pos[h, |d_q - d_k|] + time[h, log2-bucket(|t_q - t_k| in hours)], per head."""

    def __init__(self, cfg: MTGRConfig) -> None:
        super().__init__()
        self.pos_buckets, self.time_buckets = cfg.pos_buckets, cfg.time_buckets
        self.pos = nn.Parameter(torch.zeros(cfg.n_heads, cfg.pos_buckets))
        self.time = nn.Parameter(torch.zeros(cfg.n_heads, cfg.time_buckets))

    def buckets(self, dist: torch.Tensor, age: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = dist.abs().clamp(max=self.pos_buckets - 1)
        t = torch.log2(1.0 + age.abs() / 3600.0).floor().long().clamp(0, self.time_buckets - 1)
        return p, t

    def forward(self, p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """p, t: long [B, Q, K] buckets -> bias [B, H, Q, K]."""
        return (self.pos[:, p] + self.time[:, t]).movedim(0, -3)

    def zero(self) -> torch.Tensor:
        """The bias of a token on itself (distance 0, time 0): [H]."""
        return self.pos[:, 0] + self.time[:, 0]


class HSTUBlock(nn.Module):
    def __init__(self, cfg: MTGRConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, self.h = cfg.d_model, cfg.n_heads
        self.norm_in = GroupLayerNorm(d, N_TYPES, cfg.group_norm)
        self.norm_attn = GroupLayerNorm(d, N_TYPES, cfg.group_norm)
        self.f1 = nn.Linear(d, 4 * d)
        self.f2 = nn.Linear(d, d)
        self.rab = RelativeBias(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def _uvqk(self, x: torch.Tensor, kind: torch.Tensor | int) -> list[torch.Tensor]:
        b, t, d = x.shape
        proj = F.silu(self.f1(self.norm_in(x, kind)))  # (B, T, 4d)
        return [z.reshape(b, t, self.h, d // self.h) for z in proj.split(d, dim=-1)]  # 4 x (B, T, H, dh)

    def _out(self, x: torch.Tensor, o: torch.Tensor, u: torch.Tensor, kind: torch.Tensor | int) -> torch.Tensor:
        b, t = o.shape[:2]
        o = self.norm_attn(o.reshape(b, t, -1), kind) * u.reshape(b, t, -1)  # (B, T, d)
        return x + self.drop(self.f2(o))

    def forward(self, ctx, ctx_kind, ctx_valid, ctx_bias, cand, cand_valid, cand_bias):
        """One pass: ctx (B, C, d) sees itself; cand (B, M, d) sees ctx and itself (with mask 'full'
        every valid candidate too). ctx_bias / cand_bias: bucket pairs (B, C, C) / (B, 1, C)."""
        uc, vc, qc, kc = self._uvqk(ctx, ctx_kind)  # (B, C, H, dh)
        uk, vk, qk, kk = self._uvqk(cand, CAND)  # (B, M, H, dh)
        key_ok = ctx_valid[:, None, None, :].to(ctx.dtype)  # (B, 1, 1, C)
        n_ctx = ctx_valid.sum(-1).to(ctx.dtype)[:, None, None, None]  # (B, 1, 1, 1)
        a = F.silu(torch.einsum("bqhd,bkhd->bhqk", qc, kc) + self.rab(*ctx_bias)) * key_ok / n_ctx  # (B, H, C, C)
        oc = torch.einsum("bhqk,bkhd->bqhd", a, vc)  # (B, C, H, dh)
        n_cand = n_ctx + (cand_valid.sum(-1).to(ctx.dtype)[:, None, None, None] if self.cfg.mask == "full" else 1.0)
        ac = F.silu(torch.einsum("bmhd,bkhd->bhmk", qk, kc) + self.rab(*cand_bias)) * key_ok / n_cand  # (B, H, M, C)
        ok = torch.einsum("bhmk,bkhd->bmhd", ac, vc)  # (B, M, H, dh)
        if self.cfg.mask == "full":
            cand_ok = cand_valid[:, None, None, :].to(ctx.dtype)  # (B, 1, 1, M)
            s = torch.einsum("bmhd,bnhd->bhmn", qk, kk) + self.rab.zero()[:, None, None]  # (B, H, M, M)
            ok = ok + torch.einsum("bhmn,bnhd->bmhd", F.silu(s) * cand_ok / n_cand, vk)
        else:
            s = (qk * kk).sum(-1) + self.rab.zero()  # (B, M, H)
            ok = ok + (F.silu(s) / n_cand[:, 0, 0, :, None])[..., None] * vk
        return self._out(ctx, oc, uc, ctx_kind), self._out(cand, ok, uk, CAND)

    def forward_masked(self, x, kind, mask, bias):
        """Plain path: x (B, T, d), kind (B, T), mask bool (B, T, T) [query, key], bias buckets."""
        u, v, q, k = self._uvqk(x, kind)
        m = mask[:, None].to(x.dtype)  # (B, 1, T, T)
        n = mask.sum(-1).to(x.dtype)[:, None, :, None]  # (B, 1, T, 1)
        a = F.silu(torch.einsum("bqhd,bkhd->bhqk", q, k) + self.rab(*bias)) * m / n  # (B, H, T, T)
        return self._out(x, torch.einsum("bhqk,bkhd->bqhd", a, v), u, kind)


class MTGR(nn.Module):
    def __init__(self, cfg: MTGRConfig, item_attrs: torch.Tensor, item_price: torch.Tensor) -> None:
        """item_attrs: long [n_items, A] attribute codes; item_price: long [n_items] buckets."""
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        pad = lambda t: torch.cat([torch.zeros_like(t[:1]), t])  # row 0 = padding / unknown item
        self.register_buffer("item_attrs", pad(item_attrs.long()))  # (n_items + 1, A)
        self.register_buffer("item_price", pad(item_price.long()))  # (n_items + 1,)
        self.register_buffer("cross_mean", torch.zeros(cfg.n_cross))
        self.register_buffer("cross_std", torch.ones(cfg.n_cross))
        self.item = nn.Embedding(cfg.n_items + 1, d, padding_idx=0)
        self.attrs = nn.ModuleList(nn.Embedding(n, d) for n in cfg.attr_sizes)
        self.price = nn.Embedding(cfg.n_price_buckets, d)
        self.age = nn.Embedding(cfg.time_buckets, d)
        self.kind = nn.Embedding(N_TYPES, d)
        self.user = nn.Linear(N_USER_FEATURES, d)
        self.cross = nn.Sequential(nn.Linear(cfg.n_cross, 2 * d), nn.SiLU(), nn.Linear(2 * d, d)) if cfg.cross_features else None
        self.blocks = nn.ModuleList(HSTUBlock(cfg) for _ in range(cfg.n_layers))
        self.norm_out = GroupLayerNorm(d, N_TYPES, cfg.group_norm)
        self.head = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, 2))  # [listwise, pointwise]
        nn.init.normal_(self.item.weight, std=0.02)
        with torch.no_grad():
            self.item.weight[0].zero_()

    # -- the sparse half: ids and features -> tokens -----------------------------------------
    def item_tokens(self, items: torch.Tensor) -> torch.Tensor:
        """long [...] ids + 1 -> (..., d): id + attribute + price embeddings."""
        ids = items.masked_fill(items >= self.item.num_embeddings, 0)  # items added after training: no id vector
        if self.training and self.cfg.id_dropout > 0:
            ids = torch.where(torch.rand(items.shape, device=items.device) < self.cfg.id_dropout, 0, items)
        x = self.item(ids) + self.price(self.item_price[items])
        attrs = self.item_attrs[items]  # (..., A)
        for a, emb in enumerate(self.attrs):
            x = x + emb(attrs[..., a])
        return x

    def add_items(self, item_attrs: torch.Tensor, item_price: torch.Tensor) -> None:
        """Attribute codes [m, A] and price buckets [m] of m items added after training (the next
        ids): they get attribute and price embeddings, and the id embedding of an unknown item."""
        self.item_attrs = torch.cat([self.item_attrs, item_attrs.long().to(self.item_attrs.device)])
        self.item_price = torch.cat([self.item_price, item_price.long().to(self.item_price.device)])

    def tokens(self, inp: MTGRInputs):
        b, l = inp.hist_items.shape
        user = (self.user(inp.user) + self.kind.weight[USER])[:, None]  # (B, 1, d)
        _, age_bucket = self.blocks[0].rab.buckets(inp.hist_dist, inp.hist_age)
        hist = self.item_tokens(inp.hist_items) + self.age(age_bucket) + self.kind.weight[HIST]  # (B, L, d)
        cand = self.item_tokens(inp.cand_items) + self.kind.weight[CAND]  # (B, M, d)
        if self.cross is not None:
            cand = cand + self.cross((inp.cand_cross - self.cross_mean) / self.cross_std)
        ctx = torch.cat([user, hist], dim=1)  # (B, C = 1 + L, d)
        ctx_valid = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=user.device), inp.hist_items > 0], dim=1)
        ctx_kind = torch.full((1, 1 + l), HIST, dtype=torch.long, device=user.device)
        ctx_kind[:, 0] = USER
        dist = torch.cat([torch.zeros_like(inp.hist_dist[:, :1]), inp.hist_dist], dim=1)  # (B, C)
        age = torch.cat([torch.zeros_like(inp.hist_age[:, :1]), inp.hist_age], dim=1)  # (B, C)
        return ctx, ctx_kind.expand(b, -1), ctx_valid, dist, age, cand, inp.cand_items > 0

    # -- the dense half: one pass over the whole sequence ------------------------------------
    def forward(self, inp: MTGRInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (listwise logits, pointwise logits), each (B, M); padded candidates are -inf / 0."""
        ctx, ctx_kind, ctx_valid, dist, age, cand, cand_valid = self.tokens(inp)
        rab = self.blocks[0].rab
        ctx_bias = rab.buckets(dist[:, :, None] - dist[:, None, :], age[:, :, None] - age[:, None, :])  # (B, C, C)
        cand_bias = tuple(z[:, None, :] for z in rab.buckets(dist, age))  # (B, 1, C): candidates sit at d=0, t=now
        for block in self.blocks:
            ctx, cand = block(ctx, ctx_kind, ctx_valid, ctx_bias, cand, cand_valid, cand_bias)
        out = self.head(self.norm_out(cand, CAND))  # (B, M, 2)
        listwise = out[..., 0].masked_fill(~cand_valid, float("-inf"))
        return listwise, out[..., 1] * cand_valid

    def forward_reference(self, inp: MTGRInputs, batched: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The DLRM way: every candidate gets its own pass over [user | history | candidate]; one
        pass at a time, or (`batched`) the B x M sequences stacked into one batch."""
        b, m = inp.cand_items.shape
        if batched:
            rep = lambda t: t.repeat_interleave(m, dim=0)  # (B * M, ...) one row per candidate
            flat = MTGRInputs(rep(inp.user), rep(inp.hist_items), rep(inp.hist_dist), rep(inp.hist_age),
                              inp.cand_items.reshape(b * m, 1), inp.cand_cross.reshape(b * m, 1, -1))
            listwise, pointwise = (o.reshape(b, m) for o in self._one_candidate(flat))
        else:
            outs = [self._one_candidate(inp.take_candidates(j)) for j in range(m)]
            listwise = torch.cat([o[0] for o in outs], dim=1)
            pointwise = torch.cat([o[1] for o in outs], dim=1)
        return listwise.masked_fill(inp.cand_items == 0, float("-inf")), pointwise * (inp.cand_items > 0)

    def _one_candidate(self, inp: MTGRInputs) -> tuple[torch.Tensor, torch.Tensor]:
        ctx, ctx_kind, ctx_valid, dist, age, cand, _ = self.tokens(inp)
        b, c = ctx_valid.shape
        x = torch.cat([ctx, cand], dim=1)  # (B, C + 1, d)
        kind = torch.cat([ctx_kind, torch.full((b, 1), CAND, dtype=torch.long)], dim=1)
        valid = torch.cat([ctx_valid, torch.ones(b, 1, dtype=torch.bool)], dim=1)  # (B, T)
        mask = valid[:, None, :].expand(b, c + 1, c + 1).clone()
        mask[:, :c, c] = False  # the context never sees the candidate
        d = torch.cat([dist, torch.zeros_like(dist[:, :1])], dim=1)
        t = torch.cat([age, torch.zeros_like(age[:, :1])], dim=1)
        bias = self.blocks[0].rab.buckets(d[:, :, None] - d[:, None, :], t[:, :, None] - t[:, None, :])
        for block in self.blocks:
            x = block.forward_masked(x, kind, mask, bias)
        out = self.head(self.norm_out(x[:, -1:], CAND))  # (B, 1, 2)
        return out[..., 0], out[..., 1]


def forward_flops(cfg: MTGRConfig, n_ctx: int, n_cand: int) -> float:
    """Multiply-add FLOPs (2 per MAC) of one `forward` on one request: projections, attention and
    the head (embedding lookups and elementwise work not counted)."""
    d, t = cfg.d_model, n_ctx + n_cand
    per_layer = 2 * t * d * 4 * d + 2 * t * d * d  # f1, f2
    per_layer += 2 * 2 * n_ctx * n_ctx * d + 2 * 2 * n_cand * n_ctx * d + 2 * 2 * n_cand * d  # QK^T, AV, self
    if cfg.mask == "full":
        per_layer += 2 * 2 * n_cand * n_cand * d
    cross = 2 * n_cand * (cfg.n_cross * 2 * d + 2 * d * d) if cfg.cross_features else 0
    head = 2 * n_cand * (d * d + 2 * d)
    return float(cfg.n_layers * per_layer + cross + head + 2 * N_USER_FEATURES * d)

