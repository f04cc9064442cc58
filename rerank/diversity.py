"""Greedy list construction: MMR, category coverage, sliding-window caps and dedup, around pins.

Positions are filled left to right. A pinned position takes its pin; any other takes the candidate
with the best objective among those that break no constraint:

    objective = lambda * relevance - (1 - lambda) * max cosine similarity to the items in the list
                + coverage bonus (if its attribute value is not in the list yet)

Pins count as "in the list" from the start (for similarity, coverage, caps and dedup), so items
around a pin make room for it. Ties go to the lower item id (candidates are sorted by id and
`argmax` takes the first maximum). Each step costs O(M * d) for the similarity update.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Constraint:
    """At most `max_items` candidates sharing a code in any `window` consecutive positions.

    Dedup is the case max_items=1, window=k. `codes` are the candidates' codes (-1: missing,
    never constrained); `slots` are the codes already fixed at each of the k positions (pins)."""

    name: str  # reason tag, e.g. "cap:category" or "dedup:brand"
    codes: np.ndarray  # int64 [M]
    slots: np.ndarray  # int64 [k], -1 where free
    n_codes: int  # codes lie in [-1, n_codes)
    max_items: int
    window: int
    hard: bool = True  # False: may be relaxed when no candidate satisfies it


@dataclass(frozen=True)
class SelectionInput:
    relevance: np.ndarray  # float64 [M], rule-adjusted, candidates sorted by item id
    eligible: np.ndarray  # bool [M]
    k: int
    pinned_slots: frozenset[int]
    lam: float = 1.0
    vectors: np.ndarray | None = None  # float32 [M, d], unit rows (needed when lam < 1)
    pinned_vectors: np.ndarray | None = None  # float32 [P, d], the pins' unit rows
    coverage_name: str = ""
    coverage_codes: np.ndarray | None = None  # int64 [M]
    coverage_pinned: np.ndarray | None = None  # int64 [P], the pins' codes
    coverage_bonus: float = 0.0
    constraints: tuple[Constraint, ...] = ()
    relax: bool = False


@dataclass
class Selection:
    picks: list[int] = field(default_factory=list)  # per position: candidate index, or -1 for a pin
    tags: list[list[str]] = field(default_factory=list)  # per position: the rules that moved it
    stop: str | None = None  # why the list ended before k, if it did


def blocked_codes(slots: list[int], p: int, max_items: int, window: int) -> list[int]:
    """Codes that already fill some window containing position p (p itself is free).

    Plain Python on purpose: at most 2 * window - 1 slots, where numpy's call overhead dominates."""
    lo, hi = max(0, p - window + 1), min(len(slots), p + window)
    counts: dict[int, int] = {}
    for c in slots[lo : min(lo + window, hi)]:  # the first window containing p
        counts[c] = counts.get(c, 0) + 1
    blocked = {c for c, n in counts.items() if n >= max_items}
    for s in range(lo + 1, p + 1):  # slide: drop slots[s - 1], add slots[s + window - 1]
        counts[slots[s - 1]] -= 1
        if s + window - 1 < hi:
            c = slots[s + window - 1]
            counts[c] = counts.get(c, 0) + 1
            if counts[c] >= max_items:
                blocked.add(c)
    blocked.discard(-1)
    return sorted(blocked)


