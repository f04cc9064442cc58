"""The live history store: interactions users make between trainings, read by the next request.

Events are kept by the dataset's ORIGINAL ids (strings), so they survive a rolling update to a
run with other dense ids, and may name users or items the run does not know yet. Every event has
an id (sent, or a hash of user, item, time and type): adding the same event twice stores it once.

Two backends behind one interface (`HistoryStore`):
- `LocalStore` (the default): in process; every accepted batch is appended to a log file and
  fsynced before it is acknowledged, and the whole state is snapshotted atomically (then the log
  restarts) every `snapshot_every` events; opening the folder again replays snapshot + log, so a
  restart loses nothing that was acknowledged. One process owns a folder (the serving app runs it
  in a single-replica `history` deployment that every ingress replica calls).
- `RedisStore`: a Redis server shared by every replica and node; one list per user, one set of
  event ids, the dedupe-and-append done atomically by a server-side script.
A store that cannot be reached raises `StoreUnavailable`; the ingress then answers from the
trained history (`degraded: ["history_store"]`) and refuses events with a retryable 503.
The store also holds the items taken out of the catalog (`set_available`), which the ingress
removes from every channel's output and the pool, and the items added to it (`add_items`, in
arrival order; pipeline/serving/catalog.py says how the stages serve them).
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pipeline.core.artifacts import atomic_write_json


class StoreUnavailable(RuntimeError):
    """The store cannot be reached (or answered an error); nothing was written."""


@dataclass(frozen=True)
class Event:
    user_id: str
    item_id: str
    time: int  # unix seconds
    type: str = "interaction"
    value: float | None = None
    event_id: str = ""

    @property
    def key(self) -> str:
        """The idempotency key: the sent id, else a digest of what the event says."""
        if self.event_id:
            return self.event_id
        return hashlib.sha1(f"{self.user_id}\x00{self.item_id}\x00{self.time}\x00{self.type}".encode()).hexdigest()


class HistoryStore(Protocol):
    def add(self, events: list[Event]) -> tuple[int, int]:
        """Store the new events; (accepted, duplicates). Raises StoreUnavailable."""
        ...

    def recent(self, user_id: str, limit: int) -> list[tuple[int, str]]:
        """The user's last `limit` stored events as (time, item_id), oldest first."""
        ...

    def set_available(self, item_ids: list[str], available: bool) -> None:
        """Take items out of every list (False) or put them back (True)."""
        ...

    def unavailable(self) -> set[str]: ...

    def add_items(self, records: list[dict]) -> int:
        """Append item records (pipeline.serving.catalog.record_of) to the live catalog; returns
        how many records it holds now (its version)."""
        ...

    def items(self, start: int = 0) -> list[dict]:
        """The live catalog's records from position `start` on, in arrival order."""
        ...

    def close(self) -> None: ...


