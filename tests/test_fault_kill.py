"""An event the server acknowledged survives a SIGKILL of the server.

``bookverse-serve`` runs as a child process on 127.0.0.1 with a free port.
Client threads send TrackInteraction calls without pause, each with its own
client event id, and keep every acknowledgement. Mid-stream the server is
killed with SIGKILL (no shutdown code runs). Every acknowledged event must
then be in the events database, once; and a server restarted on the same
database answers a retry of an acknowledged event as a duplicate.

Bounded: the kill comes after :data:`WANTED_ACKS` acknowledgements or
:data:`SEND_FOR_S` seconds, whichever is first.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from conftest import fit_models, publish_bundle, synthetic_dataset

from bookverse.recommendations.v1 import recommendations_pb2 as pb
from bookverse.recommendations.v1 import recommendations_pb2_grpc as pb_grpc
from bookverse.server.interactions import InteractionStore

WANTED_ACKS = 3000
SEND_FOR_S = 15.0
CLIENTS = 4
BASE_TIME = 1_700_000_000
START_S = 60.0


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dataset = synthetic_dataset(n_books=80, n_readers=100, seed=41)
    root = tmp_path_factory.mktemp("kill-artifacts")
    publish_bundle(root, dataset, fit_models(dataset))
    return root


@contextmanager
def serve(
    artifacts: Path, events_db: Path
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``bookverse-serve`` on 127.0.0.1, port 0; yields it and its address."""
    command = Path(sys.executable).with_name("bookverse-serve")
    process = subprocess.Popen(
        [
            str(command),
            "--artifacts",
            str(artifacts),
            "--events-db",
            str(events_db),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--worker-threads",
            "8",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        started = time.monotonic()
        for line in process.stderr:
            found = re.search(r"serving on (127\.0\.0\.1:\d+)", line)
            if found:
                break
            assert time.monotonic() - started < START_S, "server did not start"
        else:
            raise AssertionError("server ended before serving")
        # keep draining stderr so the child never blocks on a full pipe
        threading.Thread(target=process.stderr.read, daemon=True).start()
        yield process, found.group(1)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def track_request(client: int, i: int, book: str) -> pb.TrackInteractionRequest:
    request = pb.TrackInteractionRequest(
        user_id=f"killed-{client}",
        book_id=book,
        type=pb.INTERACTION_TYPE_VIEW,
        client_event_id=f"{client}-{i}",
    )
    request.event_time.seconds = BASE_TIME + i
    return request


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_acknowledged_events_survive_a_kill_of_the_server(
    artifacts: Path, tmp_path: Path
) -> None:
    events_db = tmp_path / "events.db"
    book = "9780001000001"
    acks: dict[int, tuple[int, int]] = {}  # event id -> (client, i)
    lock = threading.Lock()
    stop = threading.Event()
    enough = threading.Event()

    def client(number: int, stub: pb_grpc.RecommendationServiceStub) -> None:
        i = 0
        while not stop.is_set():
            try:
                answer = stub.TrackInteraction(
                    track_request(number, i, book), timeout=10
                )
            except grpc.RpcError:
                return  # the server is gone
            with lock:
                acks[answer.event_id] = (number, i)
                if len(acks) >= WANTED_ACKS:
                    enough.set()
            i += 1

    with serve(artifacts, events_db) as (process, address):
        channel = grpc.insecure_channel(address)
        stub = pb_grpc.RecommendationServiceStub(channel)
        threads = [
            threading.Thread(target=client, args=(n, stub), daemon=True)
            for n in range(CLIENTS)
        ]
        for thread in threads:
            thread.start()
        enough.wait(SEND_FOR_S)
        assert process.poll() is None, "the server ended before the kill"
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        channel.close()
    assert process.returncode == -signal.SIGKILL

    # everything acknowledged before the kill is on disk, once
    with lock:
        acknowledged = dict(acks)
    assert len(acknowledged) >= 100, "too few calls went through to test"
    with InteractionStore(events_db).open() as store:
        stored = {e.event_id: e for e in store.iter_all()}
    missing = sorted(set(acknowledged) - set(stored))
    assert not missing, f"{len(missing)} acknowledged events lost"
    for event_id, (number, i) in acknowledged.items():
        event = stored[event_id]
        assert event.user_id == f"killed-{number}"
        assert event.event_time == BASE_TIME + i
    keys = [(e.user_id, e.event_time) for e in stored.values()]
    assert len(keys) == len(set(keys)), "an event was stored twice"

    # restarted on the same database: a retry is answered as a duplicate
    with serve(artifacts, events_db) as (_, address):
        channel = grpc.insecure_channel(address)
        stub = pb_grpc.RecommendationServiceStub(channel)
        for event_id, (number, i) in list(acknowledged.items())[:20]:
            retry = stub.TrackInteraction(track_request(number, i, book), timeout=10)
            assert retry.duplicate and retry.event_id == event_id
        channel.close()
