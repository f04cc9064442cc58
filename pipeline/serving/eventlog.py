"""Served-list and feedback logs, written off the request path.

`EventLog.write` only puts a record on a bounded queue (never blocks; when the queue is full, or
the writer thread has died, the record is dropped and counted). One daemon thread drains the queue into JSON Lines files named
`<prefix>-<host>-<pid>-<start>-<seq>.jsonl`, rotating to the next file past `rotate_bytes`, so
several ingress replicas never share a file. A record that cannot be written (not JSON, or the
disk refused it) is counted in `failed` and the thread goes on; if the thread dies anyway, later
records count as dropped and `close` returns within its timeout. `read_events` reads every file
of a prefix back.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)

_STOP = object()


class EventLog:
    def __init__(self, directory: str | Path, prefix: str, *, rotate_bytes: int = 16 << 20, queue_size: int = 10000) -> None:
        self.directory = Path(directory)
        self.prefix = prefix
        self.rotate_bytes = int(rotate_bytes)
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self.dropped = 0  # records refused: queue full or writer dead
        self.written = 0
        self.failed = 0  # records the writer could not write (bad record, I/O error)
        self._stem = f"{prefix}-{socket.gethostname()}-{os.getpid()}-{time.strftime('%Y%m%dT%H%M%S')}"
        self._seq = 0
        self._thread: threading.Thread | None = None
        self._closed = False
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> bool:
        """Queue one record; False (and counted in `dropped`) when the queue is full or the
        writer thread is no longer running."""
        thread = self._ensure_started()
        if thread is None or not thread.is_alive():
            self.dropped += 1
            return False
        try:
            self.queue.put_nowait(record)
            return True
        except queue.Full:
            self.dropped += 1
            return False

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop the writer thread; returns within about `timeout`
        seconds even when the writer is dead or the queue is full."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._closed = True
        if thread is None:
            return
        deadline = time.monotonic() + timeout
        while thread.is_alive():
            try:
                self.queue.put(_STOP, timeout=0.05)
                break
            except queue.Full:
                if time.monotonic() >= deadline:
                    log.warning("event log %s: writer did not drain its queue in %.1fs", self.prefix, timeout)
                    return
        thread.join(max(0.0, deadline - time.monotonic()))

    def files(self) -> list[Path]:
        return sorted(self.directory.glob(f"{self.prefix}-*.jsonl"))

    def _ensure_started(self) -> threading.Thread | None:
        thread = self._thread
        if thread is not None or self._closed:
            return thread
        with self._lock:
            if self._thread is None and not self._closed:
                try:
                    self.directory.mkdir(parents=True, exist_ok=True)
                except OSError as err:
                    log.warning("event log %s: cannot create %s: %s", self.prefix, self.directory, err)
                    self._closed = True
                    return None
                self._thread = threading.Thread(target=self._run, name=f"eventlog-{self.prefix}", daemon=True)
                self._thread.start()
            return self._thread

    def _path(self) -> Path:
        return self.directory / f"{self._stem}-{self._seq:04d}.jsonl"

    def _run(self) -> None:
        out = open(self._path(), "a", encoding="utf-8")
        try:
            while True:
                record = self.queue.get()
                stop = record is _STOP
                batch = [] if stop else [record]
                while not stop:  # drain what is already queued, then flush once
                    try:
                        nxt = self.queue.get_nowait()
                    except queue.Empty:
                        break
                    stop = nxt is _STOP
                    if not stop:
                        batch.append(nxt)
                out = self._write_batch(out, batch)
                if stop:
                    return
        finally:
            out.close()

    def _write_batch(self, out: Any, batch: list[dict[str, Any]]) -> Any:
        for record in batch:
            try:
                out.write(json.dumps(record, separators=(",", ":"), default=str) + "\n")
                self.written += 1
            except (TypeError, ValueError, OSError) as err:  # one bad record or write never stops the log
                self.failed += 1
                log.warning("event log %s: record not written: %s", self.prefix, err)
            if out.tell() >= self.rotate_bytes:  # rotate between records, never inside one
                out.close()
                self._seq += 1
                out = open(self._path(), "a", encoding="utf-8")
        out.flush()
        return out


def read_events(paths: list[Path] | Path, prefix: str | None = None) -> Iterator[dict[str, Any]]:
    """Every record of the given files, or of every `<prefix>-*.jsonl` file in a folder."""
    if isinstance(paths, Path) and paths.is_dir():
        paths = sorted(paths.glob(f"{prefix or '*'}-*.jsonl"))
    elif isinstance(paths, Path):
        paths = [paths]
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError:
                        log.warning("%s:%d: not JSON, skipped", path, line_no)
