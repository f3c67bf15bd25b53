"""Arbitrary values in every field of every call, over a real channel.

Hypothesis builds requests from any text (unicode, control characters, very
long strings within the message limit), integers at their extremes, NaN and
infinite floats, enum numbers the proto does not know, any timestamps and
repeated fields of any length, mixed with real ids so that valid calls get
through as well. Whatever comes in, the server answers: no INTERNAL, only the
codes a client can act on, messages that never echo what was sent, and every
Recommend answer keeps the list contract.

Derandomised and bounded (``max_examples``), so the run is repeatable.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from typing import Any

import grpc
import numpy as np
import pytest
from conftest import LiveServer, Published
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bookverse.recommendations.v1 import recommendations_pb2 as pb

TIMEOUT = 30.0
INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
NOW = int(time.time())
"""Fixed once: strategies must not change while Hypothesis runs them."""
ECHO_MIN_CHARS = 16
"""A value at least this long must never appear in an error message."""

FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def ids(published: Published) -> dict[str, list[str]]:
    dataset = published.data.dataset
    books = [str(b) for b in dataset.catalogue.item_ids]
    counts = np.bincount(dataset.users, minlength=dataset.n_users)
    readers = [str(u) for u in dataset.user_ids[np.argsort(-counts)[:10]]]
    spelled = [f"{b[:3]}-{b[3:]}".lower() for b in books[:10]]
    authors = sorted({a for a in dataset.catalogue.authors if a})[:20]
    return {"books": books, "readers": readers, "spelled": spelled, "authors": authors}


def texts(real: list[str]) -> st.SearchStrategy[str]:
    """Any text: real ids, ASCII, any unicode, and very long runs."""
    return st.one_of(
        st.sampled_from(real),
        st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=127)),
        st.text(max_size=80),
        st.builds(lambda c, k: c * k, st.characters(), st.integers(65, 50_000)),
    )


def good_ids(real: list[str]) -> st.SearchStrategy[str]:
    """Ids that pass validation: real ones, or 1..64 printable ASCII."""
    printable = st.characters(min_codepoint=33, max_codepoint=126)
    return st.one_of(
        st.sampled_from(real), st.text(alphabet=printable, min_size=1, max_size=64)
    )


def lists(real: list[str], cap: int) -> st.SearchStrategy[list[str]]:
    """Repeated strings up to a little past ``cap``: real ids and anything."""
    item = st.one_of(st.sampled_from(real), st.text(max_size=40))
    return st.lists(item, max_size=cap + 20)


def timestamps() -> st.SearchStrategy[Timestamp | None]:
    """Any timestamp, or none."""
    stamp = st.builds(lambda s, n: Timestamp(seconds=s, nanos=n), INT64, INT32)
    return st.one_of(st.none(), stamp, good_timestamps())


def good_timestamps() -> st.SearchStrategy[Timestamp]:
    """Past instants (late ones too) up to a minute ahead of now."""
    return st.builds(
        lambda s, n: Timestamp(seconds=s, nanos=n),
        st.integers(1, NOW + 60),
        st.integers(0, 999_999_999),
    )


def enums(values: list[int]) -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from(values), INT32)


def pick(
    draw: Any,
    broken: set[str],
    name: str,
    good: st.SearchStrategy[Any],
    anything: st.SearchStrategy[Any],
) -> Any:
    """A value for field ``name``: anything if it is to be broken, else good."""
    return draw(anything if name in broken else good)


RECOMMEND_FIELDS = (
    "user_id",
    "n",
    "exclude_book_ids",
    "only_authors",
    "exclude_authors",
    "min_year",
    "max_year",
    "session_book_ids",
    "device",
    "utc_offset_minutes",
    "local_time",
    "request_id",
)
EXPLAIN_FIELDS = ("user_id", "book_id", "request_id")
TRACK_FIELDS = ("user_id", "book_id", "type", "rating", "event_time", "client_id")


@st.composite
def recommend_requests(draw: Any, ids: dict[str, list[str]]) -> pb.RecommendRequest:
    """Mostly valid requests, each with up to three fields given anything."""
    broken = draw(st.sets(st.sampled_from(RECOMMEND_FIELDS), max_size=3))
    books = ids["books"] + ids["spelled"]
    authors = ids["authors"]
    filters = pb.Filters(include_already_read=draw(st.booleans()))
    filters.exclude_book_ids.extend(
        pick(
            draw,
            broken,
            "exclude_book_ids",
            st.lists(good_ids(books), max_size=30),
            lists(books, 500),
        )
    )
    for name in ("only_authors", "exclude_authors"):
        good = st.lists(st.sampled_from(authors), max_size=3)
        getattr(filters, name).extend(
            pick(draw, broken, name, good, lists(authors, 50))
        )
    for name in ("min_year", "max_year"):
        year = pick(draw, broken, name, st.none(), st.one_of(st.none(), INT32))
        if year is not None:
            setattr(filters, name, year)
    context = pb.Context(
        session_book_ids=pick(
            draw,
            broken,
            "session_book_ids",
            st.lists(good_ids(books), max_size=5),
            lists(books, 50),
        ),
        device=pick(
            draw,
            broken,
            "device",
            st.sampled_from(list(pb.Device.values())),
            enums(list(pb.Device.values())),
        ),
        utc_offset_minutes=pick(
            draw, broken, "utc_offset_minutes", st.integers(-840, 840), INT32
        ),
    )
    local_time = pick(
        draw, broken, "local_time", st.none() | good_timestamps(), timestamps()
    )
    if local_time is not None:
        context.local_time.CopyFrom(local_time)
    return pb.RecommendRequest(
        user_id=pick(
            draw, broken, "user_id", good_ids(ids["readers"]), texts(ids["readers"])
        ),
        n=pick(draw, broken, "n", st.integers(0, 100), INT32),
        filters=filters,
        context=context,
        request_id=pick(
            draw,
            broken,
            "request_id",
            st.just("") | good_ids(["fuzz-1"]),
            texts(["fuzz-1"]),
        ),
    )


@st.composite
def track_requests(draw: Any, ids: dict[str, list[str]]) -> pb.TrackInteractionRequest:
    """Mostly valid events, each with up to two fields given anything."""
    broken = draw(st.sets(st.sampled_from(TRACK_FIELDS), max_size=2))
    books = ids["books"] + ids["spelled"] + ["9780306406157"]
    known = [t for t in pb.InteractionType.values() if t]
    kind = pick(
        draw,
        broken,
        "type",
        st.sampled_from(known),
        enums(list(pb.InteractionType.values())),
    )
    request = pb.TrackInteractionRequest(
        user_id=pick(
            draw, broken, "user_id", good_ids(ids["readers"]), texts(ids["readers"])
        ),
        book_id=pick(draw, broken, "book_id", good_ids(books), texts(books)),
        type=kind,
        client_event_id=pick(
            draw,
            broken,
            "client_id",
            st.just("") | st.uuids().map(str),
            texts(["fuzz-0"]),
        ),
    )
    good_rating = st.floats(1, 10) if kind == pb.INTERACTION_TYPE_RATING else st.none()
    rating = pick(
        draw, broken, "rating", good_rating, st.one_of(st.none(), st.floats())
    )
    if rating is not None:
        request.rating = rating
    event_time = pick(
        draw, broken, "event_time", st.none() | good_timestamps(), timestamps()
    )
    if event_time is not None:
        request.event_time.CopyFrom(event_time)
    return request


def sent_texts(request: Any) -> list[str]:
    """Every string value of a request (recursively), to check for echoes."""
    found: list[str] = []
    for field, value in request.ListFields():
        if isinstance(value, str):
            found.append(value)
        elif field.type == field.TYPE_STRING:
            found += list(value)
        elif field.type == field.TYPE_MESSAGE and hasattr(value, "ListFields"):
            found += sent_texts(value)
    return found


def refused(
    call: Any, request: Any, allowed: set[grpc.StatusCode], explained: bool = True
) -> grpc.RpcError | None:
    """Make the call; None if OK, else the error, checked against ``allowed``.

    ``explained``: the error must say what is wrong (this service's errors;
    the stock health service answers NOT_FOUND without a message).
    """
    try:
        call(request, timeout=TIMEOUT)
    except grpc.RpcError as error:
        assert error.code() in allowed, (error.code(), error.details())
        details = error.details() or ""
        assert details or not explained, "an error must say what is wrong"
        for value in sent_texts(request):
            if len(value) >= ECHO_MIN_CHARS:
                assert value not in details, "an error echoed the request"
        return error
    return None


def test_recommend_takes_anything(
    live_server: LiveServer, published: Published, ids: dict[str, list[str]]
) -> None:
    catalogue = set(ids["books"])
    stub = live_server.stub

    outcomes: Counter[str] = Counter()

    @FUZZ
    @given(recommend_requests(ids))
    def check(request: pb.RecommendRequest) -> None:
        try:
            answer = stub.Recommend(request, timeout=TIMEOUT)
        except grpc.RpcError:
            refused(stub.Recommend, request, {grpc.StatusCode.INVALID_ARGUMENT})
            outcomes["refused"] += 1
            return
        outcomes["ok"] += 1
        wanted = request.n or 10
        assert 1 <= wanted <= 100
        assert len(answer.items) <= wanted
        assert answer.returned_count == len(answer.items)
        assert answer.model_version == published.version
        books = [item.book_id for item in answer.items]
        assert len(set(books)) == len(books)
        assert set(books) <= catalogue
        for item in answer.items:
            assert math.isfinite(item.score)
            assert 0.0 <= item.confidence <= 1.0
        keys = [(-item.score, item.book_id) for item in answer.items]
        assert keys == sorted(keys), "not sorted by score, then id"

    check()
    assert outcomes["ok"] >= 20 and outcomes["refused"] >= 20, outcomes


def test_explain_takes_anything(
    live_server: LiveServer, published: Published, ids: dict[str, list[str]]
) -> None:
    stub = live_server.stub
    allowed = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}

    books = ids["books"] + ids["spelled"]
    readers = ids["readers"]
    outcomes: Counter[str] = Counter()

    @FUZZ
    @given(st.data())
    def check(data: st.DataObject) -> None:
        broken = data.draw(st.sets(st.sampled_from(EXPLAIN_FIELDS), max_size=2))
        request = pb.ExplainRequest(
            user_id=pick(
                data.draw, broken, "user_id", good_ids(readers), texts(readers)
            ),
            book_id=pick(data.draw, broken, "book_id", good_ids(books), texts(books)),
            request_id=pick(
                data.draw, broken, "request_id", st.just(""), texts(["fuzz-2"])
            ),
        )
        try:
            answer = stub.Explain(request, timeout=TIMEOUT)
        except grpc.RpcError as error:
            refused(stub.Explain, request, allowed)
            outcomes[error.code().name] += 1
            return
        outcomes["ok"] += 1
        assert answer.model_version == published.version
        assert answer.book_id in set(ids["books"])
        assert math.isfinite(answer.score)
        for part in answer.contributions:
            assert math.isfinite(part.score) and math.isfinite(part.contribution)

    check()
    assert outcomes["ok"] >= 20 and outcomes["NOT_FOUND"] >= 5, outcomes
    assert outcomes["INVALID_ARGUMENT"] >= 20, outcomes


def test_track_interaction_takes_anything_and_stores_a_retry_once(
    live_server: LiveServer, ids: dict[str, list[str]]
) -> None:
    stub = live_server.stub

    outcomes: Counter[str] = Counter()

    @FUZZ
    @given(track_requests(ids))
    def check(request: pb.TrackInteractionRequest) -> None:
        try:
            first = stub.TrackInteraction(request, timeout=TIMEOUT)
        except grpc.RpcError:
            refused(stub.TrackInteraction, request, {grpc.StatusCode.INVALID_ARGUMENT})
            outcomes["refused"] += 1
            return
        outcomes["ok"] += 1
        assert first.acknowledged and first.event_id > 0
        if request.client_event_id or request.HasField("event_time"):
            retry = stub.TrackInteraction(request, timeout=TIMEOUT)
            assert retry.acknowledged and retry.duplicate
            assert retry.event_id == first.event_id

    check()
    assert outcomes["ok"] >= 20 and outcomes["refused"] >= 20, outcomes


def test_health_takes_any_service_name(live_server: LiveServer) -> None:
    health = health_pb2_grpc.HealthStub(live_server.channel)

    @settings(FUZZ, max_examples=60)
    @given(texts(["", "bookverse.recommendations.v1.RecommendationService"]))
    def check(service: str) -> None:
        request = health_pb2.HealthCheckRequest(service=service)
        try:
            answer = health.Check(request, timeout=TIMEOUT)
        except grpc.RpcError:
            refused(health.Check, request, {grpc.StatusCode.NOT_FOUND}, False)
            return
        assert answer.status == health_pb2.HealthCheckResponse.SERVING

    check()


@pytest.mark.parametrize(
    ("context", "field"),
    [
        (pb.Context(device=99), "context.device"),
        (pb.Context(utc_offset_minutes=2**31 - 1), "context.utc_offset_minutes"),
        (pb.Context(local_time=Timestamp(seconds=-5)), "context.local_time"),
        (
            pb.Context(local_time=Timestamp(seconds=1, nanos=-1)),
            "context.local_time.nanos",
        ),
    ],
)
def test_context_fields_are_validated_by_name(
    live_server: LiveServer, context: pb.Context, field: str
) -> None:
    request = pb.RecommendRequest(user_id="fuzz-reader", context=context)
    error = refused(
        live_server.stub.Recommend, request, {grpc.StatusCode.INVALID_ARGUMENT}
    )
    assert error is not None and (error.details() or "").startswith(f"{field}:")
