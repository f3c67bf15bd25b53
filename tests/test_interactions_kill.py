"""An acknowledged event survives a SIGKILL of the process that stored it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

import pytest

from bookverse.server.interactions import InteractionStore

WANTED_ACKS = 1000
READ_FOR_S = 10.0

# tracks events from several threads forever; prints "<event_id> <client id>"
# for each one only after track() has returned
CHILD = """
import sys, threading
from pathlib import Path
from typing import IO
from bookverse.server.interactions import Interaction, InteractionStore

store = InteractionStore(Path(sys.argv[1])).open()
out = threading.Lock()

def work(t):
    i = 0
    while True:
        cid = f"{t}-{i}"
        event = Interaction(f"u{t}", f"b{i}", "view", None, 1.7e9 + i, cid)
        result = store.track(event)
        with out:
            sys.stdout.write(f"{result.event_id} {cid}\\n")
            sys.stdout.flush()
        i += 1

for t in range(4):
    threading.Thread(target=work, args=(t,), daemon=True).start()
threading.Event().wait()
"""


def _read_acks(
    stdout: IO[str], acks: list[tuple[int, str]], done: threading.Event
) -> None:
    """Collect complete lines from the child until it ends or enough arrived."""
    for line in stdout:
        if not line.endswith("\n"):
            break
        event_id, cid = line.split()
        acks.append((int(event_id), cid))
        if len(acks) >= WANTED_ACKS:
            done.set()
    done.set()


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_acknowledged_events_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    acks: list[tuple[int, str]] = []
    done = threading.Event()
    assert child.stdout is not None
    reader = threading.Thread(
        target=_read_acks, args=(child.stdout, acks, done), daemon=True
    )
    try:
        reader.start()
        done.wait(READ_FOR_S)
        assert child.poll() is None, "the writer process ended before the kill"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    reader.join(timeout=10)

    # what the reader thread had seen when the child died is all acknowledged
    seen = list(acks)
    assert child.returncode == -signal.SIGKILL
    assert len(seen) > 0
    with InteractionStore(path).open() as store:
        stored = {e.event_id: e for e in store.iter_all()}
    missing = [(eid, cid) for eid, cid in seen if eid not in stored]
    assert not missing, f"{len(missing)} acknowledged events lost: {missing[:5]}"
    for event_id, cid in seen:
        t, i = cid.split("-")
        assert (stored[event_id].user_id, stored[event_id].book_id) == (
            f"u{t}",
            f"b{i}",
        )
