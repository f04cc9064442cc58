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

Ids on the wire are the dataset's ORIGINAL ids (strings). The `k` sent is k plus the number of
history items sent (seen items are dropped here). Items the run does not know, seen items and
duplicates are dropped; without `scores` the service's order is kept (score 1/(1+rank)).
A row whose call fails is empty; when every row of a batch fails, `retrieve` raises, so the
cascade (or the serving ingress) drops the channel for that batch and names it as degraded.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import requests
from requests.adapters import HTTPAdapter

from pipeline.protocols import FitData
from pipeline.types import PAD, RequestBatch, Retrieved

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


class HttpChannel:
    def __init__(
        self, *, name: str = "http", url: str, timeout_ms: float = 50.0, request: dict[str, str | None] | None = None,
        response: dict[str, str | None] | None = None, history_len: int = 50, headers: dict[str, str] | None = None,
        max_workers: int = 4,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"channel '{name}': url must start with http:// or https://, got {url!r}")
        unknown = set(request or {}) - set(DEFAULT_REQUEST) | set(response or {}) - set(DEFAULT_RESPONSE)
        if unknown:
            raise ValueError(f"channel '{name}': unknown request/response mapping keys {sorted(unknown)}")
        self.name = name
        self.url = url
        self.timeout_ms = timeout_ms
        self.request = {**DEFAULT_REQUEST, **(request or {})}
        self.response = {**DEFAULT_RESPONSE, **(response or {})}
        self.history_len = history_len
        self.headers = dict(headers or {})
        self.max_workers = max_workers

    def fit(self, data: FitData) -> "HttpChannel":
        if data.user_ids is None or data.item_ids is None:
            raise ValueError(f"channel '{self.name}': fit data needs the original id maps")
        self.user_ids_ = np.asarray(data.user_ids).astype(str)
        self.item_ids_ = np.asarray(data.item_ids).astype(str)
        self.item_index_ = {t: i for i, t in enumerate(self.item_ids_)}
        return self

    def _session(self) -> requests.Session:
        if getattr(self, "_http", None) is None:
            session = requests.Session()
            session.mount("http://", HTTPAdapter(pool_maxsize=self.max_workers))
            session.mount("https://", HTTPAdapter(pool_maxsize=self.max_workers))
            self._http = session
        return self._http

    def __getstate__(self) -> dict[str, Any]:  # sessions do not travel
        return {k: v for k, v in self.__dict__.items() if k not in ("_http", "_pool")}

    def _payload(self, batch: RequestBatch, row: int, k: int) -> dict[str, Any]:
        user = int(batch.users[row])
        values = {
            "user_id": None if user == PAD else str(self.user_ids_[user]),
            "history": self.item_ids_[batch.history_of(row)[-self.history_len:]].tolist(),
            "k": int(k) + int(min(batch.lengths[row], self.history_len)),  # seen items are dropped here
            "context": dict(batch.contexts[row]) if batch.contexts else {},
        }
        return {field: values[key] for key, field in self.request.items() if field}

    def _call(self, payload: dict[str, Any]) -> tuple[list[Any], list[Any] | None]:
        r = self._session().post(self.url, json=payload, headers=self.headers, timeout=self.timeout_ms / 1e3)
        r.raise_for_status()
        body = r.json()
        items = read_path(body, self.response["items"])
        scores = None
        if self.response.get("scores"):
            try:
                scores = read_path(body, self.response["scores"])
            except HttpChannelError:  # scores are optional: keep the service's order
                scores = None
        if not isinstance(items, list) or (scores is not None and (not isinstance(scores, list) or len(scores) != len(items))):
            raise HttpChannelError(f"channel '{self.name}': items must be a list, scores a list of the same length")
        return items, scores

    def _row(self, batch: RequestBatch, row: int, k: int) -> tuple[np.ndarray, np.ndarray] | None:
        try:
            items, scores = self._call(self._payload(batch, row, k))
        except (requests.RequestException, ValueError, HttpChannelError) as err:
            log.warning("channel %s: row %d failed: %s", self.name, row, err)
            return None
        seen = set(batch.seen_of(row).tolist())
        ids, vals, taken = [], [], set()
        for rank, item in enumerate(items):
            dense = self.item_index_.get(str(item))
            if dense is None or dense in seen or dense in taken:
                continue
            score = float(scores[rank]) if scores is not None else 1.0 / (1.0 + rank)
            ids.append(dense)
            vals.append(score)
            taken.add(dense)
        order = np.argsort(-np.asarray(vals, np.float64), kind="stable")[:k]
        return np.asarray(ids, np.int64)[order], np.asarray(vals, np.float32)[order]

    def retrieve(self, batch: RequestBatch, k: int) -> Retrieved:
        if not hasattr(self, "item_index_"):
            raise RuntimeError(f"channel '{self.name}': call fit() before retrieve()")
        n = len(batch)
        if n == 1 or self.max_workers == 1:
            rows = [self._row(batch, r, k) for r in range(n)]
        else:
            if getattr(self, "_pool", None) is None:
                self._pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix=f"http-{self.name}")
            rows = list(self._pool.map(lambda r: self._row(batch, r, k), range(n)))
        if n and all(r is None for r in rows):
            raise HttpChannelError(f"channel '{self.name}': every call to {self.url} failed")
        out = Retrieved.empty(n, k)
        for r, got in enumerate(rows):
            if got is not None:
                out.items[r, : len(got[0])] = got[0]
                out.scores[r, : len(got[1])] = got[1]
        return out

