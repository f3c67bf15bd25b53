"""Tests of the interaction store on real SQLite files."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bookverse.server.interactions import (
    SCHEMA_VERSION,
    Interaction,
    InteractionStore,
    InteractionStoreError,
    TrackResult,
    _Pending,
    _with_busy_retry,
)

T0 = 1_700_000_000.0


def view(user: str, book: str, t: float, cid: str | None = None) -> Interaction:
    return Interaction(user, book, "view", None, t, cid)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[InteractionStore]:
    with InteractionStore(tmp_path / "events.db").open() as s:
        yield s


def _write_events(path: str, worker: int, n: int) -> None:
    """Child process body: track ``n`` events of reader ``worker``."""
    with InteractionStore(Path(path)).open() as s:
        for i in range(n):
            s.track(view(f"u{worker}", f"b{i}", T0 + i, f"{worker}-{i}"), timeout=60)


def test_round_trip(store: InteractionStore) -> None:
    event = Interaction("42", "9780345339683", "rating", 8.0, T0, "c-1")

    result = store.track(event)

    assert not result.duplicate
    (stored,) = store.recent("42")
    assert stored.event_id == result.event_id
    assert (stored.user_id, stored.book_id, stored.kind) == (
        "42",
        "9780345339683",
        "rating",
    )
    assert stored.rating == 8.0
    assert stored.event_time == T0
    assert stored.received_time == result.received_time
    assert store.count() == 1
    assert list(store.iter_all()) == [stored]


def test_pragmas_and_schema_version(store: InteractionStore) -> None:
    conn = sqlite3.connect(store.path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        conn.close()
    assert store._writer_conn is not None
    # 2 is FULL
    assert store._writer_conn.execute("PRAGMA synchronous").fetchone()[0] == 2


@pytest.mark.parametrize(
    ("event", "field"),
    [
        (Interaction("", "b", "view", None, T0), "user_id"),
        (Interaction("u", "", "view", None, T0), "book_id"),
        (Interaction("u", "b", "like", None, T0), "kind"),
        (Interaction("u", "b", "rating", None, T0), "rating"),
        (Interaction("u", "b", "view", 3.0, T0), "rating"),
        (Interaction("u", "b", "view", None, float("nan")), "event_time"),
        (Interaction("u", "b", "view", None, T0, ""), "client_event_id"),
    ],
)
def test_invalid_event_names_the_field(
    store: InteractionStore, event: Interaction, field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        store.track(event)
    assert store.count() == 0


def test_duplicate_by_client_id(store: InteractionStore) -> None:
    first = store.track(view("u", "b1", T0, "same"))
    again = store.track(view("u", "b1", T0, "same"))

    assert again == TrackResult(first.event_id, True, first.received_time)
    assert store.count() == 1


def test_a_client_id_reused_for_another_event_is_a_conflict(
    store: InteractionStore,
) -> None:
    first = store.track(view("u", "b1", T0, "same"))
    for other in (
        view("u", "b2", T0, "same"),  # another book
        view("v", "b1", T0, "same"),  # another reader
    ):
        answer = store.track(other)
        assert answer == TrackResult(
            first.event_id, True, first.received_time, conflict=True
        )
    assert store.count() == 1

    # a retry whose unset time became a later "now" is a plain duplicate
    retry = store.track(view("u", "b1", T0 + 5, "same"))
    assert retry == TrackResult(first.event_id, True, first.received_time)


def test_duplicate_by_natural_key(store: InteractionStore) -> None:
    first = store.track(view("u", "b", T0))
    again = store.track(view("u", "b", T0, "late-key"))
    other_kind = store.track(Interaction("u", "b", "click", None, T0))

    assert again == TrackResult(first.event_id, True, first.received_time)
    assert not other_kind.duplicate
    assert store.count() == 2


def test_duplicates_within_one_batch(tmp_path: Path) -> None:
    events = [view("u", "b", T0, f"k{i % 2}") for i in range(8)]
    events += [view("u", f"c{i}", T0, "shared") for i in range(8)]

    # concurrent duplicates, in whatever batches they land
    with InteractionStore(tmp_path / "e.db").open() as s:
        with ThreadPoolExecutor(len(events)) as pool:
            results = list(pool.map(s.track, events))
        assert s.count() == 2

    originals = [r for r in results if not r.duplicate]
    assert len(originals) == 2
    ids = {r.event_id for r in originals}
    assert {r.event_id for r in results} == ids
    for r in results:
        match = next(o for o in originals if o.event_id == r.event_id)
        assert r.received_time == match.received_time


def test_duplicates_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    with InteractionStore(path).open() as s:
        by_key = s.track(view("u", "b", T0))
        by_cid = s.track(view("u", "b2", T0, "cid"))

    with InteractionStore(path).open() as s:
        assert s.track(view("u", "b", T0)) == TrackResult(
            by_key.event_id, True, by_key.received_time
        )
        assert s.track(view("u", "b2", T0, "cid")) == TrackResult(
            by_cid.event_id, True, by_cid.received_time
        )
        assert s.count() == 2


def test_many_threads_all_acknowledged_and_present(store: InteractionStore) -> None:
    n_threads, per_thread = 8, 200
    results: dict[str, TrackResult] = {}
    lock = threading.Lock()

    def work(t: int) -> None:
        for i in range(per_thread):
            cid = f"{t}-{i}"
            result = store.track(view(f"u{t}", f"b{i}", T0 + i, cid), timeout=60)
            with lock:
                results[cid] = result

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(results) == n_threads * per_thread
    assert not any(r.duplicate for r in results.values())
    stored = {e.event_id for e in store.iter_all()}
    assert stored == {r.event_id for r in results.values()}


def test_processes_write_one_file(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_write_events, args=(str(path), w, 300)) for w in range(3)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
    assert [proc.exitcode for proc in procs] == [0, 0, 0]

    with InteractionStore(path).open() as s:
        assert s.count() == 900
        for w in range(3):
            books = {e.book_id for e in s.recent(f"u{w}", limit=1000)}
            assert books == {f"b{i}" for i in range(300)}


def test_recent_order_and_limit(store: InteractionStore) -> None:
    # received out of order; two events share one time
    for t, book in [(5, "e"), (1, "a"), (3, "c"), (3, "c2"), (2, "b")]:
        store.track(view("u", book, T0 + t))
    store.track(view("other", "x", T0 + 9))

    assert [e.book_id for e in store.recent("u")] == ["e", "c2", "c", "b", "a"]
    assert [e.book_id for e in store.recent("u", limit=2)] == ["e", "c2"]
    assert store.recent("nobody") == []
    with pytest.raises(ValueError, match="limit"):
        store.recent("u", limit=0)


def test_recent_uses_the_index(store: InteractionStore) -> None:
    conn = sqlite3.connect(store.path)
    try:
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT event_id FROM interactions "
            "WHERE user_id = ? ORDER BY event_time DESC, event_id DESC LIMIT 5",
            ("u",),
        ).fetchall()
    finally:
        conn.close()
    details = " ".join(str(row[-1]) for row in plan)
    assert "interactions_user_time" in details
    assert "TEMP B-TREE" not in details


def test_closed_store_refuses(tmp_path: Path) -> None:
    s = InteractionStore(tmp_path / "e.db")
    with pytest.raises(InteractionStoreError, match="not open"):
        s.track(view("u", "b", T0))
    s.open()
    s.close()
    with pytest.raises(InteractionStoreError, match="closed"):
        s.track(view("u", "b", T0))
    with pytest.raises(InteractionStoreError, match="closed"):
        s.count()
    with pytest.raises(InteractionStoreError, match="opened once"):
        s.open()


def test_constructor_stores_only(tmp_path: Path) -> None:
    path = tmp_path / "never.db"
    s = InteractionStore(path, max_batch=0)
    assert not path.exists()
    with pytest.raises(ValueError, match="max_batch"):
        s.open()


def test_reopened_store_sees_everything(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    with InteractionStore(path).open() as s:
        written = [s.track(view("u", f"b{i}", T0 + i)) for i in range(50)]

    with InteractionStore(path).open() as s:
        assert [e.event_id for e in s.iter_all()] == [r.event_id for r in written]
        assert s.recent("u", limit=1)[0].book_id == "b49"
        later = s.track(view("u", "new", T0 + 100))
    assert later.event_id > written[-1].event_id


def test_iter_all_pages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("bookverse.server.interactions._ITER_PAGE", 3)
    with InteractionStore(tmp_path / "e.db").open() as s:
        for i in range(10):
            s.track(view("u", f"b{i}", T0 + i))
        assert [e.book_id for e in s.iter_all()] == [f"b{i}" for i in range(10)]


class _PoisonedStore(InteractionStore):
    """Binds an invalid value, or raises a database error, for marked books."""

    def _insert_params(self, pending: _Pending) -> tuple[object, ...]:
        params = super()._insert_params(pending)
        if pending.event.book_id == "poison":
            return (*params[:2], "not-a-kind", *params[3:])
        if pending.event.book_id == "io-error":
            raise sqlite3.OperationalError("disk I/O error (simulated)")
        return params


def _track_concurrently(
    s: InteractionStore, events: list[Interaction]
) -> list[TrackResult | BaseException]:
    with ThreadPoolExecutor(len(events)) as pool:
        futures = [pool.submit(s.track, e, 30) for e in events]
        return [f.exception() or f.result() for f in futures]


def test_invalid_value_fails_only_its_caller(tmp_path: Path) -> None:
    events = [view("u", f"b{i}", T0) for i in range(6)] + [view("u", "poison", T0)]

    with _PoisonedStore(tmp_path / "e.db", max_wait_s=0.3).open() as s:
        outcomes = _track_concurrently(s, events)

        assert isinstance(outcomes[-1], InteractionStoreError)
        assert "CHECK" in str(outcomes[-1])
        assert all(isinstance(o, TrackResult) for o in outcomes[:-1])
        assert s.count() == 6
        assert not s.track(view("u", "after", T0)).duplicate


def test_database_error_fails_its_batch_and_store_recovers(tmp_path: Path) -> None:
    events = [view("u", f"b{i}", T0) for i in range(5)] + [view("u", "io-error", T0)]

    with _PoisonedStore(tmp_path / "e.db", max_wait_s=0.3).open() as s:
        outcomes = _track_concurrently(s, events)

        failed = [o for o in outcomes if isinstance(o, BaseException)]
        assert failed
        assert all(isinstance(o, InteractionStoreError) for o in failed)
        assert isinstance(outcomes[-1], InteractionStoreError)
        assert "disk I/O error" in str(outcomes[-1])
        # nothing acknowledged is missing; the failed ones are not stored
        acknowledged = {o.event_id for o in outcomes if isinstance(o, TrackResult)}
        assert {e.event_id for e in s.iter_all()} == acknowledged

        # the writer lives on, and a retry of a failed event now succeeds
        assert not s.track(view("u", "b0", T0 + 1)).duplicate
        for event, outcome in zip(events[:-1], outcomes, strict=False):
            if isinstance(outcome, InteractionStoreError):
                assert not s.track(event).duplicate


def test_closed_connection_loses_nothing(tmp_path: Path) -> None:
    with InteractionStore(tmp_path / "e.db", max_wait_s=0.3).open() as s:
        s.track(view("u", "first", T0))
        assert s._writer_conn is not None
        s._writer_conn.close()

        events = [view("u", f"b{i}", T0) for i in range(6)]
        outcomes = _track_concurrently(s, events)

        acknowledged = {o.event_id for o in outcomes if isinstance(o, TrackResult)}
        assert len(acknowledged) == len(events)
        assert s.count() == 7
        assert acknowledged <= {e.event_id for e in s.iter_all()}


class _GatedStore(InteractionStore):
    """Holds the writer inside a batch until ``gate`` is set."""

    gate = threading.Event()

    def _insert_params(self, pending: _Pending) -> tuple[object, ...]:
        self.gate.wait(timeout=30)
        return super()._insert_params(pending)


def test_close_flushes_queued_events(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    s = _GatedStore(path, max_batch=1).open()
    s.gate = threading.Event()
    with ThreadPoolExecutor(10) as pool:
        futures = [pool.submit(s.track, view("u", f"b{i}", T0)) for i in range(10)]

        # the writer holds the first event; wait until the other nine are queued
        deadline = time.monotonic() + 30
        while s._queue.qsize() < 9 and time.monotonic() < deadline:
            time.sleep(0.01)
        closer = threading.Thread(target=s.close)
        closer.start()
        s.gate.set()
        closer.join(timeout=30)
        results = [f.result(timeout=30) for f in futures]
    s.close()  # idempotent

    with InteractionStore(path).open() as again:
        assert again.count() == 10
        stored = {e.event_id for e in again.iter_all()}
    assert stored == {r.event_id for r in results}


def test_timeout_raises_store_error(tmp_path: Path) -> None:
    with _GatedStore(tmp_path / "e.db").open() as s:
        s.gate = threading.Event()
        with pytest.raises(InteractionStoreError, match="timeout"):
            s.track(view("u", "b", T0), timeout=0.05)

        # the commit still happens later: a retry is answered as a duplicate
        s.gate.set()
        assert s.track(view("u", "b", T0), timeout=30).duplicate


def test_duplicates_inside_one_transaction(store: InteractionStore) -> None:
    # hand one batch straight to the writer's commit step, so all five events
    # share one transaction whatever the thread timing
    events = [
        view("u", "b", T0, "k"),
        view("u", "b", T0, "k"),
        view("u", "b", T0),
        view("u", "other", T0 + 1, "k"),
        view("u", "b2", T0),
    ]
    batch = [_Pending(e, received_time=T0 + 10 + i) for i, e in enumerate(events)]
    store._commit(batch)
    results = [p.future.result(timeout=0) for p in batch]

    first = results[0]
    assert not first.duplicate and first.received_time == T0 + 10
    for dup in results[1:3]:
        assert dup == TrackResult(first.event_id, True, T0 + 10)
    # the key "k" again, for another book: refused as a misused key
    assert results[3] == TrackResult(first.event_id, True, T0 + 10, conflict=True)
    assert not results[4].duplicate
    assert store.count() == 2


def _busy_for(n_calls: int) -> tuple[list[int], Callable[[], str]]:
    """An action that answers SQLITE_BUSY ``n_calls`` times, then "ok"."""
    calls: list[int] = []

    def action() -> str:
        calls.append(1)
        if len(calls) <= n_calls:
            error = sqlite3.OperationalError("database is locked")
            error.sqlite_errorcode = sqlite3.SQLITE_BUSY  # type: ignore[attr-defined]
            raise error
        return "ok"

    return calls, action


def test_busy_is_retried() -> None:
    calls, action = _busy_for(2)
    assert _with_busy_retry(action, "test") == "ok"
    assert len(calls) == 3


def test_busy_retries_are_bounded() -> None:
    calls, action = _busy_for(10_000)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        _with_busy_retry(action, "test")
    assert 1 < len(calls) < 100
