"""Starting Ray for one of our jobs: join the cluster the user named, or start our own.

`ray.init()` with no address joins the latest cluster that `ray start` left on this machine, if
any, and then refuses the local settings (`num_cpus`, `object_store_memory`) with an error that
does not say why. A job that was not given an address therefore starts its own local instance
(`address="local"`), beside any other; the cluster to join is named in the config, or in
`RAY_ADDRESS` (Ray's own variable).
"""
from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)


def start_or_join(address: str | None, **local: Any) -> str | None:
    """`ray.init` on `address` (else on $RAY_ADDRESS), or a new local instance with the `local`
    settings when neither is set. Common keywords (log_to_driver, logging_level, ...) go in
    `local` too and are passed either way, the local-only ones only to a new instance. Returns
    the address joined, or None for a local instance."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        shared = {k: v for k, v in local.items() if k not in LOCAL_ONLY}
        log.info("joining the Ray cluster at %s", address)
        ray.init(address=address, **shared)
        return address
    ray.init(address="local", **local)
    return None


# ray.init settings that only a new instance takes (joining a cluster with them is an error)
LOCAL_ONLY = frozenset({"num_cpus", "num_gpus", "object_store_memory", "resources", "include_dashboard",
                        "dashboard_host", "dashboard_port", "labels"})
