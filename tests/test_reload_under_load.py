"""Hot reloads under steady load drop no call and never mix two versions.

One model set is fitted on the real data slice; it is published again and
again as new versions, each with its own book ids: the books past the first
:data:`COMMON_BOOKS` rows are renamed per version. A call that mixed two
bundles would answer with ids of another version than the one it names, so
"every id of an answer is in the catalogue of its ``model_version``" is the
observable form of "one bundle from start to finish".

Client threads call Recommend and Explain without pause while the versions
are published one after another (each one is waited for until it serves);
a health watcher polls all along. Bounded: :data:`VERSIONS` publishes, each
waited for at most :data:`SWAP_WITHIN_S` seconds.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from conftest import Published, isbn13, publish_bundle, server_config
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bookverse.models.base import Model
from bookverse.models.dataset import Dataset
from bookverse.recommendations.v1 import recommendations_pb2 as pb
from bookverse.recommendations.v1 import recommendations_pb2_grpc as pb_grpc
from bookverse.server.app import SERVICE_NAME, create_server

VERSIONS = 8
COMMON_BOOKS = 20
RECOMMEND_CLIENTS = 3
SWAP_WITHIN_S = 60.0
TIMEOUT = 30.0


def renamed(dataset: Dataset, generation: int) -> Dataset:
    """``dataset`` with every book past the common ones under a new id."""
    ids = np.asarray(dataset.catalogue.item_ids).astype(object)
    for row in range(COMMON_BOOKS, len(ids)):
        ids[row] = isbn13(10_000_000 * (generation + 1) + row)
    catalogue = replace(dataset.catalogue, item_ids=ids.astype(str))
    return replace(dataset, catalogue=catalogue)


class Load:
    """Client threads that call without pause and keep what they saw."""

    def __init__(self, stub: Any, health: Any, readers: list[str], book: str) -> None:
        self.stub, self.health = stub, health
        self.readers, self.book = readers, book
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.answers: list[tuple[str, list[str], list[float], list[float]]] = []
        self.explained: list[tuple[str, str]] = []
        self.failures: list[str] = []
        self.health_seen: Counter[int] = Counter()

    def recommend(self, number: int) -> None:
        i = 0
        while not self.stop.is_set():
            reader = self.readers[(number + i) % len(self.readers)]
            i += 1
            answer = self._call(
                self.stub.Recommend, pb.RecommendRequest(user_id=reader, n=10)
            )
            if answer is not None:
                with self.lock:
                    self.answers.append(
                        (
                            answer.model_version,
                            [item.book_id for item in answer.items],
                            [item.score for item in answer.items],
                            [item.confidence for item in answer.items],
                        )
                    )

    def explain(self) -> None:
        i = 0
        while not self.stop.is_set():
            reader = self.readers[i % len(self.readers)]
            i += 1
            request = pb.ExplainRequest(user_id=reader, book_id=self.book)
            answer = self._call(self.stub.Explain, request)
            if answer is not None:
                with self.lock:
                    self.explained.append((answer.model_version, answer.book_id))

    def watch_health(self) -> None:
        request = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
        while not self.stop.wait(0.05):
            answer = self._call(self.health.Check, request)
            if answer is not None:
                with self.lock:
                    self.health_seen[answer.status] += 1

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=TIMEOUT)
        except grpc.RpcError as error:
            with self.lock:
                self.failures.append(f"{error.code().name}: {error.details()}")
            return None


@pytest.mark.slow
def test_reloads_under_load_drop_no_call_and_never_mix_versions(
    published: Published, fitted_models: dict[str, Model], tmp_path: Path
) -> None:
    dataset = published.data.dataset
    root = tmp_path / "artifacts"
    catalogues: dict[str, set[str]] = {}
    first = publish_bundle(root, renamed(dataset, 0), fitted_models)
    catalogues[first] = set(renamed(dataset, 0).catalogue.item_ids.tolist())

    config = server_config(root, tmp_path / "events.db", metrics_port=None)
    server, port, runtime = create_server(config)
    server.start()
    runtime.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    counts = np.bincount(dataset.users, minlength=dataset.n_users)
    readers = [str(u) for u in dataset.user_ids[np.argsort(-counts)[:20]]]
    readers += ["reload-new-reader-1", "reload-new-reader-2"]
    load = Load(
        pb_grpc.RecommendationServiceStub(channel),
        health_pb2_grpc.HealthStub(channel),
        readers,
        str(dataset.catalogue.item_ids[0]),
    )
    threads = [
        threading.Thread(target=load.recommend, args=(n,), daemon=True)
        for n in range(RECOMMEND_CLIENTS)
    ]
    threads += [
        threading.Thread(target=load.explain, daemon=True),
        threading.Thread(target=load.watch_health, daemon=True),
    ]
    try:
        assert runtime.wait_until_serving(timeout=SWAP_WITHIN_S)
        for thread in threads:
            thread.start()

        for generation in range(1, VERSIONS + 1):
            edition = renamed(dataset, generation)
            version = publish_bundle(root, edition, fitted_models)
            catalogues[version] = set(edition.catalogue.item_ids.tolist())
            assert _wait_until(lambda v=version: runtime.models.current().version == v)
            with load.lock:
                wanted = len(load.answers) + 5
            _wait_until(lambda w=wanted: len(load.answers) >= w or bool(load.failures))
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(timeout=TIMEOUT + 5)
        channel.close()
        runtime.stop(grace=1.0)

    assert load.failures == []
    assert set(load.health_seen) == {health_pb2.HealthCheckResponse.SERVING}
    reloads = runtime.metrics.model_reloads.labels(result="success")._value.get()
    assert reloads == VERSIONS + 1

    versions_seen = Counter(version for version, *_ in load.answers)
    assert set(versions_seen) <= set(catalogues)
    assert len(versions_seen) >= VERSIONS // 2, versions_seen
    for version, ids, scores, confidences in load.answers:
        assert ids and set(ids) <= catalogues[version], "an answer mixed versions"
        assert len(set(ids)) == len(ids)
        assert all(math.isfinite(s) for s in scores)
        assert all(0.0 <= c <= 1.0 for c in confidences)
    assert load.explained
    for version, book in load.explained:
        assert version in catalogues and book in catalogues[version]


def _wait_until(condition: Callable[[], bool]) -> bool:
    """Poll ``condition`` for up to :data:`SWAP_WITHIN_S` seconds."""
    for _ in range(int(SWAP_WITHIN_S / 0.05)):
        if condition():
            return True
        time.sleep(0.05)
    return False
