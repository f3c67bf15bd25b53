"""SIGTERM: new calls refused, calls in flight finish, health says so, exit 0.

``bookverse-serve``'s ``main`` runs in a child process (``subprocess``, never
a fork of a process that has started gRPC) through a small launcher that
holds Recommend calls of readers named ``slow-*`` at a gate: each prints
``entered`` and waits until the test creates the gate file. So "in flight
when SIGTERM arrives" is a fact the test arranges, not a race it hopes for.
"""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import fit_models, publish_bundle, synthetic_dataset
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bookverse.recommendations.v1 import recommendations_pb2 as pb
from bookverse.recommendations.v1 import recommendations_pb2_grpc as pb_grpc
from bookverse.server.app import SERVICE_NAME

SLOW_CALLS = 6
WAIT_S = 30.0

LAUNCHER = """
import sys, time
from pathlib import Path
from bookverse.server import app, recommender

gate = Path(sys.argv[1])
original = recommender.Recommender.recommend

def held(self, bundle, query, *args, **kwargs):
    if query.user_id.startswith("slow-"):
        sys.stderr.write("entered\\n")
        sys.stderr.flush()
        stop = time.monotonic() + 60
        while not gate.exists() and time.monotonic() < stop:
            time.sleep(0.01)
    return original(self, bundle, query, *args, **kwargs)

recommender.Recommender.recommend = held
sys.exit(app.main(sys.argv[2:]))
"""

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dataset = synthetic_dataset(n_books=80, n_readers=100, seed=31)
    root = tmp_path_factory.mktemp("shutdown-artifacts")
    publish_bundle(root, dataset, fit_models(dataset))
    return root


@pytest.fixture()
def serve(
    artifacts: Path, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[str], queue.Queue[str], Path]]:
    gate = tmp_path / "gate"
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            LAUNCHER,
            str(gate),
            "--artifacts",
            str(artifacts),
            "--events-db",
            str(tmp_path / "events.db"),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--shutdown-grace-s",
            "30",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert process.stderr is not None
    threading.Thread(
        target=lambda: [lines.put(line) for line in process.stderr],  # type: ignore[union-attr]
        daemon=True,
    ).start()
    try:
        yield process, lines, gate
    finally:
        gate.touch()
        if process.poll() is None:
            process.kill()
        process.wait(timeout=WAIT_S)


def wait_for(lines: queue.Queue[str], pattern: str) -> re.Match[str]:
    """The first line (of those still unread) that matches ``pattern``."""
    while True:
        line = lines.get(timeout=WAIT_S)
        found = re.search(pattern, line)
        if found:
            return found


def test_sigterm_lets_calls_in_flight_finish_and_refuses_new_ones(
    serve: tuple[subprocess.Popen[str], queue.Queue[str], Path],
) -> None:
    process, lines, gate = serve
    port = wait_for(lines, r"serving on 127\.0\.0\.1:(\d+)").group(1)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = pb_grpc.RecommendationServiceStub(channel)

    # a health watcher, opened while serving
    statuses: queue.Queue[int] = queue.Queue()
    watch = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=2 * WAIT_S
    )
    threading.Thread(
        target=lambda: [statuses.put(r.status) for r in _until_cancelled(watch)],
        daemon=True,
    ).start()
    assert statuses.get(timeout=WAIT_S) == SERVING

    # calls held in flight at the gate
    held = [
        stub.Recommend.future(
            pb.RecommendRequest(user_id=f"slow-{i}", n=5), timeout=2 * WAIT_S
        )
        for i in range(SLOW_CALLS)
    ]
    entered = 0
    while entered < SLOW_CALLS:
        entered += lines.get(timeout=WAIT_S).count("entered")

    process.send_signal(signal.SIGTERM)
    assert statuses.get(timeout=WAIT_S) == NOT_SERVING
    assert not any(call.done() for call in held)

    # NOT_SERVING seen: a new call is refused, not queued
    with pytest.raises(grpc.RpcError) as refused:
        stub.Recommend(pb.RecommendRequest(user_id="late", n=5), timeout=WAIT_S)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    watch.cancel()

    # the held calls are let go and all finish OK within the grace
    gate.touch()
    for call in held:
        answer = call.result(timeout=WAIT_S)
        assert answer.model_version and 0 < len(answer.items) <= 5
    assert process.wait(timeout=WAIT_S) == 0
    channel.close()


def _until_cancelled(
    watch: Iterator[health_pb2.HealthCheckResponse],
) -> Iterator[health_pb2.HealthCheckResponse]:
    try:
        yield from watch
    except grpc.RpcError:
        return
