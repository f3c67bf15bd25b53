"""Limits over a real channel: message size, numeric threads, time left.

The concurrency bound (RESOURCE_EXHAUSTED at once, not queued) is proved in
``test_e2e.py``; the pipeline's cancellation in ``test_recommender.py``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import grpc
import pytest
from conftest import fit_models, publish_bundle, server_config, synthetic_dataset
from threadpoolctl import threadpool_info

from bookverse.recommendations.v1 import recommendations_pb2 as pb
from bookverse.recommendations.v1 import recommendations_pb2_grpc as pb_grpc
from bookverse.server.app import create_server
from bookverse.server.interactions import TrackResult

TIMEOUT = 30.0
SMALL_LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dataset = synthetic_dataset(n_books=80, n_readers=100, seed=21)
    root = tmp_path_factory.mktemp("limits-artifacts")
    publish_bundle(root, dataset, fit_models(dataset))
    return root


@dataclass
class ThreadProbe:
    """An interaction store that records the thread limits where it is called.

    ``recent`` runs in the model store's thread during a bundle's warm-up and
    in a gRPC worker thread during each Recommend; ``track`` in a worker.
    """

    seen: list[tuple[str, int, dict[str, int]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _record(self) -> None:
        by_api: dict[str, int] = {}
        for library in threadpool_info():
            api = library["internal_api"]
            by_api[api] = max(by_api.get(api, 0), library["num_threads"])
        with self.lock:
            name = threading.current_thread().name
            self.seen.append((name, faiss.omp_get_max_threads(), by_api))

    def track(self, event: Any, timeout: float | None = None) -> TrackResult:
        self._record()
        return TrackResult(1, False, time.time())

    def recent(self, user_id: str, limit: int = 200) -> list[Any]:
        self._record()
        return []

    def close(self) -> None:
        return None


@pytest.fixture()
def start(artifacts: Path, tmp_path: Path) -> Iterator[Any]:
    """Start a server on 127.0.0.1:0 with config overrides; stopped after."""
    started: list[Any] = []

    def run(store: Any = None, **overrides: Any) -> tuple[Any, grpc.Channel]:
        config = server_config(
            artifacts, tmp_path / "events.db", metrics_port=None, **overrides
        )
        server, port, runtime = create_server(config, store=store)
        server.start()
        runtime.start()
        started.append(runtime)
        assert runtime.wait_until_serving(timeout=30)
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        started.append(channel)
        return runtime, channel

    yield run
    for thing in reversed(started):
        if isinstance(thing, grpc.Channel):
            thing.close()
        else:
            thing.stop(grace=1.0)


def test_an_oversize_request_is_refused_naming_the_limit(start: Any) -> None:
    _, channel = start(max_message_bytes=SMALL_LIMIT)
    stub = pb_grpc.RecommendationServiceStub(channel)
    ids = [f"{i:0>60}" for i in range(2 * SMALL_LIMIT // 60)]
    request = pb.RecommendRequest(
        user_id="reader", filters=pb.Filters(exclude_book_ids=ids)
    )
    assert request.ByteSize() > SMALL_LIMIT

    with pytest.raises(grpc.RpcError) as caught:
        stub.Recommend(request, timeout=TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(SMALL_LIMIT) in (caught.value.details() or "")

    # a request under the limit on the same channel is answered
    assert stub.Recommend(pb.RecommendRequest(user_id="reader"), timeout=TIMEOUT)


def test_numeric_threads_are_limited_in_every_serving_thread(start: Any) -> None:
    probe = ThreadProbe()
    _, channel = start(store=probe, blas_threads=1, worker_threads=4)
    stub = pb_grpc.RecommendationServiceStub(channel)
    for i in range(8):
        stub.Recommend(pb.RecommendRequest(user_id=f"limits-{i}"), timeout=TIMEOUT)
        stub.TrackInteraction(
            pb.TrackInteractionRequest(
                user_id=f"limits-{i}", book_id="9780000000002", type=1
            ),
            timeout=TIMEOUT,
        )

    threads = {name for name, _, _ in probe.seen}
    assert any(name.startswith("bookverse-rpc") for name in threads)
    assert "bookverse-model-store" in threads  # the warm-up query
    for name, faiss_threads, by_api in probe.seen:
        assert faiss_threads == 1, name
        assert all(count == 1 for count in by_api.values()), (name, by_api)


def test_too_little_time_left_answers_degraded_and_flagged(start: Any) -> None:
    # a margin longer than any deadline: every stage finds too little time
    _, channel = start(deadline_margin_s=3600.0)
    stub = pb_grpc.RecommendationServiceStub(channel)
    answer = stub.Recommend(pb.RecommendRequest(user_id="1001", n=5), timeout=TIMEOUT)
    assert answer.degraded and answer.degraded_reason
    assert answer.strategy == pb.STRATEGY_FALLBACK
    assert 0 < len(answer.items) <= 5
    assert len({item.book_id for item in answer.items}) == len(answer.items)

    # without a deadline there is always time
    plain = stub.Recommend(pb.RecommendRequest(user_id="1001", n=5))
    assert not plain.degraded
