"""Request validation: every rule, the field it names, and no echo of input."""

from __future__ import annotations

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from bookverse.recommendations.v1 import recommendations_pb2 as pb
from bookverse.server.errors import InvalidArgument
from bookverse.server.validation import (
    DEFAULT_N,
    FUTURE_TOLERANCE_S,
    request_id_of,
    validate_explain,
    validate_recommend,
    validate_track,
)

NOW = 1_800_000_000.0
SCALE = (1.0, 10.0)
HOSTILE = "<img src=x onerror=alert(1)>"


def refused(call: object, *args: object) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        call(*args)  # type: ignore[operator]
    error = caught.value
    assert str(error).startswith(f"{error.field}: ")
    assert HOSTILE not in str(error) and "onerror" not in str(error)
    return error


# Recommend


def test_a_plain_request_passes_with_defaults() -> None:
    query = validate_recommend(pb.RecommendRequest(user_id="276725"))
    assert query.n == DEFAULT_N
    assert query.user_id == "276725"
    assert query.filters.min_year is None and query.filters.max_year is None
    assert query.request_id  # a fresh one


@pytest.mark.parametrize("n", [1, 10, 100])
def test_n_in_range_is_kept(n: int) -> None:
    assert validate_recommend(pb.RecommendRequest(user_id="u", n=n)).n == n


@pytest.mark.parametrize("n", [-1, 101, 2**31 - 1])
def test_n_out_of_range_is_refused(n: int) -> None:
    error = refused(validate_recommend, pb.RecommendRequest(user_id="u", n=n))
    assert error.field == "n"


@pytest.mark.parametrize(
    "user_id",
    ["", " ", "a b", "tab\there", "new\nline", "x" * 65, "é", "\x00", HOSTILE],
)
def test_malformed_user_ids_are_refused(user_id: str) -> None:
    error = refused(validate_recommend, pb.RecommendRequest(user_id=user_id))
    assert error.field == "user_id"


def test_longest_and_punctuated_ids_pass() -> None:
    validate_recommend(pb.RecommendRequest(user_id="~" * 64))
    validate_recommend(pb.RecommendRequest(user_id="0-345-33968-X"))


def test_too_many_excluded_books_are_refused() -> None:
    request = pb.RecommendRequest(
        user_id="u", filters=pb.Filters(exclude_book_ids=["b"] * 501)
    )
    assert refused(validate_recommend, request).field == "filters.exclude_book_ids"
    request.filters.exclude_book_ids.pop()
    assert len(validate_recommend(request).filters.exclude_book_ids) == 500


def test_a_bad_excluded_id_is_named_by_position() -> None:
    request = pb.RecommendRequest(
        user_id="u", filters=pb.Filters(exclude_book_ids=["ok", HOSTILE])
    )
    assert refused(validate_recommend, request).field == "filters.exclude_book_ids[1]"


@pytest.mark.parametrize("key", ["only_authors", "exclude_authors"])
def test_author_lists_are_bounded(key: str) -> None:
    too_many = pb.RecommendRequest(user_id="u", filters=pb.Filters(**{key: ["a"] * 51}))
    assert refused(validate_recommend, too_many).field == f"filters.{key}"
    too_long = pb.RecommendRequest(
        user_id="u", filters=pb.Filters(**{key: ["a" * 201]})
    )
    assert refused(validate_recommend, too_long).field == f"filters.{key}[0]"
    empty = pb.RecommendRequest(user_id="u", filters=pb.Filters(**{key: ["  "]}))
    assert refused(validate_recommend, empty).field == f"filters.{key}[0]"


def test_authors_are_case_folded_and_may_use_any_script() -> None:
    request = pb.RecommendRequest(
        user_id="u", filters=pb.Filters(only_authors=[" Gabriel García MÁRQUEZ "])
    )
    authors = validate_recommend(request).filters.only_authors
    assert authors == ("gabriel garcía márquez",)


