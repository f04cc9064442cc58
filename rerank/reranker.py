"""The rule-and-diversity re-ranker: filters, boosts, freshness, pins, dedup, caps, MMR, coverage.

    reranker = RuleDiversityReRanker(**params)       # validated RerankParams; ValueError if bad
    reranker.bind(items, vectors, item_ids)          # once, after the run (item table) is loaded
    reranker.rerank(batch, pools, k)                 # the ReRanker protocol
    reranker.rerank_explained(batch, pools, k)       # the same, plus notes on dropped pins etc.

Per request, in order:
 1. pool rows are deduplicated by item (best score kept) and sorted by item id (the tie-break);
 2. scores -> relevance in (0, 1] by rank (`rules.relevance`); items scored -inf/nan are dropped;
 3. filters drop seen, blocked and unavailable items; nothing brings them back, not even a pin;
 4. relevance * boost factors + boost adds + freshness bonus = the adjusted score;
 5. pins are resolved (`BoundRules.resolve_pins`) and `diversity.select` fills the list.

Conflicts and impossible rules (each dropped pin or short list gets a note in `rerank_explained`):
 - two pins on one slot, one item pinned twice, lambda outside [0, 1], window or max_items < 1,
   unknown keys: ValueError at construction; unknown columns or item ids: ValueError at `bind`;
 - a pin at slot >= k (so also more pins than k): dropped for that request;
 - a pinned item that is seen, blocked or unavailable: dropped, its slot is filled normally;
   a rule pin ('newest ...') skips such items and takes the next newest; none left: dropped;
 - pins are never moved: a pin sits at exactly its slot or is not in the list; a pin whose slot
   lies past the end of the list (pool exhausted, or caps unmet) is dropped, the farthest first,
   and the list is rebuilt without it (its item then competes like any other);
 - pins beat caps and dedup (two pins may share a category inside a window); other items count
   the pins and make room around them;
 - a cap or dedup that no remaining item can meet at some position: with on_unmet_caps='shorten'
   (default) the list ends there, shorter than k, and later pins are dropped as above; with
   'relax' the best item breaking only window caps (never dedup) is placed there, tagged
   'relaxed:cap:<attr>';
 - the pool runs out: the list is shorter than k (noted); later pins are dropped as above;
 - a pinned item that the ranker scored -inf is still placed (only the filters bind pins).
Output `scores` are the adjusted scores (nan for a pinned item that was not in the pool); the
list order is the answer, it need not follow the scores (pins and MMR move items).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pydantic import ValidationError

from pipeline.core.types import CandidateSet, RequestBatch
from rerank.diversity import Constraint, Selection, SelectionInput, select
from rerank.params import RerankParams, format_errors
from rerank.rules import OK, BoundRules, PinChoice, relevance

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RerankResult:
    candidates: CandidateSet
    notes: tuple[str, ...]  # dropped pins, short lists: what the rules could not do


@dataclass(frozen=True)
class _Pool:
    """One request's candidates: unique, sorted by item id, with their pool rows."""

    rows: np.ndarray  # int64 [M] rows of the input pool
    items: np.ndarray  # int64 [M]
    adjusted: np.ndarray  # float64 [M]
    eligible: np.ndarray  # bool [M]


