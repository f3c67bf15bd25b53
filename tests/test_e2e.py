"""Every RPC of a real server over a real channel, on the real-data slice when
it has been fetched (``conftest.py``)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import (
    LiveServer,
    Published,
    fit_models,
    publish_bundle,
    server_config,
    synthetic_dataset,
)
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from bookverse.models.bundle import POINTER
from bookverse.models.ids import normalize_book_id
from bookverse.recommendations.v1 import recommendations_pb2 as pb
from bookverse.recommendations.v1 import recommendations_pb2_grpc as pb_grpc
from bookverse.server.app import SERVICE_NAME, create_server
from bookverse.server.interactions import TrackResult

pytestmark = pytest.mark.e2e

TIMEOUT = 10.0


def reader_with_history(published: Published, rank: int) -> str:
    """The id of the ``rank``-th reader (by history length, longest first)."""
    dataset = published.data.dataset
    counts = np.bincount(dataset.users, minlength=dataset.n_users)
    order = np.argsort(-counts, kind="stable")
    return str(dataset.user_ids[order[rank]])


def recommend(live: LiveServer, user_id: str, **fields: object) -> pb.RecommendResponse:
    request = pb.RecommendRequest(user_id=user_id, **fields)  # type: ignore[arg-type]
    return live.stub.Recommend(request, timeout=TIMEOUT)


def rpc_error(call: object, request: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=TIMEOUT)  # type: ignore[operator]
    return caught.value


def test_uses_the_real_data_slice_when_fetched(published: Published) -> None:
    fetched = (Path(__file__).resolve().parents[1] / "data" / "bookcrossing").is_dir()
    assert published.data.real == fetched


def test_health_is_serving_for_the_server_and_the_service(live_server: LiveServer):
    stub = health_pb2_grpc.HealthStub(live_server.channel)
    for service in ("", SERVICE_NAME):
        answer = stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_service(live_server: LiveServer) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(live_server.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    answer = next(iter(stub.ServerReflectionInfo(iter([request]))))
    names = {s.name for s in answer.list_services_response.service}
    assert SERVICE_NAME in names
    assert "grpc.health.v1.Health" in names


def test_known_reader_gets_personalized_sorted_unique_valid_books(
    live_server: LiveServer, published: Published
) -> None:
    user = reader_with_history(published, 0)
    answer = recommend(live_server, user, n=7, request_id="e2e-known-1")

    assert answer.strategy == pb.STRATEGY_PERSONALIZED
    assert answer.model_version == published.version
    assert answer.request_id == "e2e-known-1"
    assert answer.returned_count == len(answer.items) == 7
    ids = [item.book_id for item in answer.items]
    assert len(set(ids)) == len(ids)
    catalogue = set(published.data.dataset.catalogue.item_ids.tolist())
    assert set(ids) <= catalogue
    keys = [(-item.score, item.book_id) for item in answer.items]
    assert keys == sorted(keys)
    for item in answer.items:
        assert 0.0 <= item.confidence <= 1.0
        assert item.reason
        assert item.source != pb.SOURCE_UNSPECIFIED
        assert not item.already_seen


def test_n_zero_means_ten(live_server: LiveServer, published: Published) -> None:
    answer = recommend(live_server, reader_with_history(published, 1))
    assert len(answer.items) == 10


def test_already_read_books_are_excluded_unless_asked(
    live_server: LiveServer, published: Published
) -> None:
    dataset = published.data.dataset
    user = reader_with_history(published, 2)
    row = int(np.flatnonzero(dataset.user_ids == user)[0])
    read = set(dataset.catalogue.item_ids[dataset.items[dataset.users == row]])

    default = recommend(live_server, user, n=50)
    assert not read & {item.book_id for item in default.items}
    with_read = recommend(
        live_server, user, n=50, filters=pb.Filters(include_already_read=True)
    )
    seen = {item.book_id for item in with_read.items if item.already_seen}
    assert seen and seen <= read


def test_unknown_reader_gets_cold_start_shaped_by_the_session(
    live_server: LiveServer, published: Published
) -> None:
    plain = recommend(live_server, "e2e-new-reader", n=10)
    assert plain.strategy == pb.STRATEGY_COLD_START
    assert plain.strategy_reason
    assert all(item.confidence <= 0.3 for item in plain.items)

    # a well-read book as the session: its neighbours should come up
    dataset = published.data.dataset
    popular = np.argsort(-np.bincount(dataset.items, minlength=dataset.n_items))
    session = str(dataset.catalogue.item_ids[popular[3]])
    shaped = recommend(
        live_server,
        "e2e-new-reader",
        n=10,
        context=pb.Context(session_book_ids=[session, "0000000000000"]),
    )
    assert shaped.strategy == pb.STRATEGY_COLD_START
    assert shaped.ignored_unknown_ids == 1
    assert session not in {item.book_id for item in shaped.items}
    assert [i.book_id for i in shaped.items] != [i.book_id for i in plain.items]
    assert any(item.source != pb.SOURCE_POPULARITY for item in shaped.items)


def test_tracking_changes_the_ranking_beyond_removing_the_book(
    live_server: LiveServer, published: Published
) -> None:
    user = reader_with_history(published, 5)
    before = recommend(live_server, user, n=30)
    tracked = before.items[0].book_id

    answer = live_server.stub.TrackInteraction(
        pb.TrackInteractionRequest(
            user_id=user, book_id=tracked, type=pb.INTERACTION_TYPE_PURCHASE
        ),
        timeout=TIMEOUT,
    )
    assert answer.acknowledged and not answer.duplicate
    assert answer.book_known_to_model
    assert answer.event_id > 0

    after = recommend(live_server, user, n=30)
    assert tracked not in {item.book_id for item in after.items}
    old = {item.book_id: item.score for item in before.items}
    new = {item.book_id: item.score for item in after.items}
    common = [book for book in old if book in new and book != tracked]
    assert common
    order_before = sorted(common, key=lambda b: (-old[b], b))
    order_after = sorted(common, key=lambda b: (-new[b], b))
    scores_moved = any(abs(old[b] - new[b]) > 1e-6 for b in common)
    assert order_before != order_after or scores_moved


def test_tracked_only_reader_is_personalized(
    live_server: LiveServer, published: Published
) -> None:
    book = str(published.data.dataset.catalogue.item_ids[0])
    live_server.stub.TrackInteraction(
        pb.TrackInteractionRequest(
            user_id="e2e-tracked-only", book_id=book, type=pb.INTERACTION_TYPE_VIEW
        ),
        timeout=TIMEOUT,
    )
    answer = recommend(live_server, "e2e-tracked-only", n=5)
    assert answer.strategy == pb.STRATEGY_PERSONALIZED
    assert book not in {item.book_id for item in answer.items}


def test_duplicate_track_is_stored_once(
    live_server: LiveServer, published: Published
) -> None:
    book = str(published.data.dataset.catalogue.item_ids[1])
    by_key = pb.TrackInteractionRequest(
        user_id="e2e-dup",
        book_id=book,
        type=pb.INTERACTION_TYPE_RATING,
        rating=8,
        client_event_id="e2e-dup-1",
    )
    first = live_server.stub.TrackInteraction(by_key, timeout=TIMEOUT)
    again = live_server.stub.TrackInteraction(by_key, timeout=TIMEOUT)
    assert not first.duplicate and again.duplicate
    assert again.event_id == first.event_id

    # the same key for another reader's event is refused, naming the field
    misused = pb.TrackInteractionRequest(
        user_id="e2e-other",
        book_id=book,
        type=pb.INTERACTION_TYPE_VIEW,
        client_event_id="e2e-dup-1",
    )
    with pytest.raises(grpc.RpcError) as refused:
        live_server.stub.TrackInteraction(misused, timeout=TIMEOUT)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "client_event_id" in (refused.value.details() or "")

    stamp = Timestamp(seconds=int(time.time()) - 3600)
    natural = pb.TrackInteractionRequest(
        user_id="e2e-dup", book_id=book, type=pb.INTERACTION_TYPE_VIEW, event_time=stamp
    )
    one = live_server.stub.TrackInteraction(natural, timeout=TIMEOUT)
    two = live_server.stub.TrackInteraction(natural, timeout=TIMEOUT)
    assert (one.duplicate, two.duplicate) == (False, True)


def test_unknown_to_model_book_is_accepted(live_server: LiveServer) -> None:
    answer = live_server.stub.TrackInteraction(
        pb.TrackInteractionRequest(
            user_id="e2e-new-book",
            book_id="not-a-known-book",
            type=pb.INTERACTION_TYPE_CLICK,
        ),
        timeout=TIMEOUT,
    )
    assert answer.acknowledged and not answer.book_known_to_model


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"user_id": "", "n": 5}, "user_id"),
        ({"user_id": "has space", "n": 5}, "user_id"),
        ({"user_id": "u", "n": 101}, "n"),
        ({"user_id": "u", "n": -1}, "n"),
        (
            {"user_id": "u", "filters": pb.Filters(min_year=2000, max_year=1990)},
            "filters.min_year",
        ),
        (
            {"user_id": "u", "filters": pb.Filters(exclude_book_ids=["x"] * 501)},
            "filters.exclude_book_ids",
        ),
        (
            {"user_id": "u", "context": pb.Context(session_book_ids=["bad id"])},
            "context.session_book_ids[0]",
        ),
    ],
)
def test_bad_recommend_arguments_name_the_field(
    live_server: LiveServer, request_fields: dict[str, object], field: str
) -> None:
    error = rpc_error(
        live_server.stub.Recommend,
        pb.RecommendRequest(**request_fields),  # type: ignore[arg-type]
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(f"{field}:")


def test_bad_track_arguments_name_the_field_and_never_echo_input(
    live_server: LiveServer,
) -> None:
    hostile = "<script>alert(1)</script>" * 4
    cases = [
        (pb.TrackInteractionRequest(user_id=hostile, book_id="b", type=1), "user_id"),
        (pb.TrackInteractionRequest(user_id="u", book_id="b"), "type"),
        (pb.TrackInteractionRequest(user_id="u", book_id="b", type=4), "rating"),
        (
            pb.TrackInteractionRequest(user_id="u", book_id="b", type=4, rating=99),
            "rating",
        ),
        (
            pb.TrackInteractionRequest(user_id="u", book_id="b", type=1, rating=5),
            "rating",
        ),
        (
            pb.TrackInteractionRequest(
                user_id="u",
                book_id="b",
                type=1,
                event_time=Timestamp(seconds=int(time.time()) + 3600),
            ),
            "event_time",
        ),
        (
            pb.TrackInteractionRequest(
                user_id="u", book_id="b", type=1, client_event_id=hostile * 2
            ),
            "client_event_id",
        ),
    ]
    for request, field in cases:
        error = rpc_error(live_server.stub.TrackInteraction, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert error.details().startswith(f"{field}:")
        assert "script" not in error.details()


def test_explain_names_each_model_part(
    live_server: LiveServer, published: Published
) -> None:
    user = reader_with_history(published, 0)
    top = recommend(live_server, user, n=1).items[0]
    answer = live_server.stub.Explain(
        pb.ExplainRequest(user_id=user, book_id=top.book_id), timeout=TIMEOUT
    )
    assert answer.book_id == top.book_id
    assert answer.title == top.title
    assert answer.known_to_model
    assert answer.reasons
    assert answer.strategy == pb.STRATEGY_PERSONALIZED
    assert answer.model_version == published.version
    models = {c.model for c in answer.contributions}
    assert {"als", "item_knn", "content", "popularity"} <= models
    for part in answer.contributions:
        assert 0.0 <= part.score <= 1.0
        assert part.contribution == pytest.approx(part.weight * part.score)
    total = sum(c.contribution for c in answer.contributions)
    assert answer.score == pytest.approx(total, abs=1e-5)
    assert answer.score == pytest.approx(top.score, abs=1e-5)


def test_explain_names_an_author_the_reader_read(
    live_server: LiveServer, published: Published
) -> None:
    dataset = published.data.dataset
    authors = np.array([a.strip().casefold() for a in dataset.catalogue.authors])
    matrix = dataset.user_items()
    for user in range(dataset.n_users):
        read = matrix.indices[matrix.indptr[user] : matrix.indptr[user + 1]]
        keys = {authors[b] for b in read} - {""}
        others = np.flatnonzero(np.isin(authors, list(keys)))
        unread = np.setdiff1d(others, read)
        if len(unread):
            break
    else:
        pytest.skip("no reader has an unread book by an author they read")
    book = str(dataset.catalogue.item_ids[unread[0]])
    answer = live_server.stub.Explain(
        pb.ExplainRequest(user_id=str(dataset.user_ids[user]), book_id=book),
        timeout=TIMEOUT,
    )
    author = dataset.catalogue.authors[unread[0]].strip()
    assert f"By {author}, an author you read" in answer.reasons


def test_explain_accepts_any_isbn_spelling(
    live_server: LiveServer, published: Published
) -> None:
    dataset = published.data.dataset
    if dataset.id_scheme != "isbn":
        pytest.skip("ISBN spellings only apply to ISBN catalogues")
    canonical = next(
        str(b)
        for b in dataset.catalogue.item_ids
        if len(b) == 13 and b.startswith("978") and b.isdigit()
    )
    isbn10_body = canonical[3:12]
    total = sum((10 - i) * int(d) for i, d in enumerate(isbn10_body))
    check = (11 - total % 11) % 11
    isbn10 = isbn10_body + ("X" if check == 10 else str(check))
    assert normalize_book_id(isbn10) == canonical
    answer = live_server.stub.Explain(
        pb.ExplainRequest(user_id="someone", book_id=isbn10), timeout=TIMEOUT
    )
    assert answer.book_id == canonical
    assert answer.strategy == pb.STRATEGY_COLD_START


def test_an_edition_resolves_to_its_work(
    live_server: LiveServer, published: Published
) -> None:
    aliases = published.data.dataset.extras.get("work_aliases")
    if not isinstance(aliases, dict):
        pytest.skip("the synthetic catalogue has no editions")
    served = set(published.data.dataset.catalogue.item_ids.tolist())
    edition, work = next((k, v) for k, v in aliases.items() if k != v and v in served)
    answer = live_server.stub.Explain(
        pb.ExplainRequest(user_id="someone", book_id=edition), timeout=TIMEOUT
    )
    assert answer.book_id == work

    tracked = live_server.stub.TrackInteraction(
        pb.TrackInteractionRequest(
            user_id="edition-reader",
            book_id=edition,
            type=pb.INTERACTION_TYPE_PURCHASE,
        ),
        timeout=TIMEOUT,
    )
    assert tracked.book_known_to_model
    listed = live_server.stub.Recommend(
        pb.RecommendRequest(user_id="edition-reader", n=50), timeout=TIMEOUT
    )
    # the work the reader bought (as another edition) is not offered again
    assert work not in [item.book_id for item in listed.items]


def test_explain_unknown_book_is_not_found(live_server: LiveServer) -> None:
    error = rpc_error(
        live_server.stub.Explain,
        pb.ExplainRequest(user_id="u", book_id="9999999999999"),
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details().startswith("book_id:")


def test_filters_apply_and_unknown_ids_are_counted(
    live_server: LiveServer, published: Published
) -> None:
    user = reader_with_history(published, 3)
    first = recommend(live_server, user, n=10)
    dropped = first.items[0]
    answer = recommend(
        live_server,
        user,
        n=10,
        filters=pb.Filters(
            exclude_book_ids=[dropped.book_id, "unknown-book-1"],
            exclude_authors=[dropped.author.upper() or "nobody at all"],
            min_year=1900,
            max_year=2010,
        ),
    )
    assert answer.ignored_unknown_ids == 1
    assert dropped.book_id not in {item.book_id for item in answer.items}
    for item in answer.items:
        assert 1900 <= item.year <= 2010
        assert item.author.casefold() != dropped.author.casefold() or not item.author


def test_only_authors_finds_that_authors_books(
    live_server: LiveServer, published: Published
) -> None:
    catalogue = published.data.dataset.catalogue
    author = next(a for a in catalogue.authors if a)
    answer = recommend(
        live_server, "e2e-author-fan", n=5, filters=pb.Filters(only_authors=[author])
    )
    assert answer.items
    assert all(item.author.casefold() == author.casefold() for item in answer.items)


def test_filters_that_leave_nothing_answer_empty_with_a_reason(
    live_server: LiveServer,
) -> None:
    answer = recommend(
        live_server,
        "e2e-nothing",
        n=5,
        filters=pb.Filters(only_authors=["No Such Author Anywhere"]),
    )
    assert len(answer.items) == 0
    assert answer.returned_count == 0
    assert "filters" in answer.strategy_reason


def test_metrics_endpoint_exports_grpc_and_service_series(
    live_server: LiveServer, published: Published
) -> None:
    recommend(live_server, reader_with_history(published, 0), n=3)
    port = live_server.runtime.metrics_port
    assert port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    assert "grpc_server_handled_total" in text
    assert 'grpc_method="Recommend"' in text
    assert "bookverse_recommend_strategy_total" in text
    assert f'bookverse_model_info{{version="{published.version}"}} 1.0' in text
    assert "e2e-new-reader" not in text


def test_new_bundle_is_served_and_a_broken_one_refused(
    published: Published, tmp_path: Path, fitted_models: dict
) -> None:
    root = tmp_path / "artifacts"
    shutil.copytree(published.root, root)
    config = server_config(root, tmp_path / "events.db", metrics_port=None)
    server, port, runtime = create_server(config)
    server.start()
    runtime.start()
    try:
        assert runtime.wait_until_serving(timeout=30)
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = pb_grpc.RecommendationServiceStub(channel)
        ask = pb.RecommendRequest(user_id="reload-reader", n=3)
        assert stub.Recommend(ask, timeout=TIMEOUT).model_version == published.version

        # a broken bundle: refused, the old one keeps serving
        broken = publish_bundle(root, published.data.dataset, fitted_models)
        (root / "versions" / broken / "item_ids.npy").write_bytes(b"garbage")
        time.sleep(1.0)
        assert stub.Recommend(ask, timeout=TIMEOUT).model_version == published.version
        failures = runtime.metrics.model_reloads.labels(result="failure")._value.get()
        assert failures >= 1

        # a good one: swapped in
        fresh = publish_bundle(root, published.data.dataset, fitted_models)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            version = stub.Recommend(ask, timeout=TIMEOUT).model_version
            if version == fresh:
                break
            time.sleep(0.1)
        assert version == fresh
        assert (root / POINTER).read_text().strip() == fresh
        channel.close()
    finally:
        runtime.stop(grace=1.0)


def test_client_prints_tables(
    live_server: LiveServer, published: Published, capsys: pytest.CaptureFixture
) -> None:
    from bookverse.server import client

    user = reader_with_history(published, 0)
    address = ["--address", live_server.address]
    assert client.main([*address, "health"]) == 0
    assert client.main([*address, "recommend", user, "--n", "3"]) == 0
    out = capsys.readouterr().out
    assert "SERVING" in out
    assert "personalized" in out and published.version in out
    assert "title" in out and "reason" in out

    book = str(published.data.dataset.catalogue.item_ids[0])
    assert client.main([*address, "explain", user, book]) == 0
    assert client.main([*address, "track", user, book, "--type", "view"]) == 0
    out = capsys.readouterr().out
    assert "contribution" in out and "stored" in out
    assert client.main([*address, "recommend", user, "--n", "500"]) == 1
    assert "INVALID_ARGUMENT: n:" in capsys.readouterr().err


def test_serve_entry_point_stops_cleanly_on_sigterm(
    published: Published, tmp_path: Path
) -> None:
    serve = Path(sys.executable).with_name("bookverse-serve")
    process = subprocess.Popen(
        [
            str(serve),
            "--artifacts",
            str(published.root),
            "--events-db",
            str(tmp_path / "events.db"),
            "--port",
            "0",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if "serving on 127.0.0.1:" in line:
                break
        assert published.version in lines[-1]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


class BlockingEvents:
    """An interaction store whose writes wait until released (load tests)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def track(self, event: object, timeout: float | None = None) -> TrackResult:
        self.entered.set()
        self.release.wait(10)
        return TrackResult(1, False, time.time())

    def recent(self, user_id: str, limit: int = 200) -> list:
        return []

    def close(self) -> None:
        self.release.set()


