"""The FastAPI app of the ingress: routes, error handling and the request-size guard.

Built by `create_app(service, ...)`, plain FastAPI with no ray: the Ray ingress deployment returns
it from `__serve_build_asgi_app__`, and tests can drive it with a TestClient. Every refusal is a
4xx JSON body `{"error": ..., "detail": [...]}`; only a bug in the server answers 500.
"""
from __future__ import annotations

import logging
import re
import time
from typing import Annotated, Any, Awaitable, Callable

from fastapi import FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipeline.serving.api import (
    ChannelsResponse, ErrorResponse, EventsRequest, EventsResponse, FeedbackRequest, FeedbackResponse, Health, ItemsRequest,
    ItemsResponse, ItemState, RecommendRequest, RecommendResponse, request_models,
)
from pipeline.serving.metrics import CONTENT_TYPE
from pipeline.serving.service import BadRequest, RecommendService

log = logging.getLogger(__name__)

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": what}
    for code, what in ((400, "Unreadable request"), (413, "Body too large"), (422, "Invalid request"))
}


_TAGS = re.compile(r"^(constrained-|function-|lax-|strict-|json-or-python)|^(str|int|float|bool|list|dict)$")


def _messages(errors: list[dict[str, Any]]) -> list[str]:
    """One line per failing field: 'body.history.0: Input should be a valid string or ...'."""
    out: dict[str, list[str]] = {}
    for err in errors:
        if err.get("type") == "json_invalid":
            out.setdefault("body", []).append(f"not valid JSON (at character {err['loc'][-1]}): {err.get('ctx', {}).get('error', '')}")
            continue
        loc = ".".join(str(p) for p in err.get("loc", ()) if not (isinstance(p, str) and _TAGS.match(p)))
        msg = "unknown field" if err.get("type") == "extra_forbidden" else str(err.get("msg", "invalid"))
        if msg not in out.setdefault(loc, []):
            out[loc].append(msg)
    return [f"{loc}: {' | '.join(msgs)}" for loc, msgs in out.items()]


def _error(status: int, error: str, detail: list[str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": error, "detail": detail or []})


ROUTES = ("/recommend", "/events", "/items", "/feedback", "/healthz", "/channels", "/metrics")


class Guard:
    """Pure ASGI wrapper: counts responses by route and status, and answers 413 to bodies over
    `limit` bytes before any parsing (whether or not a Content-Length is sent)."""

    def __init__(self, app: Any, limit: int, metrics: Any) -> None:
        self.app = app
        self.limit = limit
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope.get("path", "") if scope.get("path") in ROUTES else "other"

        async def counted(message: dict) -> None:
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(route, str(message["status"])).inc()
            await send(message)

        await self._limited(scope, receive, counted)

    async def _limited(self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable) -> None:
        if scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await self._refuse(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                return await self._refuse(scope, receive, send)
        body, sent = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: dict, receive: Callable, send: Callable) -> None:
        await _error(413, f"request body larger than {self.limit} bytes")(scope, receive, send)


def _handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        return _error(422, "invalid request", _messages(list(err.errors()))[:20])

    @app.exception_handler(BadRequest)
    async def refused(_: Request, err: BadRequest) -> JSONResponse:
        response = _error(err.status, err.message)
        if err.retry_after_s is not None:
            response.headers["Retry-After"] = str(err.retry_after_s)
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
        return _error(err.status_code, str(err.detail))

    @app.exception_handler(Exception)
    async def crashed(_: Request, err: Exception) -> JSONResponse:
        log.exception("internal error: %s", err)
        return _error(500, f"internal error: {type(err).__name__}")


def create_app(service: RecommendService, max_body_bytes: int) -> FastAPI:
    """The ingress's HTTP app around one `RecommendService` (whose run may be swapped)."""
    app = FastAPI(title="hybridrec", version="0.1.0", description="Hybrid cascade recommender: recommend, feedback, health, channels, metrics.")
    started = time.time()
    _handlers(app)

    recommend_model, feedback_model, events_model, items_model = request_models(service.cfg.limits)  # the configured limits

    async def recommend(body: RecommendRequest) -> Response:
        """Top-k items for a user id and/or a recent history, with scores, reasons, arm, timings."""
        out = await service.recommend(body)  # already a validated RecommendResponse: serialise once
        return Response(out.model_dump_json(), media_type="application/json")

    async def feedback(body: FeedbackRequest) -> FeedbackResponse:
        """Record a click (or another event) on a served list, joined later by request_id."""
        return FeedbackResponse(accepted=await service.feedback(body))

    async def events(body: EventsRequest) -> EventsResponse:
        """Append interactions (one or many) to the live history; the user's next /recommend reads
        them. Idempotent by event id; 503 with Retry-After when the store is down (nothing stored)."""
        return await service.events(body)

    recommend.__annotations__["body"] = recommend_model  # the models built for this server's limits
    feedback.__annotations__["body"] = feedback_model
    events.__annotations__["body"] = events_model
    app.post("/events", response_model=EventsResponse, status_code=202,
             responses=ERRORS | {503: {"model": ErrorResponse, "description": "History store unavailable"}})(events)
    app.post("/recommend", response_model=RecommendResponse, responses=ERRORS)(recommend)
    app.post("/feedback", response_model=FeedbackResponse, status_code=202, responses=ERRORS)(feedback)

    async def add_items(body: ItemsRequest) -> ItemsResponse:
        """Add items to the served catalog (or store new content for known ones); a new item is
        recommendable from the next request. 503 with Retry-After when the store is down."""
        return await service.add_items(body)

    add_items.__annotations__["body"] = items_model
    app.post("/items", response_model=ItemsResponse, status_code=202,
             responses=ERRORS | {409: {"model": ErrorResponse, "description": "Live catalog full: retrain"},
                                 503: {"model": ErrorResponse, "description": "History store unavailable"}})(add_items)

    async def remove_item(item_id: str) -> ItemState:
        """Take an item out of every list (sold out, withdrawn) from the next request on."""
        return await service.set_available(item_id, False)

    async def restore_item(item_id: str) -> ItemState:
        """Put a removed item back."""
        return await service.set_available(item_id, True)

    item_path = Annotated[str, Path(min_length=1, max_length=service.cfg.limits.max_id_length)]
    unknown = ERRORS | {404: {"model": ErrorResponse, "description": "Unknown item"}}
    for handler in (remove_item, restore_item):  # the path type with this server's id limit
        handler.__annotations__["item_id"] = item_path
    app.delete("/items/{item_id}", response_model=ItemState, status_code=202, responses=unknown)(remove_item)
    app.put("/items/{item_id}/available", response_model=ItemState, status_code=202, responses=unknown)(restore_item)

    @app.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        state = service.current()
        return Health(status="ok", run=state.run, channels=len(state.info.channels), uptime_s=round(time.time() - started, 3))

    @app.get("/channels", response_model=ChannelsResponse)
    async def list_channels() -> ChannelsResponse:
        return service.current().info

    @app.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def prometheus() -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)

    app.add_middleware(Guard, limit=max_body_bytes, metrics=service.metrics)
    return app