class LocalStore:
    def __init__(self, folder: str | Path, snapshot_every: int = 10000) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.snapshot_every = snapshot_every
        self._lock = threading.Lock()
        self._users: dict[str, list[tuple[int, str]]] = {}
        self._ids: set[str] = set()
        self._rows: list[tuple[str, str, int, str]] = []  # every stored event, in arrival order (snapshots)
        self._since_snapshot = 0
        self._unavailable: set[str] = set()
        self._items: list[dict] = []
        self._load()
        self._log = open(self.folder / "events.log", "a", encoding="utf-8")
        self._items_log = open(self.folder / "items.log", "a", encoding="utf-8")

    @property
    def n_events(self) -> int:
        return len(self._ids)

    def _apply(self, key: str, user: str, time: int, item: str) -> bool:
        if key in self._ids:
            return False
        self._ids.add(key)
        self._rows.append((key, user, time, item))
        seq = self._users.setdefault(user, [])
        seq.append((time, item))
        if len(seq) > 1 and seq[-2][0] > time:  # out of order: keep each user's events by time
            seq.sort(key=lambda e: e[0])
        return True

    def _load(self) -> None:
        off = self.folder / "unavailable.json"
        if off.is_file():
            self._unavailable = set(json.loads(off.read_text()))
        snap = self.folder / "snapshot.json"
        if snap.is_file():
            state = json.loads(snap.read_text())
            for key, user, time, item in state["events"]:
                self._apply(key, user, int(time), item)
        items = self.folder / "items.log"
        if items.is_file():
            for line in items.read_text(encoding="utf-8").splitlines():
                try:
                    self._items.append(dict(json.loads(line)))
                except (ValueError, TypeError):  # cut by a crash mid-write: never acknowledged
                    continue
        log = self.folder / "events.log"
        if log.is_file():
            for line in log.read_text(encoding="utf-8").splitlines():
                try:
                    key, user, time, item = json.loads(line)
                except (ValueError, TypeError):  # a line cut by a crash mid-write was never acknowledged
                    continue
                self._apply(key, user, int(time), item)

    def add(self, events: list[Event]) -> tuple[int, int]:
        with self._lock:
            first: dict[str, tuple[str, str, int, str]] = {}
            for e in events:  # one per key, the first, within the batch too
                if e.key not in self._ids:
                    first.setdefault(e.key, (e.key, e.user_id, int(e.time), e.item_id))
            fresh = list(first.values())
            if fresh:
                self._log.write("".join(json.dumps(r) + "\n" for r in fresh))
                self._log.flush()
                os.fsync(self._log.fileno())  # durable before it is acknowledged
                for r in fresh:
                    self._apply(*r)
                self._since_snapshot += len(fresh)
                if self._since_snapshot >= self.snapshot_every:
                    self._snapshot()
            return len(fresh), len(events) - len(fresh)

    def _snapshot(self) -> None:
        """Whole state to snapshot.json atomically, then an empty log (a crash between the two
        leaves snapshot + old log, which replay to the same state: events are deduplicated)."""
        atomic_write_json(self.folder / "snapshot.json", {"events": self._rows})
        self._log.close()
        self._log = open(self.folder / "events.log", "w", encoding="utf-8")
        self._since_snapshot = 0

    def recent(self, user_id: str, limit: int) -> list[tuple[int, str]]:
        with self._lock:
            return list(self._users.get(user_id, ())[-limit:])

    def set_available(self, item_ids: list[str], available: bool) -> None:
        with self._lock:
            new = self._unavailable - set(item_ids) if available else self._unavailable | set(item_ids)
            atomic_write_json(self.folder / "unavailable.json", sorted(new))
            self._unavailable = new

    def unavailable(self) -> set[str]:
        with self._lock:
            return set(self._unavailable)

    def add_items(self, records: list[dict]) -> int:
        with self._lock:
            if records:
                self._items_log.write("".join(json.dumps(r) + "\n" for r in records))
                self._items_log.flush()
                os.fsync(self._items_log.fileno())  # durable before it is acknowledged
                self._items += [dict(r) for r in records]
            return len(self._items)

    def items(self, start: int = 0) -> list[dict]:
        with self._lock:
            return [dict(r) for r in self._items[start:]]

    def close(self) -> None:
        with self._lock:
            if self._since_snapshot:
                self._snapshot()
            self._log.close()
            self._items_log.close()


# KEYS[1]: the id set; ARGV: triples (event key, user, "time|item"); returns how many were new
_ADD = """
local added = 0
for i = 1, #ARGV, 3 do
  if redis.call('SADD', KEYS[1], ARGV[i]) == 1 then
    redis.call('RPUSH', KEYS[2] .. ARGV[i + 1], ARGV[i + 2])
    added = added + 1
  end
end
return added
"""


