"""Prefix trie of the codes that exist, as dense per-level tables, and the items behind each code.

Prefixes of length l get ids 0..P_l-1 (P_0 = 1: the empty prefix). `child[l]` is int64
[P_l, sizes[l]]: the id of prefix + (code) of length l+1, or -1 where no item has it, so the
valid next codes of a beam are `child[l][prefix] >= 0` (one gather per level, batched over beams
and requests). Full codes (length L) are leaves; `leaf_items` lists the items of every leaf in
CSR form (`leaf_ptr`). Memory is sum_l P_l * sizes[l] * 8 bytes (e.g. 3 x 256 on 12k items:
~25 MB); the trie is rebuilt from the code table when items are added.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.core import device


@dataclass(frozen=True)
class CodeTrie:
    sizes: tuple[int, ...]
    child: tuple[torch.Tensor, ...]  # per level: int64 [P_l, sizes[l]]
    leaf_ptr: np.ndarray  # int64 [P_L + 1]
    leaf_items: np.ndarray  # int64 [n active items], grouped by leaf
    item_leaf: np.ndarray  # int64 [n_items], -1 for items without a code
    leaf_codes: np.ndarray  # int64 [P_L, L]

    @classmethod
    def build(cls, codes: np.ndarray, sizes: tuple[int, ...], active: np.ndarray | None = None) -> "CodeTrie":
        """codes: int64 [n_items, L]; active: bool [n_items] (items without a code: False)."""
        n_items, n_levels = codes.shape
        if n_levels != len(sizes):
            raise ValueError(f"codes have {n_levels} levels, sizes {len(sizes)}")
        active = np.ones(n_items, bool) if active is None else np.asarray(active, bool)
        rows = np.flatnonzero(active)
        sub = codes[rows]
        if sub.size and (sub.min() < 0 or np.any(sub.max(axis=0) >= np.asarray(sizes))):
            raise ValueError("codes out of range of the codebook sizes")
        prefix = np.zeros(len(rows), np.int64)
        n_prefix = 1
        child = []
        for level, k in enumerate(sizes):
            key = prefix * k + sub[:, level]
            uniq, inverse = np.unique(key, return_inverse=True)
            table = np.full((n_prefix, k), -1, np.int64)
            table[uniq // k, uniq % k] = np.arange(len(uniq))
            child.append(device.tensor(table))
            prefix, n_prefix = inverse.reshape(-1), len(uniq)
        order = np.argsort(prefix, kind="stable")
        leaf_ptr = np.zeros(n_prefix + 1, np.int64)
        np.add.at(leaf_ptr, prefix + 1, 1)
        item_leaf = np.full(n_items, -1, np.int64)
        item_leaf[rows] = prefix
        leaf_codes = np.zeros((n_prefix, n_levels), np.int64)
        leaf_codes[prefix] = sub
        return cls(tuple(int(s) for s in sizes), tuple(child), np.cumsum(leaf_ptr), rows[order], item_leaf, leaf_codes)

    @property
    def n_leaves(self) -> int:
        return int(self.leaf_codes.shape[0])

    def leaf_of(self, codes: np.ndarray) -> np.ndarray:
        """Leaf id of each full code (int64 [n]), -1 where the code does not exist."""
        node = np.zeros(codes.shape[0], np.int64)
        for level, table in enumerate(self.child):
            ok = node >= 0
            nxt = np.full_like(node, -1)
            nxt[ok] = device.numpy(table)[node[ok], codes[ok, level]]
            node = nxt
        return node

    def contains(self, codes: np.ndarray) -> np.ndarray:
        return self.leaf_of(np.asarray(codes, np.int64).reshape(-1, len(self.sizes))) >= 0
