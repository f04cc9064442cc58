"""The HTTP API's request and response models (the OpenAPI schema is generated from these).

Requests are strict: unknown fields, wrong types, out-of-range k, oversize histories or contexts
are a 422 with a message naming the field. Ids are the dataset's ORIGINAL ids (strings; integers
are accepted and read as their decimal string). Item ids the run does not know are ignored and
listed in the response's `ignored_items`; an unknown user is served as an anonymous one
(`known_user: false`) from the history sent, or from popularity when there is none.
"""
from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, create_model, field_validator

from pipeline.serving.config import Limits

LIMITS = Limits()  # the default bounds; `request_models(limits)` builds the schema of a configured server

Id = Annotated[StrictStr, Field(min_length=1, max_length=LIMITS.max_id_length)] | Annotated[StrictInt, Field(ge=0, le=2**63 - 1)]
ContextValue = (
    Annotated[StrictStr, Field(max_length=256)] | StrictBool | StrictInt
    | Annotated[StrictFloat, Field(allow_inf_nan=False)]
)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class RecommendRequest(Strict):
    """Who to recommend for: a user id, a recent history (oldest first), or both (the history is
    appended to the user's stored one). Neither: an anonymous request, answered by popularity."""

    user_id: Id | None = None
    history: list[Id] = Field(default_factory=list, max_length=LIMITS.max_history)
    k: StrictInt = Field(10, ge=1, le=LIMITS.max_k)
    context: dict[Annotated[str, Field(min_length=1, max_length=64)], ContextValue] = Field(
        default_factory=dict, max_length=LIMITS.max_context_keys
    )
    arm: Annotated[StrictStr, Field(min_length=1, max_length=64)] | None = None  # force an A/B arm
    # the request's time in unix seconds (replays, comparisons with batch runs); default: the server's clock
    now: StrictInt | None = Field(None, ge=0, le=2**40)

    @field_validator("user_id", mode="after")
    @classmethod
    def _user_str(cls, v: str | int | None) -> str | None:
        return None if v is None else str(v)

    @field_validator("history", mode="after")
    @classmethod
    def _history_str(cls, v: list[str | int]) -> list[str]:
        return [str(x) for x in v]


class Item(BaseModel):
    item_id: str
    position: int  # 0-based
    score: float | None  # None where a rule placed an item without a score
    reasons: list[str]


class RecommendResponse(BaseModel):
    request_id: str
    user_id: str | None
    known_user: bool
    arm: str
    experiment: str | None
    items: list[Item]
    degraded: list[str]  # channels (or 'ranker'/'reranker') dropped for this request
    fallback: bool  # every channel was down: the ingress's popularity answered
    ignored_items: list[str]  # history ids the run does not know
    history_used: int
    timings_ms: dict[str, float]


class FeedbackRequest(Strict):
    """A click (or other event) on a served item, joined to the served list by request_id."""

    request_id: Annotated[StrictStr, Field(min_length=1, max_length=64)]
    item_id: Id
    event: Annotated[StrictStr, Field(pattern=r"^[a-z_]{1,32}$")] = "click"
    user_id: Id | None = None

    @field_validator("item_id", "user_id", mode="after")
    @classmethod
    def _as_str(cls, v: str | int | None) -> str | None:
        return None if v is None else str(v)


class EventIn(Strict):
    """One interaction: who did what, when. `event_id` makes a retry idempotent (default: a digest
    of user, item, time and type, so the same event sent twice is stored once)."""

    user_id: Id
    item_id: Id
    time: StrictInt | None = Field(None, ge=0, le=2**40)  # unix seconds; default: the server's clock
    type: Annotated[StrictStr, Field(pattern=r"^[a-z_]{1,32}$")] = "interaction"
    value: Annotated[StrictFloat, Field(allow_inf_nan=False)] | StrictInt | None = None
    event_id: Annotated[StrictStr, Field(min_length=1, max_length=128)] | None = None

    @field_validator("user_id", "item_id", mode="after")
    @classmethod
    def _as_str(cls, v: str | int) -> str:
        return str(v)


