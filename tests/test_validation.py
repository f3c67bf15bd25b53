"""Request validation (every rule, the field it names, no echo of input), the
mapping of errors to status codes, and the configuration's rules."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from bookverse.recommendations.v1 import recommendations_pb2 as pb
from bookverse.server.app import config_from, parse_args
from bookverse.server.config import ConfigError, from_env
from bookverse.server.errors import (
    Cancelled,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    Overloaded,
    Unavailable,
    status_for,
)
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


# error mapping at the edge


def test_domain_errors_map_to_their_status_codes() -> None:
    cases = [
        (InvalidArgument("n", "must be in 0..100"), grpc.StatusCode.INVALID_ARGUMENT),
        (NotFound("book_id", "not in the catalogue"), grpc.StatusCode.NOT_FOUND),
        (Unavailable("no model"), grpc.StatusCode.UNAVAILABLE),
        (Overloaded("busy"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (DeadlineExceeded("late"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (Cancelled("gone"), grpc.StatusCode.CANCELLED),
    ]
    for error, code in cases:
        assert status_for(error, "req-1") == (code, str(error))


def test_unexpected_errors_are_internal_and_say_nothing_inside(
    caplog: pytest.LogCaptureFixture,
) -> None:
    try:
        raise KeyError("/srv/secret/path.npy")
    except KeyError as error:
        code, message = status_for(error, "req-42")
    assert code == grpc.StatusCode.INTERNAL
    assert message == "internal error (request id req-42)"
    assert "req-42" in caplog.text and "Traceback" in caplog.text


# configuration


def test_config_reads_the_environment_once_into_types() -> None:
    config = from_env(
        {
            "BOOKVERSE_ARTIFACTS": "/srv/artifacts",
            "BOOKVERSE_PORT": "0",
            "BOOKVERSE_METRICS_PORT": "9464",
            "BOOKVERSE_RELOAD_INTERVAL_S": "2.5",
            "BOOKVERSE_EXPERIMENT_VARIANT": "b",
            "BOOKVERSE_EXPERIMENT_WEIGHTS": "als=0.6, item_knn=0.4",
            "UNRELATED": "x",
        }
    )
    assert config.artifacts == Path("/srv/artifacts")
    assert config.port == 0 and config.metrics_port == 9464
    assert config.host == "127.0.0.1" and config.metrics_host == "127.0.0.1"
    assert config.reload_interval_s == 2.5
    assert config.experiment.variant == "b"
    weights = config.experiment.blend_weights({"als": 0.2, "content": 0.1})
    assert weights == {"als": 0.6, "item_knn": 0.4, "content": 0.1}
    assert from_env({}).metrics_port is None


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BOOKVERSE_PORT", "70000"),
        ("BOOKVERSE_PORT", "eighty"),
        ("BOOKVERSE_WORKER_THREADS", "0"),
        ("BOOKVERSE_RELOAD_INTERVAL_S", "0"),
        ("BOOKVERSE_DEADLINE_MARGIN_S", "nan"),
        ("BOOKVERSE_EXPERIMENT_WEIGHTS", "als=-1"),
        ("BOOKVERSE_EXPERIMENT_WEIGHTS", "als"),
    ],
)
def test_bad_settings_are_refused_by_name(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        from_env({variable: value})
    field = variable.removeprefix("BOOKVERSE_").lower()
    assert variable in str(caught.value) or field in str(caught.value)


def test_command_line_flags_override_the_environment() -> None:
    args = parse_args(["--port", "0", "--host", "::1", "--metrics-port", "0"])
    config = config_from(args, {"BOOKVERSE_PORT": "6000", "BOOKVERSE_HOST": "x"})
    assert (config.host, config.port, config.metrics_port) == ("::1", 0, 0)


def test_reuse_port_is_read_from_the_environment() -> None:
    from bookverse.server.config import ConfigError, from_env

    assert from_env({"BOOKVERSE_REUSE_PORT": "true"}).reuse_port
    assert not from_env({}).reuse_port
    with pytest.raises(ConfigError, match="BOOKVERSE_REUSE_PORT"):
        from_env({"BOOKVERSE_REUSE_PORT": "maybe"})