def test_calls_over_the_limit_are_refused_at_once_and_counted(
    published: Published, tmp_path: Path
) -> None:
    events = BlockingEvents()
    config = server_config(
        published.root,
        tmp_path / "unused.db",
        max_concurrent_rpcs=1,
        worker_threads=4,
        metrics_port=None,
    )
    server, port, runtime = create_server(config, store=events)  # type: ignore[arg-type]
    server.start()
    runtime.start()
    try:
        assert runtime.wait_until_serving(timeout=30)
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = pb_grpc.RecommendationServiceStub(channel)
        book = str(published.data.dataset.catalogue.item_ids[0])
        slow = stub.TrackInteraction.future(
            pb.TrackInteractionRequest(user_id="u", book_id=book, type=1),
            timeout=TIMEOUT,
        )
        assert events.entered.wait(5)

        started = time.monotonic()
        error = rpc_error(stub.Recommend, pb.RecommendRequest(user_id="u"))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert time.monotonic() - started < 2.0

        events.release.set()
        assert slow.result().acknowledged
        rejected = runtime.metrics.rejected_overload._value.get()
        assert rejected == 1
        handled = runtime.metrics.handled.labels(
            "UNARY", SERVICE_NAME, "Recommend", "RESOURCE_EXHAUSTED"
        )._value.get()
        assert handled == 1
        assert stub.Recommend(pb.RecommendRequest(user_id="u"), timeout=TIMEOUT)
        channel.close()
    finally:
        events.release.set()
        runtime.stop(grace=1.0)