class RedisStore:
    def __init__(self, url: str, prefix: str = "hybridrec", timeout_s: float = 0.2) -> None:
        import redis
        self._errors = (redis.RedisError, OSError)
        self.client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self.ids_key, self.user_prefix = f"{prefix}:event_ids", f"{prefix}:history:"
        self.off_key, self.items_key = f"{prefix}:unavailable", f"{prefix}:items"
        self._add = self.client.register_script(_ADD)

    def add(self, events: list[Event]) -> tuple[int, int]:
        args: list[str] = []
        for e in events:
            args += [e.key, e.user_id, f"{int(e.time)}|{e.item_id}"]
        try:
            added = int(self._add(keys=[self.ids_key, self.user_prefix], args=args))
        except self._errors as err:
            raise StoreUnavailable(f"redis: {type(err).__name__}: {err}") from None
        return added, len(events) - added

    def recent(self, user_id: str, limit: int) -> list[tuple[int, str]]:
        try:
            raw = self.client.lrange(self.user_prefix + user_id, -limit, -1)
        except self._errors as err:
            raise StoreUnavailable(f"redis: {type(err).__name__}: {err}") from None
        out = []
        for entry in raw:
            time, _, item = entry.decode().partition("|")
            out.append((int(time), item))
        out.sort(key=lambda e: e[0])  # stable: same-time events keep their arrival order
        return out

    def set_available(self, item_ids: list[str], available: bool) -> None:
        try:
            (self.client.srem if available else self.client.sadd)(self.off_key, *item_ids)
        except self._errors as err:
            raise StoreUnavailable(f"redis: {type(err).__name__}: {err}") from None

    def unavailable(self) -> set[str]:
        try:
            return {m.decode() for m in self.client.smembers(self.off_key)}
        except self._errors as err:
            raise StoreUnavailable(f"redis: {type(err).__name__}: {err}") from None

    def add_items(self, records: list[dict]) -> int:
        try:
            if not records:
                return int(self.client.llen(self.items_key))
            return int(self.client.rpush(self.items_key, *(json.dumps(r) for r in records)))
        except self._errors as err:
            raise StoreUnavailable(f"redis: {type(err).__name__}: {err}") from None

    def items(self, start: int = 0) -> list[dict]:
        try:
            return [json.loads(r) for r in self.client.lrange(self.items_key, start, -1)]
        except self._errors as err:
            raise StoreUnavailable(f"redis: {type(err).__name__}: {err}") from None

    def close(self) -> None:
        self.client.close()


def open_store(cfg, run_path: str | Path) -> HistoryStore | None:
    """The store a serving config's `history:` section names (None when it is off)."""
    if cfg.backend == "off":
        return None
    if cfg.backend == "redis":
        return RedisStore(cfg.redis_url, cfg.prefix, cfg.timeout_ms / 1e3)
    return LocalStore(cfg.dir or Path(run_path) / "serve_history", cfg.snapshot_every)


class AsyncStore:
    """A store behind async methods (the history half of `service.Backends`): network and fsync
    calls run in a worker thread, reads of the in-memory local store run inline."""

    def __init__(self, store: HistoryStore | None) -> None:
        self.store = store  # None: history.backend off (the service never calls then)
        self._inline = isinstance(store, LocalStore)

    async def _read(self, fn, *args):
        return fn(*args) if self._inline else await asyncio.to_thread(fn, *args)

    async def history(self, user_id: str, limit: int) -> list[tuple[int, str]]:
        return await self._read(self.store.recent, user_id, limit)

    async def live_items(self, start: int) -> list[dict]:
        return await self._read(self.store.items, start)

    async def add_events(self, events: list[Event]) -> tuple[int, int]:
        return await asyncio.to_thread(self.store.add, events)

    async def unavailable(self) -> set[str]:
        return await asyncio.to_thread(self.store.unavailable)

    async def set_available(self, item_ids: list[str], available: bool) -> None:
        await asyncio.to_thread(self.store.set_available, item_ids, available)

    async def add_items(self, records: list[dict]) -> int:
        return await asyncio.to_thread(self.store.add_items, records)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
