"""Trie-constrained beam search over semantic IDs, and the scoring of the items behind the beams.

`beam_search` decodes the ID level by level for a batch of requests at once: at level l every
beam's logits are masked to the codes that extend its prefix to an existing one (`CodeTrie.child`),
renormalised (log-softmax over the valid codes) and added to the beam's log-probability; the best
`beam_size` (beam, code) pairs of each request survive. It can therefore never emit a code that no
item has. `fuse` then scores the candidate items of every beam:
- sparse only (TIGER / cobra_sparse): log P(ID) + log P(item | ID), the second term a popularity
  prior inside the ID (0 when IDs are unique);
- BeamFusion (COBRA): the items inside each beam's ID, plus optionally the `catalog_neighbors`
  nearest items of the beam's dense vector in the whole catalog (faiss), scored
      sparse_weight * log softmax_beams(tau * log P(ID)) + dense_weight * log softmax_cands(psi * cos(v_hat, v_item)),
  i.e. the product Softmax(tau phi(ID)) x Softmax(psi cos) of the COBRA paper when both weights are 1;
  with `similarity: dot` the raw dot product v_hat . v_item takes the cosine's place. A catalog
  neighbour's log P(ID) is that of the beam whose dense vector found it (`neighbor_id_score:
  search`, as in the paper), or that of its own ID (`own`: the beam holding its ID, else the
  weakest live beam, an upper bound for an ID outside the beam). The two differ when the dense
  vector does not depend on the ID (dense_levels 0): there every neighbour would inherit the best
  beam's score and the sparse side could not reorder them.
  With `catalog_query: history` the catalog is searched once per request, by the dense vector of
  the history alone (the head applied before any ID level), while the items inside each beam's ID
  keep the similarity with that beam's conditioned vector: the ID-conditioned vector ranks within
  the generated IDs, the ID-free one brings the catalog neighbours (log P(ID) of the best beam, or
  of their own ID's beam under `own`).
Candidates are kept flat (request, beam, item) so that the cost follows the number of real
candidates, not the largest ID. An item reached by several beams keeps its best score; seen items
are removed; top k per request. `with_cold_quota` then gives the last places of each answer to
the items without interactions nearest to the ID-free vector (a fresh item has no ID probability
worth the name and would rarely reach the top otherwise).
"""
from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
import torch

from channels.cobra.model import CobraModel
from channels.cobra.trie import CodeTrie
from pipeline.core import device
from pipeline.core.types import PAD, Retrieved, seen_mask

NEG_INF = float("-inf")
NEIGHBOR_ID_SCORES = ("search", "own")
CATALOG_QUERIES = ("beams", "history")


def _run_starts(change: np.ndarray) -> np.ndarray:
    """True where a run of equal sorted keys starts, from `change` = key[1:] != key[:-1]."""
    return np.concatenate([np.ones(1, bool), change])