def test_not_serving_until_a_bundle_is_published(
    small_bundle_source: tuple, tmp_path: Path
) -> None:
    dataset, models = small_bundle_source
    root = tmp_path / "artifacts"
    config = server_config(root, tmp_path / "events.db", metrics_port=None)
    server, port, runtime = create_server(config)
    server.start()
    runtime.start()
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        health = health_pb2_grpc.HealthStub(channel)
        check = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
        assert health.Check(check).status == health_pb2.HealthCheckResponse.NOT_SERVING
        stub = pb_grpc.RecommendationServiceStub(channel)
        error = rpc_error(stub.Recommend, pb.RecommendRequest(user_id="u"))
        assert error.code() == grpc.StatusCode.UNAVAILABLE

        publish_bundle(root, dataset, models)
        assert runtime.wait_until_serving(timeout=30)
        assert health.Check(check).status == health_pb2.HealthCheckResponse.SERVING
        assert stub.Recommend(pb.RecommendRequest(user_id="u"), timeout=TIMEOUT)
        channel.close()
    finally:
        runtime.stop(grace=1.0)
    assert runtime.health.Check(check, None).status == (
        health_pb2.HealthCheckResponse.NOT_SERVING
    )


@pytest.fixture(scope="module")
def small_bundle_source() -> tuple:
    dataset = synthetic_dataset(n_books=80, n_readers=100, seed=5)
    return dataset, fit_models(dataset)


