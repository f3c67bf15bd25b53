"""Turn protobuf requests into checked, typed queries, or refuse them.

Every field of every request is checked here and nowhere else. A field that
breaks a rule raises :class:`~bookverse.server.errors.InvalidArgument` with
the field's path and the rule; the message never repeats what the client
sent, so a hostile value cannot reach logs or other clients through it.

Rules (the proto's conventions, made exact):

- ids (reader, book, request): 1..64 characters, each printable ASCII other
  than space (``!`` to ``~``). Book ids are normalised later, against the
  served bundle's id scheme; this module checks their shape only.
- ``n``: 0..100, where 0 (the proto default) means :data:`DEFAULT_N`.
- ``filters.exclude_book_ids``: at most 500 ids; ``filters.only_authors`` and
  ``filters.exclude_authors``: at most 50 names each, each 1..200 printable
  characters (any script); ``filters.min_year <= filters.max_year`` when both
  are set.
- ``context.session_book_ids``: at most 50 ids.
- ``context.device``: a known device (``UNSPECIFIED`` allowed, unknown
  numbers refused); ``context.utc_offset_minutes``: -840..840 (UTC-14 h to
  UTC+14 h); ``context.local_time``: unset, or after the Unix epoch with
  nanos in 0..999999999. The server does not use them yet; checking them now
  keeps a bad client from depending on garbage being accepted.
- ``type``: a known interaction type, not ``UNSPECIFIED``.
- ``rating``: required for ``INTERACTION_TYPE_RATING``, finite and within the
  served bundle's rating scale; forbidden for every other type.
- ``event_time``: unset means now; otherwise after the Unix epoch and at most
  :data:`FUTURE_TOLERANCE_S` ahead of the server's clock. Late events are
  accepted.
- ``client_event_id``: empty means none; otherwise 1..128 printable ASCII
  characters (space allowed).
- ``request_id``: empty means the server picks one; otherwise an id as above.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from bookverse.recommendations.v1 import recommendations_pb2 as pb
from bookverse.server.errors import InvalidArgument

DEFAULT_N = 10
MAX_N = 100
MAX_ID_CHARS = 64
MAX_EXCLUDE_IDS = 500
MAX_AUTHORS = 50
MAX_AUTHOR_CHARS = 200
MAX_SESSION_IDS = 50
MAX_CLIENT_EVENT_ID_CHARS = 128
FUTURE_TOLERANCE_S = 300.0
MAX_UTC_OFFSET_MINUTES = 14 * 60

KINDS: dict[int, str] = {
    pb.INTERACTION_TYPE_VIEW: "view",
    pb.INTERACTION_TYPE_ADD_TO_LIST: "add_to_list",
    pb.INTERACTION_TYPE_PURCHASE: "purchase",
    pb.INTERACTION_TYPE_RATING: "rating",
    pb.INTERACTION_TYPE_CLICK: "click",
    pb.INTERACTION_TYPE_FINISHED: "finished",
}
"""Interaction type of the proto -> event kind of the interaction store."""


@dataclass(frozen=True)
class Filters:
    """Business filters of one Recommend call; authors already case-folded."""

    exclude_book_ids: tuple[str, ...] = ()
    include_already_read: bool = False
    only_authors: tuple[str, ...] = ()
    exclude_authors: tuple[str, ...] = ()
    min_year: int | None = None
    max_year: int | None = None


@dataclass(frozen=True)
class RecommendQuery:
    """A checked Recommend request (ids not yet normalised)."""

    user_id: str
    n: int
    filters: Filters
    session_book_ids: tuple[str, ...]
    request_id: str


@dataclass(frozen=True)
class ExplainQuery:
    """A checked Explain request (ids not yet normalised)."""

    user_id: str
    book_id: str
    request_id: str


@dataclass(frozen=True)
class TrackQuery:
    """A checked TrackInteraction request (ids not yet normalised).

    ``event_time`` is Unix seconds; ``kind`` one of the store's event kinds.
    """

    user_id: str
    book_id: str
    kind: str
    rating: float | None
    event_time: float
    client_event_id: str | None


def request_id_of(raw: str) -> str:
    """The caller's request id when it is well formed, else a fresh one.

    Used before validation, so that even a refused call has an id to log.
    """
    return raw if _is_id(raw) else uuid.uuid4().hex


def validate_recommend(request: pb.RecommendRequest) -> RecommendQuery:
    """Check a RecommendRequest.

    Returns
    -------
    RecommendQuery

    Raises
    ------
    InvalidArgument
        Naming the first field that breaks its rule.
    """
    check_id("user_id", request.user_id)
    if not 0 <= request.n <= MAX_N:
        raise InvalidArgument("n", f"must be in 0..{MAX_N} (0 means {DEFAULT_N})")
    _check_context(request.context)
    return RecommendQuery(
        user_id=request.user_id,
        n=request.n or DEFAULT_N,
        filters=_filters(request.filters),
        session_book_ids=_ids(
            "context.session_book_ids",
            request.context.session_book_ids,
            MAX_SESSION_IDS,
        ),
        request_id=_request_id(request.request_id),
    )


def validate_explain(request: pb.ExplainRequest) -> ExplainQuery:
    """Check an ExplainRequest.

    Raises
    ------
    InvalidArgument
        Naming the first field that breaks its rule.
    """
    check_id("user_id", request.user_id)
    check_id("book_id", request.book_id)
    return ExplainQuery(
        user_id=request.user_id,
        book_id=request.book_id,
        request_id=_request_id(request.request_id),
    )


def validate_track(
    request: pb.TrackInteractionRequest,
    rating_scale: tuple[float, float],
    now: float,
) -> TrackQuery:
    """Check a TrackInteractionRequest.

    Parameters
    ----------
    request : TrackInteractionRequest
    rating_scale : (low, high)
        The served bundle's scale; a rating must lie within it, inclusive.
    now : float
        The server's clock, Unix seconds: unset ``event_time`` becomes it, and
        it bounds how far in the future an event may be.

    Raises
    ------
    InvalidArgument
        Naming the first field that breaks its rule.
    """
    check_id("user_id", request.user_id)
    check_id("book_id", request.book_id)
    kind = KINDS.get(request.type)
    if kind is None:
        raise InvalidArgument(
            "type", "must be a known interaction type, not UNSPECIFIED"
        )
    return TrackQuery(
        user_id=request.user_id,
        book_id=request.book_id,
        kind=kind,
        rating=_rating(request, kind, rating_scale),
        event_time=_event_time(request, now),
        client_event_id=_client_event_id(request.client_event_id),
    )


def check_id(field: str, value: str) -> None:
    """Raise unless ``value`` is 1..64 printable ASCII characters, no space.

    Raises
    ------
    InvalidArgument
    """
    if not value:
        raise InvalidArgument(field, "is required")
    if not _is_id(value):
        raise InvalidArgument(
            field,
            f"must be 1..{MAX_ID_CHARS} printable ASCII characters "
            "without spaces or control characters",
        )


def _is_id(value: str) -> bool:
    return 0 < len(value) <= MAX_ID_CHARS and all("!" <= c <= "~" for c in value)


def _request_id(raw: str) -> str:
    if raw:
        check_id("request_id", raw)
        return raw
    return uuid.uuid4().hex


def _ids(field: str, values: Iterable[str], limit: int) -> tuple[str, ...]:
    ids = tuple(values)
    if len(ids) > limit:
        raise InvalidArgument(field, f"must hold at most {limit} ids")
    for position, value in enumerate(ids):
        check_id(f"{field}[{position}]", value)
    return ids


def _authors(field: str, values: Iterable[str]) -> tuple[str, ...]:
    names = tuple(values)
    if len(names) > MAX_AUTHORS:
        raise InvalidArgument(field, f"must hold at most {MAX_AUTHORS} names")
    folded = []
    for position, name in enumerate(names):
        cleaned = name.strip()
        if not 0 < len(cleaned) <= MAX_AUTHOR_CHARS or not cleaned.isprintable():
            raise InvalidArgument(
                f"{field}[{position}]",
                f"must be 1..{MAX_AUTHOR_CHARS} printable characters",
            )
        folded.append(cleaned.casefold())
    return tuple(folded)


def _filters(filters: pb.Filters) -> Filters:
    min_year = filters.min_year if filters.HasField("min_year") else None
    max_year = filters.max_year if filters.HasField("max_year") else None
    if min_year is not None and max_year is not None and min_year > max_year:
        raise InvalidArgument("filters.min_year", "must be <= filters.max_year")
    return Filters(
        exclude_book_ids=_ids(
            "filters.exclude_book_ids", filters.exclude_book_ids, MAX_EXCLUDE_IDS
        ),
        include_already_read=filters.include_already_read,
        only_authors=_authors("filters.only_authors", filters.only_authors),
        exclude_authors=_authors("filters.exclude_authors", filters.exclude_authors),
        min_year=min_year,
        max_year=max_year,
    )


def _check_context(context: pb.Context) -> None:
    if context.device not in pb.Device.values():
        raise InvalidArgument("context.device", "must be a known Device")
    offset = context.utc_offset_minutes
    if not -MAX_UTC_OFFSET_MINUTES <= offset <= MAX_UTC_OFFSET_MINUTES:
        raise InvalidArgument(
            "context.utc_offset_minutes",
            f"must be in -{MAX_UTC_OFFSET_MINUTES}..{MAX_UTC_OFFSET_MINUTES}",
        )
    if context.HasField("local_time"):
        stamp = context.local_time
        if not 0 <= stamp.nanos < 1_000_000_000:
            raise InvalidArgument("context.local_time.nanos", "must be in 0..999999999")
        if stamp.seconds <= 0:
            raise InvalidArgument("context.local_time", "must be after the Unix epoch")


def _rating(
    request: pb.TrackInteractionRequest,
    kind: str,
    scale: tuple[float, float],
) -> float | None:
    if kind != "rating":
        if request.HasField("rating"):
            raise InvalidArgument("rating", "must be unset unless type is RATING")
        return None
    if not request.HasField("rating"):
        raise InvalidArgument("rating", "is required when type is RATING")
    low, high = scale
    if not math.isfinite(request.rating) or not low <= request.rating <= high:
        raise InvalidArgument("rating", f"must be a number in {low:g}..{high:g}")
    return float(request.rating)


def _event_time(request: pb.TrackInteractionRequest, now: float) -> float:
    if not request.HasField("event_time"):
        return now
    stamp = request.event_time
    if not 0 <= stamp.nanos < 1_000_000_000:
        raise InvalidArgument("event_time.nanos", "must be in 0..999999999")
    seconds = stamp.seconds + stamp.nanos / 1e9
    if seconds <= 0:
        raise InvalidArgument("event_time", "must be after the Unix epoch")
    if seconds > now + FUTURE_TOLERANCE_S:
        raise InvalidArgument(
            "event_time",
            f"must not be more than {FUTURE_TOLERANCE_S:g} s in the future",
        )
    return seconds


def _client_event_id(raw: str) -> str | None:
    if not raw:
        return None
    if len(raw) > MAX_CLIENT_EVENT_ID_CHARS or not all(" " <= c <= "~" for c in raw):
        raise InvalidArgument(
            "client_event_id",
            f"must be 1..{MAX_CLIENT_EVENT_ID_CHARS} printable ASCII characters",
        )
    return raw