def _rank_in_runs(starts: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run (`starts`: bool, True at a run's first element)."""
    pos = np.arange(starts.size)
    return pos - np.maximum.accumulate(np.where(starts, pos, 0))


@dataclass(frozen=True)
class BeamConfig:
    beam_size: int = 20  # beams kept per ID level
    catalog_neighbors: int = 0  # per beam, nearest items of v_hat in the whole catalog (COBRA only)
    search_beams: int | None = None  # only the best this many dense vectors per request search the catalog (None: all)
    tau: float = 1.0  # beam-score temperature (multiplies log P(ID) before the softmax over beams)
    psi: float = 20.0  # dense-similarity scale (multiplies the cosine / dot product before the softmax)
    sparse_weight: float = 1.0  # BeamFusion weight of the beam score
    dense_weight: float = 1.0  # BeamFusion weight of the dense similarity
    max_leaf_items: int | None = None  # cap on the items read from one ID (None: all)
    neighbor_id_score: str = "search"  # log P(ID) of a catalog neighbour: its finding beam's, or its own ID's
    catalog_query: str = "beams"  # what searches the catalog: every beam's dense vector, or the history's (one per request)

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")
        if self.search_beams is not None and self.search_beams < 1:
            raise ValueError(f"search_beams must be >= 1 or None, got {self.search_beams}")
        if self.neighbor_id_score not in NEIGHBOR_ID_SCORES:
            raise ValueError(f"neighbor_id_score must be one of {NEIGHBOR_ID_SCORES}, got {self.neighbor_id_score!r}")
        if self.catalog_query not in CATALOG_QUERIES:
            raise ValueError(f"catalog_query must be one of {CATALOG_QUERIES}, got {self.catalog_query!r}")


@dataclass(frozen=True)
class Beams:
    codes: torch.Tensor  # int64 (B, W, L)
    logp: torch.Tensor  # float (B, W); -inf for beams that do not exist (fewer valid IDs than W)
    leaf: torch.Tensor  # int64 (B, W); leaf id in the trie, -1 for dead beams
    state: torch.Tensor  # float (B, W, d); the head state after the full ID
    dense_state: torch.Tensor  # float (B, W, d); the state the dense head reads (after dense_after levels)


@torch.no_grad()
def beam_search(model: CobraModel, h: torch.Tensor, trie: CodeTrie, beam_size: int) -> Beams:
    """Decode the best `beam_size` existing IDs for each history state h (B, d)."""
    b, d = h.shape
    prefix = torch.zeros(b, 1, dtype=torch.long)  # (B, w): trie node of each beam
    logp = torch.zeros(b, 1)  # (B, w)
    state = h[:, None, :]  # (B, w, d)
    codes = torch.zeros(b, 1, 0, dtype=torch.long)  # (B, w, l)
    dense_state = state
    for level, table in enumerate(trie.child):
        k = table.shape[1]
        child = table[prefix.clamp(min=0)]  # (B, w, K): next node per code, -1 if absent
        valid = (child >= 0) & (prefix >= 0)[..., None]  # (B, w, K)
        logits = model.code_logits(state, level).float()  # (B, w, K)
        lp = torch.log_softmax(logits.masked_fill(~valid, -1e9), dim=-1).masked_fill(~valid, NEG_INF)
        total = (logp[..., None] + lp).reshape(b, -1)  # (B, w*K)
        width = min(beam_size, total.shape[1])
        top, idx = total.topk(width, dim=1)  # (B, W)
        parent, code = idx // k, idx % k  # (B, W)
        prefix = child.reshape(b, -1).gather(1, idx).masked_fill(top == NEG_INF, -1)  # (B, W)
        state = state.gather(1, parent[..., None].expand(-1, -1, d))  # (B, W, d)
        state = model.condition(state, level, code)
        dense_state = state if level + 1 == model.cfg.dense_after else dense_state.gather(1, parent[..., None].expand(-1, -1, d))
        codes = torch.cat([codes.gather(1, parent[..., None].expand(-1, -1, codes.shape[2])), code[..., None]], dim=2)
        logp = top
    if model.dense_cond is not None:  # the dense head has its own code embeddings
        dense_state = model.conditioned_state(h[:, None, :], codes)
    return Beams(codes, logp, prefix, state, dense_state)


@dataclass(frozen=True)
class Candidates:
    """The items behind a batch's beams, flat: candidate t is item `items[t]` reached by beam
    `beams[t]` of request `rows[t]`; `sim` is its similarity with that beam's dense vector (COBRA);
    `own_beams` the beam holding the item's own ID (the row's weakest live beam when none does)."""

    beam_logp: np.ndarray  # float64 (B, W)
    rows: np.ndarray  # int64 (T,)
    beams: np.ndarray  # int64 (T,)
    items: np.ndarray  # int64 (T,)
    sim: np.ndarray | None = None  # float32 (T,)
    own_beams: np.ndarray | None = None  # int64 (T,)

    @property
    def n_rows(self) -> int:
        return int(self.beam_logp.shape[0])

    def subset(self, keep: np.ndarray) -> "Candidates":
        return Candidates(self.beam_logp, self.rows[keep], self.beams[keep], self.items[keep],
                          None if self.sim is None else self.sim[keep],
                          None if self.own_beams is None else self.own_beams[keep])


def with_own_beams(cands: Candidates, beam_leaf: np.ndarray, item_leaf: np.ndarray) -> Candidates:
    """Attach, for every candidate, the beam of its row whose ID is the item's own (leaf ids:
    beam_leaf (B, W), -1 for dead beams; item_leaf (n_items,)), else the row's weakest live beam."""
    leaves = beam_leaf[cands.rows]  # (T, W)
    match = (leaves == item_leaf[cands.items][:, None]) & (leaves >= 0)
    weakest = np.maximum(np.isfinite(cands.beam_logp).sum(axis=1) - 1, 0)  # beams are sorted best first
    own = np.where(match.any(axis=1), match.argmax(axis=1), weakest[cands.rows]).astype(np.int64)
    return Candidates(cands.beam_logp, cands.rows, cands.beams, cands.items, cands.sim, own)


def leaf_candidates(beams: Beams, trie: CodeTrie, max_leaf_items: int | None = None) -> Candidates:
    """Every item inside the ID of every live beam (at most max_leaf_items per ID)."""
    leaf = device.numpy(beams.leaf).reshape(-1)  # (B*W,)
    b, w = beams.leaf.shape
    live = np.flatnonzero(leaf >= 0)
    start = trie.leaf_ptr[leaf[live]]
    count = trie.leaf_ptr[leaf[live] + 1] - start
    if max_leaf_items is not None:
        count = np.minimum(count, max_leaf_items)
    slot = np.repeat(live, count)  # (T,) flat beam slot
    first = np.repeat(np.cumsum(count) - count, count)
    items = trie.leaf_items[np.repeat(start, count) + np.arange(slot.size) - first]
    return Candidates(device.numpy(beams.logp).astype(np.float64), slot // w, slot % w, items.astype(np.int64))


def neighbor_candidates(cands: Candidates, v_hat: np.ndarray, index: faiss.Index, n: int,
                        groups: np.ndarray | None = None, fill: int = 0, search_beams: int | None = None) -> Candidates:
    """Add the n nearest catalog items of every live beam's dense vector (one faiss search for
    all beams of the batch). `groups` (B, W, G) marks beams that share one dense vector (the same
    ID prefix when the dense head reads only part of the ID): each group is searched once, for its
    best (first) beam; the other beams of the group would only repeat its neighbours with a lower
    beam score. `fill`: the best beam of each request keeps max(n, fill) neighbours, so that a
    request can be answered with `fill` items even when the beams' IDs hold few. `search_beams`:
    only the best this many (distinct) dense vectors of each request search; the other beams bring
    the items of their ID alone (the search is most of a request's cost)."""
    b, w, dim = v_hat.shape
    live = np.flatnonzero(np.isfinite(cands.beam_logp.reshape(-1)))
    n_search = min(max(n, fill), index.ntotal)
    if n_search <= 0 or live.size == 0:
        return cands
    if groups is not None:
        key = np.c_[live // w, groups.reshape(b * w, -1)[live]]
        _, first = np.unique(key, axis=0, return_index=True)
        live = live[np.sort(first)]
    if search_beams is not None:
        row = live // w
        live = live[_rank_in_runs(_run_starts(row[1:] != row[:-1])) < search_beams]
    _, nb = index.search(np.ascontiguousarray(v_hat.reshape(-1, dim)[live], np.float32), n_search)  # (live, n_search)
    best = _run_starts(live[1:] // w != live[:-1] // w)  # the first (best) searched beam of each request
    keep = (np.arange(n_search)[None, :] < n) | best[:, None]  # (live, n_search)
    slot = np.broadcast_to(live[:, None], nb.shape)[keep]
    items = nb[keep].astype(np.int64)
    ok = items >= 0
    slot = slot[ok]
    return Candidates(cands.beam_logp, np.concatenate([cands.rows, slot // w]), np.concatenate([cands.beams, slot % w]),
                      np.concatenate([cands.items, items[ok]]), cands.sim)


def history_neighbor_candidates(cands: Candidates, v_hist: np.ndarray, index: faiss.Index, item_vecs: np.ndarray,
                                n: int, fill: int = 0) -> Candidates:
    """Add the max(n, fill) nearest catalog items of each request's unconditioned dense vector
    v_hist (B, D): one search per request whatever the beam size. They are attached to the best
    beam (as `search` scoring would) and carry their similarity with v_hist, so `with_similarity`
    must run on the beams' own candidates before this."""
    n_search = min(max(n, fill), index.ntotal)
    if n_search <= 0 or cands.n_rows == 0:
        return cands
    _, nb = index.search(np.ascontiguousarray(v_hist, np.float32), n_search)  # (B, n_search)
    ok = nb >= 0
    rows = np.broadcast_to(np.arange(cands.n_rows)[:, None], nb.shape)[ok]
    items = nb[ok].astype(np.int64)
    sim = np.einsum("td,td->t", v_hist[rows], item_vecs[items]).astype(np.float32, copy=False)
    return Candidates(cands.beam_logp, np.concatenate([cands.rows, rows]), np.concatenate([cands.beams, np.zeros_like(rows)]),
                      np.concatenate([cands.items, items]), np.concatenate([cands.sim, sim]))


def with_similarity(cands: Candidates, v_hat: np.ndarray, item_vecs: np.ndarray) -> Candidates:
    """Attach the similarity v_hat . v_item of each candidate's beam (the cosine when both are normalised)."""
    vh = v_hat[cands.rows, cands.beams]  # (T, D)
    sim = np.einsum("td,td->t", vh, item_vecs[cands.items]).astype(np.float32, copy=False)  # (T,)
    return Candidates(cands.beam_logp, cands.rows, cands.beams, cands.items, sim, cands.own_beams)


def drop_seen(cands: Candidates, history: np.ndarray, seen: tuple[np.ndarray, np.ndarray] | None = None) -> Candidates:
    """Remove candidates their request has seen: (rows, items) pairs in `seen`, else the items
    of the history matrix."""
    if seen is None:
        rows_h, cols_h = np.nonzero(history != PAD)
        seen = (rows_h, history[rows_h, cols_h])
    return cands.subset(~seen_mask(seen, cands.rows, cands.items))


def _segment_log_softmax(x: np.ndarray, rows: np.ndarray, n_rows: int) -> np.ndarray:
    """log softmax of x within each row group (x, rows: (T,))."""
    xt, rt = device.tensor(x.astype(np.float64)), device.tensor(rows)
    m = torch.full((n_rows,), float("-inf"), dtype=torch.float64).scatter_reduce(0, rt, xt, "amax")
    z = torch.zeros(n_rows, dtype=torch.float64).index_add(0, rt, torch.exp(xt - m[rt]))
    return device.numpy(xt - m[rt] - torch.log(z[rt]))


def _log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    finite = np.isfinite(x)
    m = np.max(np.where(finite, x, -np.inf), axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    z = np.where(finite, np.exp(x - m), 0.0).sum(axis=axis, keepdims=True)
    return np.where(finite, x - m - np.log(np.maximum(z, 1e-30)), NEG_INF)


def fusion_scores(cands: Candidates, cfg: BeamConfig) -> np.ndarray:
    """BeamFusion: sparse_weight * log softmax_W(tau * logP(ID)) + dense_weight * log softmax_cands(psi * sim)."""
    by = cands.own_beams if cfg.neighbor_id_score == "own" and cands.own_beams is not None else cands.beams
    beam = _log_softmax(cfg.tau * cands.beam_logp, axis=1)[cands.rows, by]  # (T,)
    dense = _segment_log_softmax(cfg.psi * cands.sim, cands.rows, cands.n_rows)  # (T,)
    return (cfg.sparse_weight * beam + cfg.dense_weight * dense).astype(np.float32)


def sparse_scores(cands: Candidates, log_prior: np.ndarray) -> np.ndarray:
    """log P(ID) + log P(item | ID) (the sparse-only modes)."""
    return (cands.beam_logp[cands.rows, cands.beams] + log_prior[cands.items]).astype(np.float32)


def top_unique(cands: Candidates, scores: np.ndarray, k: int) -> Retrieved:
    """Per request: the best k distinct items (an item's best score counts), best first, ties by
    lower item id; PAD / -inf padded."""
    b = cands.n_rows
    out_items = np.full((b, max(k, 0)), PAD, np.int64)
    out_scores = np.full((b, max(k, 0)), NEG_INF, np.float32)
    keep = np.isfinite(scores)
    rows, its, sc = cands.rows[keep], cands.items[keep], scores[keep]
    if k <= 0 or its.size == 0:
        return Retrieved(out_items, out_scores)
    order = np.lexsort((-sc, its, rows))  # by row, item, best score first
    rows, its, sc = rows[order], its[order], sc[order]
    first = _run_starts((rows[1:] != rows[:-1]) | (its[1:] != its[:-1]))
    rows, its, sc = rows[first], its[first], sc[first]
    order = np.lexsort((its, -sc, rows))  # by row, best score, lower item id
    rows, its, sc = rows[order], its[order], sc[order]
    rank = _rank_in_runs(_run_starts(rows[1:] != rows[:-1]))
    take = rank < k
    out_items[rows[take], rank[take]] = its[take]
    out_scores[rows[take], rank[take]] = sc[take]
    return Retrieved(out_items, out_scores)


def with_cold_quota(out: Retrieved, v_hist: np.ndarray, cold: np.ndarray, item_vecs: np.ndarray, quota: int,
                    history: np.ndarray, seen: tuple[np.ndarray, np.ndarray] | None = None) -> Retrieved:
    """Reserve the last `quota` places of each answer for items without interactions: the unseen
    ones in `cold` (sorted dense ids) nearest to the row's ID-free vector (v_hist (B, D)), best
    first, ties by lower id. The answer's own items keep the places above; they fill the reserved
    ones only where fewer cold items are left. Those items' scores continue the list's order below
    its last kept score (steps of 1e-3), so the answer stays sorted."""
    b, k = out.items.shape
    q = min(int(quota), k)
    if q <= 0 or cold.size == 0 or b == 0:
        return out
    if seen is None:
        rows_h, cols_h = np.nonzero(history != PAD)
        seen = (rows_h, history[rows_h, cols_h])
    sims = (np.asarray(v_hist, np.float32) @ item_vecs[cold].T).astype(np.float64)  # (B, C): the cold set is small
    head_rows, head_cols = np.nonzero(out.items[:, : k - q] != PAD)
    for rows, its in (seen, (head_rows, out.items[head_rows, head_cols])):  # seen, or above the reserved places
        rows, its = np.asarray(rows, np.int64), np.asarray(its, np.int64)
        pos = np.minimum(np.searchsorted(cold, its), cold.size - 1)
        hit = cold[pos] == its
        sims[rows[hit], pos[hit]] = NEG_INF
    take = min(q, cold.size)
    best = np.argsort(-sims, axis=1, kind="stable")[:, :take]  # stable on sorted ids: ties by lower id
    items, scores = out.items.copy(), out.scores.copy()
    for r in range(b):
        picked = cold[best[r][np.isfinite(sims[r, best[r]])]]
        if picked.size == 0:
            continue
        kept = out.items[r, : k - q]
        kept = kept[kept != PAD]
        rest = out.items[r, k - q:]
        rest = rest[(rest != PAD) & ~np.isin(rest, picked)]
        row = np.concatenate([kept, picked, rest])[:k]
        items[r, : row.size] = row
        items[r, row.size:] = PAD
        last = float(out.scores[r, kept.size - 1]) if kept.size else 0.0
        scores[r, kept.size: row.size] = last - 1e-3 * np.arange(1, row.size - kept.size + 1)
        scores[r, row.size:] = NEG_INF
    return Retrieved(items, scores.astype(np.float32))