class EventsRequest(Strict):
    events: list[EventIn] = Field(min_length=1, max_length=LIMITS.max_events)


class EventsResponse(BaseModel):
    accepted: int  # stored now
    duplicates: int  # already stored (same event id)
    unknown_items: list[str]  # item ids the served run does not know: stored, not used until a run knows them


class ItemIn(Strict):
    """An item for the served catalog: its id and content (the fields of the items table). A new
    id is recommendable from the next request, by every channel that embeds items from content."""

    item_id: Annotated[Id, AfterValidator(str)]
    title: Annotated[StrictStr, Field(max_length=2000)] | None = None
    categories: (list[Annotated[StrictStr, Field(min_length=1, max_length=256)]]
                 | Annotated[StrictStr, Field(max_length=4000)] | None) = None  # a path, root first ('|'-joined or a list)
    category: Annotated[StrictStr, Field(max_length=256)] | None = None  # default: taken from the path
    brand: Annotated[StrictStr, Field(max_length=256)] | None = None
    price: Annotated[StrictFloat, Field(ge=0, allow_inf_nan=False)] | Annotated[StrictInt, Field(ge=0)] | None = None
    created_at: StrictInt | None = Field(None, ge=0, le=2**40)  # unix seconds; default: when it is accepted


class ItemsRequest(Strict):
    items: list[ItemIn] = Field(min_length=1, max_length=LIMITS.max_items)


class ItemsResponse(BaseModel):
    accepted: int  # records stored
    added: list[str]  # ids new to the served run: recommendable from the next request
    updated: list[str]  # ids it already serves: kept for the next training, served as they are (and made available)
    version: int  # records in the live catalog


class ItemState(BaseModel):
    item_id: str
    available: bool  # False: left out of every channel's output and the pool


class FeedbackResponse(BaseModel):
    accepted: bool


class ChannelInfo(BaseModel):
    name: str
    kind: str
    quota: int
    budget_ms: float
    replicas: int


class ChannelsResponse(BaseModel):
    channels: list[ChannelInfo]
    arms: dict[str, list[str]]  # arm -> its channels


class Health(BaseModel):
    status: str
    run: str
    channels: int
    uptime_s: float


class ErrorResponse(BaseModel):
    error: str
    detail: list[str] = []


def _id_type(max_length: int):
    return Annotated[StrictStr, Field(min_length=1, max_length=max_length)] | Annotated[StrictInt, Field(ge=0, le=2**63 - 1)]


def request_models(limits: Limits) -> tuple[type[RecommendRequest], type[FeedbackRequest], type[EventsRequest], type[ItemsRequest]]:
    """The request models with a server's configured limits in their schema (and so in its
    OpenAPI document): raising `limits.max_k` in the serving config lets larger k through, and a
    smaller one refuses it with a 422 naming the field."""
    ident = _id_type(limits.max_id_length)
    recommend = create_model(
        "RecommendRequest", __base__=RecommendRequest,
        user_id=(ident | None, None),
        history=(list[ident], Field(default_factory=list, max_length=limits.max_history)),
        k=(StrictInt, Field(10, ge=1, le=limits.max_k)),
        context=(dict[Annotated[str, Field(min_length=1, max_length=64)], ContextValue],
                 Field(default_factory=dict, max_length=limits.max_context_keys)),
    )
    feedback = create_model("FeedbackRequest", __base__=FeedbackRequest, item_id=(ident, ...), user_id=(ident | None, None))
    event = create_model("EventIn", __base__=EventIn, user_id=(ident, ...), item_id=(ident, ...))
    events = create_model("EventsRequest", __base__=EventsRequest,
                          events=(list[event], Field(min_length=1, max_length=limits.max_events)))
    item = create_model("ItemIn", __base__=ItemIn, item_id=(Annotated[ident, AfterValidator(str)], ...))
    items = create_model("ItemsRequest", __base__=ItemsRequest, items=(list[item], Field(min_length=1, max_length=limits.max_items)))
    return recommend, feedback, events, items