class RuleDiversityReRanker:
    """See the module docstring; params are the fields of `rerank.params.RerankParams`."""

    name = "rules"

    def __init__(self, **params: Any) -> None:
        try:
            self.params = RerankParams.model_validate(params)
        except ValidationError as err:
            raise ValueError(f"rerank (kind 'rules'): invalid params\n{format_errors(err)}") from None
        self.rules_: BoundRules | None = None
        self.vectors_: np.ndarray | None = None

    @property
    def fresh(self) -> tuple[float, float] | None:
        f = self.params.freshness
        return None if f is None else (f.max_age_days, f.bonus)

    def bind(
        self, items: pd.DataFrame, vectors: np.ndarray | None = None, item_ids: np.ndarray | None = None
    ) -> "RuleDiversityReRanker":
        """Attach the canonical item table (item_id, category, brand, price, created_at, ...; row
        per dense item index), optional float32 [n_items, d] item vectors (needed when lambda < 1)
        and optional original ids by dense index (needed for id_space 'original'). Returns self."""
        rules = BoundRules.build(self.params, items, item_ids)
        self.vectors_ = None
        if self.params.lambda_ < 1.0:
            self.vectors_ = unit_rows(vectors, rules.n_items)
        self.rules_ = rules
        return self

    def rerank(self, batch: RequestBatch, pools: list[CandidateSet], k: int) -> list[CandidateSet]:
        return [r.candidates for r in self.rerank_explained(batch, pools, k)]

    def rerank_explained(self, batch: RequestBatch, pools: list[CandidateSet], k: int) -> list[RerankResult]:
        if self.rules_ is None:
            raise RuntimeError("RuleDiversityReRanker: call bind(items, vectors) before rerank()")
        if len(pools) != len(batch):
            raise ValueError(f"rerank: {len(pools)} pools for a batch of {len(batch)} requests")
        if k < 0:
            raise ValueError(f"rerank: k must be >= 0, got {k}")
        out = []
        for row, pool in enumerate(pools):
            seen = set(batch.seen_of(row).tolist()) if self.params.filters.seen else set()
            result = self._one(pool, int(batch.now[row]), seen, k)
            if result.notes:
                log.debug("rerank row %d: %s", row, "; ".join(result.notes))
            out.append(result)
        return out

    def _one(self, pool: CandidateSet, now: int, seen: set[int], k: int) -> RerankResult:
        rules = self.rules_
        assert rules is not None
        pins, notes = rules.resolve_pins(k, now, seen)
        while True:  # a pin past the end of the list is dropped and its item may compete normally
            cands = self._candidates(pool, now, seen, {p.item for p in pins.values()})
            sel = select(self._selection_input(cands, pins, k))
            late = [s for s in pins if s >= len(sel.picks)]
            if not late:
                break
            slot = max(late)
            notes.append(f"pin slot={slot} ({pins.pop(slot).label}) dropped: list ends at {len(sel.picks)}")
        if sel.stop:
            notes.append(sel.stop)
        return RerankResult(self._assemble(pool, cands, pins, sel, now), tuple(notes))

    def _candidates(self, pool: CandidateSet, now: int, seen: set[int], pinned: set[int]) -> _Pool:
        rules = self.rules_
        assert rules is not None
        rows = unique_rows(pool.items, pool.scores)
        items = pool.items[rows].astype(np.int64)
        if items.size and (items[0] < 0 or items[-1] >= rules.n_items):
            raise ValueError(f"rerank: pool holds item ids outside [0, {rules.n_items}) of the bound item table")
        rel = relevance(pool.scores[rows])
        eligible = (rules.filtered[items] == OK) & (rel > 0)
        excluded = np.fromiter(seen | pinned, dtype=np.int64, count=len(seen | pinned))
        at = np.minimum(np.searchsorted(items, excluded), max(items.shape[0] - 1, 0))  # items are sorted
        if items.size:
            eligible[at[items[at] == excluded]] = False
        return _Pool(rows, items, rules.adjusted(items, rel, now, self.fresh), eligible)

    def _selection_input(self, cands: _Pool, pins: dict[int, PinChoice], k: int) -> SelectionInput:
        rules, p = self.rules_, self.params
        assert rules is not None
        pin_items = np.array([pins[s].item for s in sorted(pins)], dtype=np.int64)
        pin_slots = np.array(sorted(pins), dtype=np.int64)

        def constraint(name: str, attr: str, max_items: int, window: int, hard: bool) -> Constraint:
            slots = np.full(k, -1, dtype=np.int64)
            slots[pin_slots] = rules.codes[attr][pin_items]
            return Constraint(name, rules.codes[attr][cands.items], slots, rules.n_codes[attr], max_items, window, hard)

        constraints: list[Constraint] = []
        if p.dedup:  # dedup = at most one per group in a window spanning the whole list
            constraints.append(constraint(f"dedup:{p.dedup.attribute}", p.dedup.attribute, 1, max(k, 1), True))
        relax = p.on_unmet_caps == "relax"
        constraints += [constraint(f"cap:{c.attribute}", c.attribute, c.max_items, c.window, not relax) for c in p.caps]
        cov = p.coverage
        return SelectionInput(
            relevance=cands.adjusted, eligible=cands.eligible, k=k, pinned_slots=frozenset(pins), lam=p.lambda_,
            vectors=None if self.vectors_ is None else self.vectors_[cands.items],
            pinned_vectors=None if self.vectors_ is None else self.vectors_[pin_items],
            coverage_name=f"coverage:{cov.attribute}" if cov else "",
            coverage_codes=rules.codes[cov.attribute][cands.items] if cov else None,
            coverage_pinned=rules.codes[cov.attribute][pin_items] if cov else None,
            coverage_bonus=cov.bonus if cov else 0.0,
            constraints=tuple(constraints), relax=relax,
        )

    def _assemble(
        self, pool: CandidateSet, cands: _Pool, pins: dict[int, PinChoice], sel: Selection, now: int
    ) -> CandidateSet:
        rules = self.rules_
        assert rules is not None
        rows, items, scores, reasons = [], [], [], []
        for pos, j in enumerate(sel.picks):
            if j >= 0:
                item = int(cands.items[j])
                rows.append(int(cands.rows[j]))
                scores.append(cands.adjusted[j])
                extra = rules.score_reasons(item, now, self.fresh) + sel.tags[pos]
            else:
                item = pins[pos].item
                at = int(np.searchsorted(cands.items, item))
                in_pool = at < cands.items.shape[0] and cands.items[at] == item
                rows.append(int(cands.rows[at]) if in_pool else -1)
                scores.append(cands.adjusted[at] if in_pool else np.nan)
                extra = list(pins[pos].reasons)
            items.append(item)
            reasons.append(extra)
        found, rank, cscore = provenance(pool, np.array(rows, dtype=np.int64))
        for i, extra in enumerate(reasons):
            reasons[i] = [f"channel:{c}" for c, f in zip(pool.channels, found[i]) if f] + extra
        return CandidateSet(
            np.array(items, dtype=np.int64), np.array(scores, dtype=np.float32), pool.channels,
            found, rank, cscore, reasons,
        )