class _State:
    """What the list holds so far. Unavailable candidates carry -inf in `base` and `rel`, so the
    objective needs no mask; constraint masks are built only when the best item breaks one.

    objective = base - penalty, with base = lambda * relevance + coverage bonus (updated when a
    value gets covered) and penalty = (1 - lambda) * max similarity (updated per pick)."""

    def __init__(self, inp: SelectionInput) -> None:
        self.inp = inp
        self.mmr = inp.lam < 1.0 and inp.vectors is not None
        self.weight = 1.0 - inp.lam
        self.base0 = np.where(inp.eligible, (inp.lam if self.mmr else 1.0) * inp.relevance, -np.inf)  # (M,)
        self.rel = np.where(inp.eligible, inp.relevance, -np.inf)  # (M,)
        self.left = int(inp.eligible.sum())
        self.slots = [c.slots.tolist() for c in inp.constraints]
        self.penalty: np.ndarray | None = None  # (M,)
        if self.mmr and inp.pinned_vectors is not None and inp.pinned_vectors.shape[0]:
            self.penalty = self.weight * (inp.pinned_vectors @ inp.vectors.T).max(axis=0)  # (P, M) -> (M,)
        self.uncovered = _uncovered(inp)  # (M,) bool or None
        self.base = self.base0.copy()
        if self.uncovered is not None:
            self.base += inp.coverage_bonus * self.uncovered

    def objective(self) -> np.ndarray:
        return self.base if self.penalty is None else self.base - self.penalty

    def masks(self, blocked: list[set[int]], which: list[bool]) -> np.ndarray:
        """bool [M]: candidates whose codes are blocked by none of the selected constraints."""
        allowed = np.ones(self.base.shape[0], dtype=bool)
        for c, codes, use in zip(self.inp.constraints, blocked, which):
            if use and codes:
                lut = np.zeros(c.n_codes + 1, dtype=bool)  # the extra last entry is what code -1 reads
                lut[list(codes)] = True
                allowed &= ~lut[c.codes]
        return allowed

    def breaks_each(self, j: int, blocked: list[set[int]]) -> list[bool]:
        """Per constraint: does candidate j break it at the current position?"""
        return [int(c.codes[j]) in b for c, b in zip(self.inp.constraints, blocked)]

    def breaks(self, j: int, blocked: list[set[int]]) -> bool:
        return any(self.breaks_each(j, blocked))

    def commit(self, j: int, p: int) -> None:
        inp = self.inp
        self.base[j] = self.base0[j] = self.rel[j] = -np.inf
        self.left -= 1
        for c, s in zip(inp.constraints, self.slots):
            s[p] = int(c.codes[j])
        if self.mmr:
            pen = self.weight * (inp.vectors @ inp.vectors[j])  # type: ignore[operator]  # (M, d) @ (d,) -> (M,)
            self.penalty = pen if self.penalty is None else np.maximum(self.penalty, pen, out=self.penalty)
        if self.uncovered is not None and self.uncovered[j]:  # a newly covered value: its bonus ends
            same = inp.coverage_codes == inp.coverage_codes[j]  # type: ignore[index]  # (M,)
            np.copyto(self.base, self.base0, where=same)
            self.uncovered &= ~same


def _uncovered(inp: SelectionInput) -> np.ndarray | None:
    """bool [M]: candidates whose coverage value is in the list neither yet nor through a pin."""
    if inp.coverage_codes is None:
        return None
    out = inp.coverage_codes >= 0
    for code in (inp.coverage_pinned if inp.coverage_pinned is not None else ()):
        out &= inp.coverage_codes != code
    return out


def _pick(state: _State, p: int) -> tuple[int, list[str]] | None:
    """The candidate for free position p and its tags, or None when none fits."""
    inp = state.inp
    blocked = [set(blocked_codes(s, p, c.max_items, c.window)) for c, s in zip(inp.constraints, state.slots)]
    obj = state.objective()
    free = int(np.argmax(obj))
    if not state.breaks(free, blocked):
        return free, _fast_tags(state, free, blocked)
    allowed = state.masks(blocked, [True] * len(blocked))  # slow path: the best item breaks a cap or dedup
    j = int(np.argmax(np.where(allowed, obj, -np.inf)))
    relaxed = False
    if not allowed[j] or obj[j] == -np.inf:
        if not inp.relax:
            return None
        allowed = state.masks(blocked, [c.hard for c in inp.constraints])
        j = int(np.argmax(np.where(allowed, obj, -np.inf)))
        if not allowed[j] or obj[j] == -np.inf:
            return None
        relaxed = True
    held, j_breaks = state.breaks_each(free, blocked), state.breaks_each(j, blocked)
    tags = [c.name for c, h, b in zip(inp.constraints, held, j_breaks) if h and (not b or relaxed)] if j != free else []
    tags += _diversity_tags(state, j, int(np.argmax(np.where(allowed, state.rel, -np.inf))))
    if relaxed:
        tags += [f"relaxed:{c.name}" for c, b in zip(inp.constraints, j_breaks) if b]
    return j, tags


def _fast_tags(state: _State, j: int, blocked: list[set[int]]) -> list[str]:
    """Tags of a pick that broke no constraint; the most relevant item may still break one."""
    best_rel = int(np.argmax(state.rel))
    if best_rel != j and state.breaks(best_rel, blocked):
        best_rel = int(np.argmax(np.where(state.masks(blocked, [True] * len(blocked)), state.rel, -np.inf)))
    return _diversity_tags(state, j, best_rel)


def _diversity_tags(state: _State, j: int, best_rel: int) -> list[str]:
    """'mmr' / 'coverage:<attr>' when the pick is not the most relevant allowed item."""
    if best_rel == j:
        return []
    tags = ["mmr"] if state.mmr else []
    if state.uncovered is not None and state.uncovered[j]:
        tags.append(state.inp.coverage_name)
    return tags


def select(inp: SelectionInput) -> Selection:
    """Fill positions 0..k-1; stop early (and say why) when no candidate fits a free position."""
    state, out = _State(inp), Selection()
    for p in range(inp.k):
        if p in inp.pinned_slots:
            out.picks.append(-1)
            out.tags.append([])
            continue
        if state.left == 0:
            out.stop = f"list ends at {p} < k={inp.k}: pool exhausted"
            break
        picked = _pick(state, p)
        if picked is None:
            names = ", ".join(c.name for c in inp.constraints)
            out.stop = f"list ends at {p} < k={inp.k}: no remaining item satisfies {names}"
            break
        out.picks.append(picked[0])
        out.tags.append(picked[1])
        state.commit(picked[0], p)
    return out


