"""An existing retrieval service over HTTP as a channel (kind `http`): your recall joins the pool.

For every request row it POSTs JSON to `url` and maps the answer back to dense item ids:

    params:
      url: http://127.0.0.1:9000/recall
      timeout_ms: 50                 # per call; a slow service fails the row
      request: {user_id: user_id, history: history, k: k, context: context}   # field names sent (null: omit)
      response: {items: items, scores: scores}   # dotted paths; 'results[].id' reads a list of objects
      history_len: 50                # most recent history items sent
      headers: {}
      max_workers: 4                 # rows of a batch called concurrently
      deadline_ms: null              # the whole batch; rows not answered by then fail (null: 2 x timeout_ms)

Ids on the wire are the dataset's ORIGINAL ids (strings). The `k` sent is k plus the number of
history items sent (seen items are dropped here). Items the run does not know, seen items and
duplicates are dropped; without `scores` the service's order is kept (score 1/(1+rank)).
A row whose call fails (an error status, a timeout, a body that does not parse, a score that is not
a finite number, or the batch deadline) is empty and marked in `Retrieved.failed`, so the cascade
and the serving ingress name the channel as degraded; when every row of a batch fails, `retrieve`
raises and the channel is dropped for that batch.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import numpy as np
import requests
from pydantic import Field, model_validator
from requests.adapters import HTTPAdapter

from pipeline.core.protocols import FitData
from pipeline.core.schema import Configured, PartsConfig
from pipeline.core.types import PAD, RequestBatch, Retrieved

log = logging.getLogger(__name__)

DEFAULT_REQUEST = {"user_id": "user_id", "history": "history", "k": "k", "context": "context"}
DEFAULT_RESPONSE = {"items": "items", "scores": "scores"}


class HttpChannelError(RuntimeError):
    pass


def read_path(obj: Any, path: str) -> Any:
    """`a.b` -> obj['a']['b']; `a[].b` -> [x['b'] for x in obj['a']]."""
    head, sep, rest = path.partition(".")
    if head.endswith("[]"):
        seq = obj[head[:-2]] if head[:-2] else obj
        if not isinstance(seq, list):
            raise HttpChannelError(f"response field '{head[:-2]}' is not a list")
        return [read_path(x, rest) for x in seq] if sep else seq
    if not isinstance(obj, dict) or head not in obj:
        raise HttpChannelError(f"response has no field '{head}'")
    return read_path(obj[head], rest) if sep else obj[head]


class HttpConfig(PartsConfig):
    url: str = Field(description="where each request row is POSTed (http:// or https://)")
    timeout_ms: float = Field(50.0, description="per call; a slow service fails the row")
    request: dict[str, str | None] = Field({}, description="field names sent, over DEFAULT_REQUEST (null: omit)")
    response: dict[str, str | None] = Field({}, description="dotted paths read, over DEFAULT_RESPONSE")
    history_len: int = Field(50, description="most recent history items sent")
    headers: dict[str, str] = Field({}, description="sent with every call")
    max_workers: int = Field(4, description="rows of a batch called concurrently")
    deadline_ms: float | None = Field(None, description="the whole batch (None: 2 x timeout_ms)")

    @model_validator(mode="after")
    def _check(self) -> "HttpConfig":
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {self.url!r}")
        unknown = set(self.request) - set(DEFAULT_REQUEST) | set(self.response) - set(DEFAULT_RESPONSE)
        if unknown:
            raise ValueError(f"unknown request/response mapping keys {sorted(unknown)}")
        if self.deadline_ms is not None and self.deadline_ms <= 0:
            raise ValueError(f"deadline_ms must be > 0, got {self.deadline_ms}")
        return self

    @property
    def sent(self) -> dict[str, str | None]:
        return {**DEFAULT_REQUEST, **self.request}

    @property
    def read(self) -> dict[str, str | None]:
        return {**DEFAULT_RESPONSE, **self.response}


class HttpChannel(Configured):
    config_class = HttpConfig  # what a config's `params` are checked against (pipeline/params.py)
    default_name = "http"

    def fit(self, data: FitData) -> "HttpChannel":
        if data.user_ids is None or data.item_ids is None:
            raise ValueError(f"channel '{self.name}': fit data needs the original id maps")
        self.user_ids_ = np.asarray(data.user_ids).astype(str)
        self.item_ids_ = np.asarray(data.item_ids).astype(str)
        self.item_index_ = {t: i for i, t in enumerate(self.item_ids_)}
        return self

    def add_item_ids(self, item_ids: list[str]) -> None:
        """Original ids of items added to the served catalog (dense ids n, n+1, ... in order): the
        service may answer them from now on."""
        if not hasattr(self, "item_index_"):
            raise RuntimeError(f"channel '{self.name}': call fit() before add_item_ids()")
        n = len(self.item_ids_)
        self.item_ids_ = np.concatenate([self.item_ids_.astype(object), np.asarray(item_ids, dtype=object)])
        self.item_index_.update((str(t), n + j) for j, t in enumerate(item_ids))

    def _session(self) -> requests.Session:
        if getattr(self, "_http", None) is None:
            session = requests.Session()
            session.mount("http://", HTTPAdapter(pool_maxsize=self.config.max_workers))
            session.mount("https://", HTTPAdapter(pool_maxsize=self.config.max_workers))
            self._http = session
        return self._http

    def __getstate__(self) -> dict[str, Any]:  # sessions do not travel
        return {k: v for k, v in self.__dict__.items() if k not in ("_http", "_pool")}

    def _payload(self, batch: RequestBatch, row: int, k: int) -> dict[str, Any]:
        user = int(batch.users[row])
        values = {
            "user_id": None if user == PAD else str(self.user_ids_[user]),
            "history": self.item_ids_[batch.history_of(row)[-self.config.history_len:]].tolist(),
            "k": int(k) + int(min(batch.lengths[row], self.config.history_len)),  # seen items are dropped here
            "context": dict(batch.contexts[row]) if batch.contexts else {},
        }
        return {field: values[key] for key, field in self.config.sent.items() if field}

    def _call(self, payload: dict[str, Any], timeout_s: float) -> tuple[list[Any], list[Any] | None]:
        r = self._session().post(self.config.url, json=payload, headers=self.config.headers, timeout=timeout_s)
        r.raise_for_status()
        body = r.json()
        items = read_path(body, self.config.read["items"])
        scores = None
        if self.config.read.get("scores"):
            try:
                scores = read_path(body, self.config.read["scores"])
            except HttpChannelError:  # scores are optional: keep the service's order
                scores = None
        if not isinstance(items, list) or (scores is not None and (not isinstance(scores, list) or len(scores) != len(items))):
            raise HttpChannelError(f"channel '{self.name}': items must be a list, scores a list of the same length")
        return items, scores

    def _row(self, batch: RequestBatch, row: int, k: int, end: float) -> tuple[np.ndarray, np.ndarray] | None:
        """One row's answer, or None when its call failed or the batch's deadline (`end`) passed."""
        left = end - time.monotonic()
        if left <= 0:
            return None
        try:
            items, scores = self._call(self._payload(batch, row, k), min(self.config.timeout_ms / 1e3, left))
            return self._map_row(batch, row, k, items, scores)
        except (requests.RequestException, ValueError, TypeError, HttpChannelError) as err:
            log.warning("channel %s: row %d failed: %s", self.name, row, err)
            return None

    def _map_row(self, batch: RequestBatch, row: int, k: int, items: list, scores: list | None):
        """Original ids -> dense ids, without seen items or duplicates; scores must be finite numbers."""
        seen = set(batch.seen_of(row).tolist())
        ids, vals, taken = [], [], set()
        for rank, item in enumerate(items):
            dense = self.item_index_.get(str(item))
            if dense is None or dense in seen or dense in taken:
                continue
            score = float(scores[rank]) if scores is not None else 1.0 / (1.0 + rank)  # ValueError: not a number
            if not np.isfinite(score):
                raise HttpChannelError(f"score {scores[rank]!r} of item {item!r} is not a finite number")
            ids.append(dense)
            vals.append(score)
            taken.add(dense)
        order = np.argsort(-np.asarray(vals, np.float64), kind="stable")[:k]
        return np.asarray(ids, np.int64)[order], np.asarray(vals, np.float32)[order]

    def deadline_s(self) -> float:
        """The time one batch may take, all rows together."""
        return (self.config.deadline_ms if self.config.deadline_ms is not None else 2.0 * self.config.timeout_ms) / 1e3

    def retrieve(self, batch: RequestBatch, k: int) -> Retrieved:
        if not hasattr(self, "item_index_"):
            raise RuntimeError(f"channel '{self.name}': call fit() before retrieve()")
        n = len(batch)
        end = time.monotonic() + self.deadline_s()
        if n == 1 or self.config.max_workers == 1:  # in turn, each row only while time is left
            rows = [self._row(batch, r, k, end) for r in range(n)]
        else:
            if getattr(self, "_pool", None) is None:
                self._pool = ThreadPoolExecutor(self.config.max_workers, thread_name_prefix=f"http-{self.name}")
            futures = [self._pool.submit(self._row, batch, r, k, end) for r in range(n)]
            wait(futures, timeout=max(0.0, end - time.monotonic()))
            rows = [f.result() if f.done() else None for f in futures]
            for f in futures:
                f.cancel()  # rows past the deadline that have not started
        if n and all(r is None for r in rows):
            raise HttpChannelError(f"channel '{self.name}': every call to {self.config.url} failed")
        out = Retrieved(np.full((n, k), PAD, np.int64), np.full((n, k), -np.inf, np.float32),
                        np.array([r is None for r in rows], bool))
        for r, got in enumerate(rows):
            if got is not None:
                out.items[r, : len(got[0])] = got[0]
                out.scores[r, : len(got[1])] = got[1]
        return out

