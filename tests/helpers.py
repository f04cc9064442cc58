"""Small hand-made fixtures shared by the unit tests (no dataset files needed)."""
from __future__ import annotations

import contextlib

import numpy as np
import pandas as pd

from pipeline.core.protocols import FitData
from pipeline.core.types import RequestBatch

DAY = 86400


def tiny_fit_data(n_items: int = 6, has_time: bool = True) -> FitData:
    """Three users; item 0 -> 1 -> 2 is a frequent path, item 5 is popular late."""
    rows = [
        (0, 0, 1 * DAY), (0, 1, 2 * DAY), (0, 2, 3 * DAY),
        (1, 0, 1 * DAY), (1, 1, 2 * DAY), (1, 3, 30 * DAY),
        (2, 4, 1 * DAY), (2, 5, 40 * DAY), (2, 0, 41 * DAY),
        (3, 5, 41 * DAY), (3, 1, 42 * DAY),
    ]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    frame["seq"] = frame.groupby("user_id").cumcount()
    items = pd.DataFrame({
        "item_id": np.arange(n_items), "title": [f"item {i}" for i in range(n_items)],
        "categories": ["Root|a", "Root|a", "Root|b", "Root|b", "Root|c", "Root|c"][:n_items],
        "category": ["a", "a", "b", "b", "c", "c"][:n_items], "brand": ["x"] * n_items,
        "price": np.ones(n_items), "created_at": np.zeros(n_items, np.int64),
    })
    return FitData(train=frame, items=items, n_users=4, n_items=n_items, has_time=has_time,
                   user_ids=np.array([f"u{i}" for i in range(4)]), item_ids=np.array([f"i{i}" for i in range(n_items)]))


def batch_of(histories: list[list[int]], now: list[int] | None = None, users: list[int] | None = None) -> RequestBatch:
    users = users if users is not None else list(range(len(histories)))
    times = [np.arange(len(h), dtype=np.int64) * DAY + DAY for h in histories]
    return RequestBatch.from_sequences(users, [np.array(h, np.int64) for h in histories], times, now=now)


def check_long_history_masked(channel, n_items: int, window: int = 5, k: int = 10) -> None:
    """A history longer than the model window: the items the channel returns for a short history
    are made OLDER than the window; the channel must still never return them (nor any seen item)."""
    from pipeline.core.types import PAD

    probe = RequestBatch.from_sequences([0], [np.array([0, 1], np.int64)], max_len=window)
    first = channel.retrieve(probe, k).items[0]
    first = first[first != PAD]
    assert len(first) > 0
    filler = [i for i in range(2, n_items) if i not in set(first.tolist())][:window]
    history = np.concatenate([first, [0, 1], filler]).astype(np.int64)
    batch = RequestBatch.from_sequences([0], [history], max_len=window)
    assert len(history) > window and set(first.tolist()).isdisjoint(batch.history[0].tolist())
    got = channel.retrieve(batch, k).items[0]
    assert not set(got[got != PAD].tolist()) & set(history.tolist())


@contextlib.contextmanager
def two_node_cluster(worker_cpus: int, head_cpus: int = 1):
    """A Ray cluster of a head and one worker node on this machine (ray.cluster_utils.Cluster);
    yields (cluster, worker node) and shuts both down after. Any Ray already running is stopped."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": head_cpus})
    worker = cluster.add_node(num_cpus=worker_cpus)
    try:
        cluster.wait_for_nodes()
        yield cluster, worker
    finally:
        ray.shutdown()
        cluster.shutdown()