def test_year_range_must_be_ordered() -> None:
    bad = pb.RecommendRequest(
        user_id="u", filters=pb.Filters(min_year=2001, max_year=2000)
    )
    assert refused(validate_recommend, bad).field == "filters.min_year"
    same = pb.RecommendRequest(user_id="u", filters=pb.Filters(min_year=0, max_year=0))
    filters = validate_recommend(same).filters
    assert (filters.min_year, filters.max_year) == (0, 0)


def test_session_is_bounded() -> None:
    request = pb.RecommendRequest(
        user_id="u", context=pb.Context(session_book_ids=["b"] * 51)
    )
    assert refused(validate_recommend, request).field == "context.session_book_ids"


def test_request_id_is_checked_and_echoed() -> None:
    query = validate_recommend(pb.RecommendRequest(user_id="u", request_id="req-1"))
    assert query.request_id == "req-1"
    bad = pb.RecommendRequest(user_id="u", request_id=HOSTILE)
    assert refused(validate_recommend, bad).field == "request_id"
    assert request_id_of(HOSTILE) != HOSTILE
    assert request_id_of("req-2") == "req-2"


# Explain


def test_explain_needs_both_ids() -> None:
    assert refused(validate_explain, pb.ExplainRequest(user_id="u")).field == "book_id"
    assert refused(validate_explain, pb.ExplainRequest(book_id="b")).field == "user_id"
    query = validate_explain(pb.ExplainRequest(user_id="u", book_id="b"))
    assert (query.user_id, query.book_id) == ("u", "b")


# TrackInteraction


def track(**fields: object) -> pb.TrackInteractionRequest:
    base: dict[str, object] = {
        "user_id": "u",
        "book_id": "b",
        "type": pb.INTERACTION_TYPE_PURCHASE,
    }
    base.update(fields)
    return pb.TrackInteractionRequest(**base)  # type: ignore[arg-type]


def test_a_plain_event_happens_now() -> None:
    query = validate_track(track(), SCALE, NOW)
    assert query.kind == "purchase"
    assert query.event_time == NOW
    assert query.rating is None and query.client_event_id is None


def test_type_must_be_known() -> None:
    assert refused(validate_track, track(type=0), SCALE, NOW).field == "type"
    assert refused(validate_track, track(type=99), SCALE, NOW).field == "type"


def test_rating_only_and_always_for_rating_events() -> None:
    rating = pb.INTERACTION_TYPE_RATING
    assert refused(validate_track, track(type=rating), SCALE, NOW).field == "rating"
    assert refused(validate_track, track(rating=5.0), SCALE, NOW).field == "rating"
    assert validate_track(track(type=rating, rating=10.0), SCALE, NOW).rating == 10.0


@pytest.mark.parametrize("value", [0.5, 10.5, float("nan"), float("inf")])
def test_rating_must_be_finite_and_within_the_scale(value: float) -> None:
    request = track(type=pb.INTERACTION_TYPE_RATING, rating=value)
    assert refused(validate_track, request, SCALE, NOW).field == "rating"


def test_event_time_rules() -> None:
    past = validate_track(track(event_time=Timestamp(seconds=1)), SCALE, NOW)
    assert past.event_time == 1.0  # late events are accepted
    soon = Timestamp(seconds=int(NOW + FUTURE_TOLERANCE_S))
    assert validate_track(track(event_time=soon), SCALE, NOW).event_time > NOW

    for seconds in (0, -5, int(NOW + FUTURE_TOLERANCE_S + 1)):
        request = track(event_time=Timestamp(seconds=seconds))
        assert refused(validate_track, request, SCALE, NOW).field == "event_time"
    bad_nanos = track(event_time=Timestamp(seconds=5, nanos=-1))
    assert refused(validate_track, bad_nanos, SCALE, NOW).field == "event_time.nanos"


def test_client_event_id_rules() -> None:
    query = validate_track(track(client_event_id="retry key 1"), SCALE, NOW)
    assert query.client_event_id == "retry key 1"
    for bad in ("k" * 129, "tab\tkey", "\u00e9t\u00e9"):
        request = track(client_event_id=bad)
        assert refused(validate_track, request, SCALE, NOW).field == "client_event_id"
