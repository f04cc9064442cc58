"""Core types that flow through the cascade.

Item and user ids inside the cascade are dense integer indices (0..n-1) assigned once when a
dataset is prepared; the maps to the original ids live with the data (see `pipeline.data`).
Everything batch-shaped is columnar: numpy arrays, never lists of per-item Python objects.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

PAD = -1  # padding value for item and user indices
DAY = 86400.0  # seconds: timestamps are Unix seconds


@dataclass(frozen=True)
class Request:
    """One recommendation request.

    `user` is a dense user index or None for an unknown user; `history` holds item indices,
    oldest first; `history_times` (unix seconds) is aligned with it when known. `now` is the
    request time used by point-in-time features (defaults to the last history time).
    """

    user: int | None = None
    history: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    history_times: np.ndarray | None = None
    k: int = 10
    context: Mapping[str, Any] = field(default_factory=dict)
    now: int | None = None


@dataclass(frozen=True)
class RequestBatch:
    """A batch of requests with histories left-padded to one length.

    history: int64 [B, L], PAD on the left, most recent item in the last column.
    history_times: int64 [B, L], 0 where padded.
    lengths: int64 [B], number of real history items per row.
    users: int64 [B], PAD for unknown users.
    now: int64 [B], request time per row.
    seen_items / seen_offsets: every item each row has seen, its whole history and not only the
    last L columns (row r: seen_items[seen_offsets[r]:seen_offsets[r + 1]]); None when the
    history matrix is the whole history. Seen-item filters read `seen_of` / `seen_pairs`.
    """

    users: np.ndarray
    history: np.ndarray
    history_times: np.ndarray
    lengths: np.ndarray
    now: np.ndarray
    contexts: tuple[Mapping[str, Any], ...] = ()
    seen_items: np.ndarray | None = None  # int64 [S]
    seen_offsets: np.ndarray | None = None  # int64 [B + 1]

    def __len__(self) -> int:
        return int(self.users.shape[0])

    @classmethod
    def from_sequences(
        cls,
        users: Sequence[int] | np.ndarray,
        histories: Sequence[np.ndarray],
        times: Sequence[np.ndarray] | None = None,
        max_len: int | None = None,
        now: Sequence[int] | np.ndarray | None = None,
        contexts: Sequence[Mapping[str, Any]] | None = None,
    ) -> "RequestBatch":
        """Pack ragged histories (oldest first); keep the last `max_len` items of each as the
        history matrix, and every item of each as the seen set."""
        n = len(histories)
        lens = np.array([len(h) for h in histories], dtype=np.int64)
        seen_items = seen_offsets = None
        if max_len is not None and n and int(lens.max()) > max_len:  # the matrix is cut: keep all seen items
            seen_items = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories])
            seen_offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        if max_len is not None:
            lens = np.minimum(lens, max_len)
        width = max(int(lens.max()) if n else 0, 1)
        hist = np.full((n, width), PAD, dtype=np.int64)
        ht = np.zeros((n, width), dtype=np.int64)
        for i, h in enumerate(histories):
            m = int(lens[i])
            if m:
                hist[i, width - m :] = np.asarray(h, dtype=np.int64)[-m:]
                if times is not None and times[i] is not None:
                    ht[i, width - m :] = np.asarray(times[i], dtype=np.int64)[-m:]
        if now is None:
            now_arr = ht[:, -1].copy()
        else:
            now_arr = np.asarray(now, dtype=np.int64)
        users_arr = np.asarray(
            [PAD if u is None else u for u in users] if not isinstance(users, np.ndarray) else users,
            dtype=np.int64,
        )
        ctx = tuple(contexts) if contexts is not None else tuple({} for _ in range(n))
        return cls(users_arr, hist, ht, lens, now_arr, ctx, seen_items, seen_offsets)

    @classmethod
    def from_requests(cls, requests: Sequence[Request], max_len: int | None = None) -> "RequestBatch":
        return cls.from_sequences(
            [r.user for r in requests],
            [r.history for r in requests],
            [r.history_times if r.history_times is not None else np.zeros(len(r.history), np.int64) for r in requests],
            max_len=max_len,
            now=[
                r.now if r.now is not None else (int(r.history_times[-1]) if r.history_times is not None and len(r.history_times) else 0)
                for r in requests
            ],
            contexts=[r.context for r in requests],
        )

    def take(self, rows: np.ndarray | slice) -> "RequestBatch":
        idx = np.arange(len(self))[rows]
        seen_items = seen_offsets = None
        if self.seen_offsets is not None:
            starts, sizes = self.seen_offsets[idx], np.diff(self.seen_offsets)[idx]
            seen_offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
            gather = np.repeat(starts - seen_offsets[:-1], sizes) + np.arange(seen_offsets[-1])
            seen_items = self.seen_items[gather]
        return RequestBatch(
            self.users[idx],
            self.history[idx],
            self.history_times[idx],
            self.lengths[idx],
            self.now[idx],
            tuple(self.contexts[i] for i in idx) if self.contexts else (),
            seen_items,
            seen_offsets,
        )

    def history_of(self, row: int) -> np.ndarray:
        """The real (unpadded) history of one row, oldest first (at most L items)."""
        m = int(self.lengths[row])
        return self.history[row, self.history.shape[1] - m :] if m else self.history[row, :0]

    def seen_of(self, row: int) -> np.ndarray:
        """Every item row `row` has seen (its whole history), oldest first."""
        if self.seen_offsets is None:
            return self.history_of(row)
        return self.seen_items[self.seen_offsets[row] : self.seen_offsets[row + 1]]

    def seen_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, items), int64 [S] each: every seen item of every row."""
        if self.seen_offsets is None:
            rows, cols = np.nonzero(self.history != PAD)
            return rows.astype(np.int64), self.history[rows, cols]
        sizes = np.diff(self.seen_offsets)
        return np.repeat(np.arange(len(self), dtype=np.int64), sizes), self.seen_items

    def is_seen(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        """bool, shaped like `items`: whether each (row, item) pair is a seen item of that row
        (`rows` broadcasts against `items`)."""
        return seen_mask(self.seen_pairs(), rows, items)

    def max_seen(self) -> int:
        """The largest number of seen items in one row."""
        if self.seen_offsets is None:
            return int(self.lengths.max()) if len(self) else 0
        return int(np.diff(self.seen_offsets).max()) if len(self) else 0


def seen_mask(seen: tuple[np.ndarray, np.ndarray], rows: np.ndarray, items: np.ndarray) -> np.ndarray:
    """bool, shaped like `items`: whether (rows, items) is among the `seen` (rows, items) pairs."""
    rows, items = np.broadcast_arrays(np.asarray(rows, np.int64), np.asarray(items, np.int64))
    seen_rows, seen_items = (np.asarray(a, np.int64) for a in seen)
    n = max(int(items.max(initial=0)), int(seen_items.max(initial=0))) + 1  # one key per (row, item)
    # kind='sort': the default may pick a lookup table as long as the key range (rows x catalog)
    return np.isin(rows * n + items, seen_rows * n + seen_items, kind="sort")


@dataclass(frozen=True)
class Retrieved:
    """A channel's answer for a batch: item indices [B, k] (PAD where fewer), scores [B, k];
    `failed` (bool [B], optional) marks rows the channel could not answer (their lists are empty
    and the channel is named as degraded for them)."""

    items: np.ndarray
    scores: np.ndarray
    failed: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.items.shape != self.scores.shape or self.items.ndim != 2:
            raise ValueError(
                f"Retrieved needs items and scores of one 2-D shape, got {self.items.shape} and {self.scores.shape}"
            )
        if self.failed is not None and self.failed.shape != self.items.shape[:1]:
            raise ValueError(f"Retrieved.failed needs shape ({self.items.shape[0]},), got {self.failed.shape}")

    def any_failed(self) -> bool:
        return self.failed is not None and bool(self.failed.any())

    @classmethod
    def empty(cls, batch_size: int, k: int = 0) -> "Retrieved":
        return cls(np.full((batch_size, k), PAD, np.int64), np.full((batch_size, k), -np.inf, np.float32))


@dataclass
class CandidateSet:
    """The pool of one request, columnar.

    items: int64 [M]; scores: float32 [M] (the latest stage's score);
    channels: names of the C channels, the column order of the provenance arrays;
    found: bool [M, C]; channel_rank: int32 [M, C] (0-based, -1 where not found);
    channel_score: float32 [M, C] (nan where not found);
    reasons: one list of strings per item, filled by the re-ranker.
    """

    items: np.ndarray
    scores: np.ndarray
    channels: tuple[str, ...]
    found: np.ndarray
    channel_rank: np.ndarray
    channel_score: np.ndarray
    reasons: list[list[str]] | None = None

    def __len__(self) -> int:
        return int(self.items.shape[0])

    def select(self, order: np.ndarray, scores: np.ndarray | None = None) -> "CandidateSet":
        """A new set with the rows in `order` (e.g. an argsort), optionally new scores."""
        return CandidateSet(
            self.items[order],
            (self.scores[order] if scores is None else np.asarray(scores, np.float32)),
            self.channels,
            self.found[order],
            self.channel_rank[order],
            self.channel_score[order],
            None if self.reasons is None else [self.reasons[i] for i in np.asarray(order)],
        )

    def found_by(self, row: int) -> list[str]:
        return [c for c, f in zip(self.channels, self.found[row]) if f]


@dataclass
class Recommendation:
    """The cascade's answer for one request."""

    items: np.ndarray
    scores: np.ndarray
    reasons: list[list[str]]
    degraded: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    pool_size: int = 0