def test_the_server_imports_no_training_stack() -> None:
    code = (
        "import sys, bookverse.server.app, bookverse.server.client; "
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'implicit', 'sklearn', 'pandas') "
        "or m.startswith('bookverse.training')]; print(bad); sys.exit(bool(bad))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_second_server_cannot_take_a_port_in_use(
    live_server: LiveServer, published: Published, tmp_path: Path
) -> None:
    config = server_config(published.root, tmp_path / "other.db", port=live_server.port)
    with pytest.raises(RuntimeError, match=f"cannot bind 127.0.0.1:{live_server.port}"):
        create_server(config)


def test_reuse_port_lets_processes_share_the_port(
    published: Published, tmp_path: Path
) -> None:
    first, port, first_runtime = create_server(
        server_config(published.root, tmp_path / "a.db", reuse_port=True)
    )
    first.start()
    try:
        config = server_config(
            published.root, tmp_path / "b.db", port=port, reuse_port=True
        )
        second, same, second_runtime = create_server(config)
        second.start()
        assert same == port
        second_runtime.stop(grace=0)
    finally:
        first_runtime.stop(grace=0)


def test_books_without_a_title_are_never_recommended(
    live_server: LiveServer, published: Published
) -> None:
    titles = published.data.dataset.catalogue.titles
    if all(t.strip() for t in titles):
        pytest.skip("every book of this catalogue has a title")
    for user in (reader_with_history(published, 0), "someone-new"):
        answer = recommend(live_server, user, n=100)
        assert answer.items
        assert all(item.title.strip() for item in answer.items)