# ---- the plain reference: same results, full masks at every step ------------------------------

class _PlainState:
    """What the list holds so far, in the forms the objective and the constraints need."""

    def __init__(self, inp: SelectionInput) -> None:
        self.inp = inp
        self.remaining = inp.eligible.copy()
        self.slots = [c.slots.tolist() for c in inp.constraints]
        self.maxsim: np.ndarray | None = None  # (M,), max similarity to the list so far
        self.mmr = inp.lam < 1.0 and inp.vectors is not None
        if self.mmr and inp.pinned_vectors is not None and inp.pinned_vectors.shape[0]:
            self.maxsim = (inp.pinned_vectors @ inp.vectors.T).max(axis=0)  # (P, M) -> (M,)
        self.uncovered = _uncovered(inp)  # (M,) bool: attribute value not in the list yet

    def objective(self) -> np.ndarray:
        inp = self.inp
        obj = inp.lam * inp.relevance if self.mmr else inp.relevance.copy()
        if self.uncovered is not None:
            obj += inp.coverage_bonus * self.uncovered
        if self.maxsim is not None:
            obj -= (1.0 - inp.lam) * self.maxsim
        return obj

    def satisfied(self, p: int) -> list[np.ndarray]:
        """Per constraint: bool [M], True where the candidate may go to position p."""
        out = []
        for c, s in zip(self.inp.constraints, self.slots):
            lut = np.zeros(c.n_codes + 1, dtype=bool)  # the extra last entry is what code -1 reads
            lut[blocked_codes(s, p, c.max_items, c.window)] = True
            out.append(~lut[c.codes])
        return out

    def commit(self, j: int, p: int) -> None:
        inp = self.inp
        self.remaining[j] = False
        for c, s in zip(inp.constraints, self.slots):
            s[p] = int(c.codes[j])
        if self.mmr:
            sims = inp.vectors @ inp.vectors[j]  # type: ignore[operator]  # (M, d) @ (d,) -> (M,)
            self.maxsim = sims if self.maxsim is None else np.maximum(self.maxsim, sims)
        if self.uncovered is not None and inp.coverage_codes is not None and inp.coverage_codes[j] >= 0:
            self.uncovered &= inp.coverage_codes != inp.coverage_codes[j]


def _best(mask: np.ndarray, values: np.ndarray) -> int:
    return int(np.argmax(np.where(mask, values, -np.inf)))


def _allowed(state: _PlainState, ok: list[np.ndarray]) -> tuple[np.ndarray, bool]:
    """Candidates breaking no constraint; if none and relaxing is on, those breaking no hard one."""
    allowed = state.remaining.copy()
    for m in ok:
        allowed &= m
    if allowed.any() or not state.inp.relax:
        return allowed, False
    allowed = state.remaining.copy()
    for c, m in zip(state.inp.constraints, ok):
        if c.hard:
            allowed &= m
    return allowed, bool(allowed.any())


def _tags(
    state: _PlainState, j: int, obj: np.ndarray, allowed: np.ndarray, ok: list[np.ndarray], relaxed: bool
) -> list[str]:
    """The rules that put candidate j here instead of the plain best-scored one."""
    inp, tags = state.inp, []
    free = _best(state.remaining, obj)
    if free != j:  # a better item was held back by a cap or dedup
        tags += [c.name for c, m in zip(inp.constraints, ok) if not m[free] and (m[j] or relaxed)]
    if _best(allowed, inp.relevance) != j:
        if state.mmr:
            tags.append("mmr")
        if state.uncovered is not None and state.uncovered[j]:
            tags.append(inp.coverage_name)
    if relaxed:
        tags += [f"relaxed:{c.name}" for c, m in zip(inp.constraints, ok) if not m[j]]
    return tags


def select_reference(inp: SelectionInput) -> Selection:
    """The plain version of `select` (full masks at every step); tests check both agree."""
    state, out = _PlainState(inp), Selection()
    for p in range(inp.k):
        if p in inp.pinned_slots:
            out.picks.append(-1)
            out.tags.append([])
            continue
        if not state.remaining.any():
            out.stop = f"list ends at {p} < k={inp.k}: pool exhausted"
            break
        ok = state.satisfied(p)
        allowed, relaxed = _allowed(state, ok)
        if not allowed.any():
            names = ", ".join(c.name for c in inp.constraints)
            out.stop = f"list ends at {p} < k={inp.k}: no remaining item satisfies {names}"
            break
        obj = state.objective()
        j = _best(allowed, obj)
        out.picks.append(j)
        out.tags.append(_tags(state, j, obj, allowed, ok, relaxed))
        state.commit(j, p)
    return out
