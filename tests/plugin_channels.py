"""A user's own channel, living outside the package and named in a config by import path.
README.md shows this class as the plug-in example."""
from __future__ import annotations

import numpy as np

from channels.topk import mask_seen, top_k


class LastCategoryChannel:
    """Popular items, boosted when they share the category of the user's last item."""

    def __init__(self, *, name: str, boost: float = 1.0):
        self.name, self.boost = name, boost

    def fit(self, data):
        self.category_ = data.items["category"].astype(str).to_numpy()
        self.pop_ = np.bincount(data.train["item_id"], minlength=data.n_items).astype(np.float32)
        return self

    def retrieve(self, batch, k):
        last = np.where(batch.lengths > 0, batch.history[:, -1], 0)  # each user's last item
        same = self.category_[None, :] == self.category_[last][:, None]  # (B, n_items)
        scores = self.pop_[None, :] * (1 + self.boost * (same & (batch.lengths > 0)[:, None]))
        return top_k(mask_seen(scores, batch), k)


class NotAChannel:
    """Constructs fine but has no retrieve(): the config loader must say so."""

    def __init__(self, *, name: str):
        self.name = name

    def fit(self, data):
        return self


class RecordingChannel(LastCategoryChannel):
    """Remembers every interaction it was fitted on (for the leakage test)."""

    seen_rows: list = []

    def fit(self, data):
        RecordingChannel.seen_rows.append(data.train[["user_id", "item_id", "timestamp"]].copy())
        return super().fit(data)


class FallbackCategoryChannel(LastCategoryChannel):
    """The same channel, declaring the fallback role: on an empty history it is plain popularity."""

    roles = ("fallback",)
