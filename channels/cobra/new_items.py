"""New items in a fitted CobraChannel, from content alone (no retraining): a code from the
content quantizer (TIGER: plus the next free disambiguation token), item features, a dense vector
and a place in the faiss index. The channel's `add_items` calls this."""
from __future__ import annotations

import numpy as np
import pandas as pd

from channels.cobra.catalog import leaf_log_prior
from channels.cobra.features import build_features
from channels.cobra.trie import CodeTrie


def add_items(ch, items: pd.DataFrame) -> np.ndarray:
    """`CobraChannel.add_items` on a fitted channel `ch` (see there). Returns their codes (int64 [m, L])."""
    if "item_id" not in items.columns:
        raise ValueError(f"channel '{ch.name}': the items frame needs an 'item_id' column (dense index)")
    frame = items.reset_index(drop=True)
    ids = frame["item_id"].to_numpy(np.int64)
    n = len(ch.active_)
    old, new = ids[ids < n], ids[ids >= n]
    if np.any(old < 0) or np.any(ch.active_[old]) or np.unique(ids).size != ids.size:
        raise ValueError(f"channel '{ch.name}': add_items needs ids not yet in the catalog (got active or negative ids)")
    if not np.array_equal(np.sort(new), np.arange(n, n + len(new))):
        raise ValueError(f"channel '{ch.name}': new item ids beyond the catalog must be {n}, {n + 1}, ... without gaps")
    grow(ch, n + len(new))
    content = ch.encoder_.transform(frame)
    base = ch.quantizer_.encode(content)
    codes = ch.parts.ids.new_codes(ch, base)
    ch.codes_[ids] = codes
    ch.active_[ids] = True
    feats = build_features(ch.encoder_.tfidf(frame), content, frame.get("price"), ch.price_edges_, ids,
                           np.zeros(len(ids), bool), ch.config.items.max_tokens)
    ch.features_ = ch.features_.set_rows(ids, feats)
    ch.trie_ = CodeTrie.build(ch.codes_, tuple(ch.sizes_), ch.active_)
    ch.log_prior_ = leaf_log_prior(ch.trie_, ch.popularity_, ch.active_)
    ch.parts.head.add(ch, ids)
    ch.cold_ = ch.cold_items()
    return codes

def grow(ch, n: int) -> None:
    extra = n - len(ch.active_)
    if extra <= 0:
        return
    ch.active_ = np.r_[ch.active_, np.zeros(extra, bool)]
    ch.popularity_ = np.r_[ch.popularity_, np.zeros(extra)]
    ch.codes_ = np.concatenate([ch.codes_, np.zeros((extra, ch.codes_.shape[1]), np.int64)])
    ch.parts.head.grow(ch, extra)
