"""Acknowledged events per second of the interaction store, by concurrency.

Runs 1, 4 and 16 threads that each call ``track`` in a loop, once with group
commit (the defaults) and once with ``max_batch=1`` (one fsync per event), on
a fresh database file each time, and prints one table::

    python bench/interactions_bench.py [--seconds 3] [--dir /some/disk]

The file goes into a temporary folder under ``--dir``: put it on the disk
whose fsync you want to measure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

from bookverse.server.interactions import Interaction, InteractionStore

THREADS = (1, 4, 16)
MODES = {"group commit": {}, "max_batch=1": {"max_batch": 1, "max_wait_s": 0.0}}


def measure(path: Path, n_threads: int, seconds: float, **store_args: float) -> float:
    """Events acknowledged per second by ``n_threads`` callers over ``seconds``."""
    counts = [0] * n_threads
    stop = threading.Event()

    with InteractionStore(path, **store_args).open() as store:  # type: ignore[arg-type]

        def work(t: int) -> None:
            i = 0
            while not stop.is_set():
                event = Interaction(f"u{t}", f"b{i}", "view", None, 1.7e9 + i)
                store.track(event)
                i += 1
            counts[t] = i

        threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        time.sleep(seconds)
        stop.set()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
    return sum(counts) / elapsed


def fsync_ms(directory: Path, rounds: int = 200) -> float:
    """Median milliseconds of one small write plus ``fsync`` in ``directory``."""
    samples = []
    with open(directory / "fsync.probe", "wb") as probe:
        for _ in range(rounds):
            started = time.perf_counter()
            probe.write(b"x" * 512)
            probe.flush()
            os.fsync(probe.fileno())
            samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()

    rates: dict[tuple[str, int], float] = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        sync = fsync_ms(Path(tmp))
        # each pair of modes runs back to back, so a noisy disk skews both
        for n in THREADS:
            for mode, store_args in MODES.items():
                path = Path(tmp) / f"{mode.replace(' ', '_')}-{n}.db"
                rates[mode, n] = measure(path, n, args.seconds, **store_args)

    print(f"median write+fsync on this disk: {sync:.3f} ms")
    print(f"{'threads':>8} {'group commit':>14} {'max_batch=1':>14} {'ratio':>7}")
    for n in THREADS:
        group, single = rates["group commit", n], rates["max_batch=1", n]
        print(f"{n:>8} {group:>12.0f}/s {single:>12.0f}/s {group / single:>6.1f}x")


if __name__ == "__main__":
    main()