def provenance(pool: CandidateSet, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """found, channel_rank, channel_score of the given pool rows; row -1 (a pin from outside the
    pool) reads as found by no channel."""
    if len(pool) == 0:  # only pins
        shape = (rows.shape[0], len(pool.channels))
        return np.zeros(shape, bool), np.full(shape, -1, np.int32), np.full(shape, np.nan, np.float32)
    outside = rows < 0
    safe = np.where(outside, 0, rows)
    found, rank = pool.found[safe], pool.channel_rank[safe].astype(np.int32)
    cscore = pool.channel_score[safe].astype(np.float32)
    found[outside], rank[outside], cscore[outside] = False, -1, np.nan
    return found, rank, cscore


def unique_rows(items: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Pool rows sorted by item id, one per item (its best score; nan counts as -inf)."""
    order = np.argsort(items, kind="stable")
    if order.shape[0] > 1 and (items[order[1:]] == items[order[:-1]]).any():  # duplicates: keep the best
        best_first = np.where(np.isnan(scores), np.inf, -scores.astype(np.float64))
        order = np.lexsort((best_first, items))
        first = np.ones(order.shape[0], dtype=bool)
        first[1:] = items[order[1:]] != items[order[:-1]]
        order = order[first]
    return order


def unit_rows(vectors: np.ndarray | None, n_items: int) -> np.ndarray:
    """float32 [n_items, d] with unit-length rows (all-zero rows stay zero: similarity 0)."""
    if vectors is None:
        raise ValueError("rerank: lambda < 1 (MMR) needs item vectors: bind(items, vectors=float32 [n_items, d])")
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim != 2 or v.shape[0] != n_items:
        raise ValueError(f"rerank: item vectors must be [n_items={n_items}, d], got shape {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError("rerank: item vectors contain nan or inf")
    norms = np.linalg.norm(v, axis=1, keepdims=True)  # (n, 1)
    return np.where(norms > 0, v / np.maximum(norms, 1e-12), 0.0).astype(np.float32)
