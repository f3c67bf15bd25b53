"""The durable store behind TrackInteraction: embedded SQLite in WAL mode.

Every server process opens one :class:`InteractionStore` on the same file.
Many gRPC threads call :meth:`InteractionStore.track` at once; one writer
thread per store drains their events and commits up to ``max_batch`` of them
in a single transaction (group commit), so one ``fsync`` acknowledges a whole
batch. :meth:`~InteractionStore.track` returns only after that commit.

Durability. The database runs with ``journal_mode=WAL`` and
``synchronous=FULL``. In WAL mode ``NORMAL`` does not sync the log on commit,
only at checkpoints: a commit then survives a crash of the process but may be
lost to a power cut or kernel panic. ``FULL`` syncs the log at every commit,
so an acknowledged event survives both. Group commit is what keeps ``FULL``
affordable.

Several processes. Writers on other connections or processes are waited for
with ``busy_timeout``; the writer takes its write lock up front with
``BEGIN IMMEDIATE`` (so a transaction never has to upgrade a read lock, which
WAL cannot wait for), and a bounded retry with backoff covers the few cases
where SQLite answers ``SQLITE_BUSY`` without calling the busy handler.
Readers use their own connection per thread, opened lazily and
``query_only``; in WAL mode they read a snapshot and never wait for a writer.

Duplicates. ``client_event_id`` (when given) is unique, and so is
``(user_id, book_id, kind, event_time)``. An event that collides with either
is not stored again; :meth:`~InteractionStore.track` answers
``duplicate=True`` with the event id and received time of the stored
original (a retry may differ in its time: an unset time is "now" at each
try). A second event with a known ``client_event_id`` but another reader,
book or kind is not stored either: it is answered as a
``conflict`` (the server refuses it as a misused key), never silently as the
other event's duplicate.

Schema (``PRAGMA user_version`` 1)::

    interactions(event_id INTEGER PRIMARY KEY, user_id, book_id, kind,
                 rating, event_time, received_time, client_event_id)

with the two unique indexes above and ``(user_id, event_time)`` for
:meth:`~InteractionStore.recent`. Times are Unix seconds (``REAL``).
"""

from __future__ import annotations

import logging
import math
import os
import queue
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

logger = logging.getLogger(__name__)

EVENT_KINDS: tuple[str, ...] = (
    "view",
    "add_to_list",
    "purchase",
    "rating",
    "click",
    "finished",
)

SCHEMA_VERSION = 1

# bounded retries for SQLITE_BUSY that the busy handler does not absorb
_BUSY_RETRIES = 6
_BUSY_BACKOFF_S = 0.005
_BUSY_BACKOFF_MAX_S = 0.25

# rows per query in iter_all, so no read transaction stays open for long
_ITER_PAGE = 5000

_SCHEMA = (
    f"""
    CREATE TABLE IF NOT EXISTS interactions (
        event_id INTEGER PRIMARY KEY,
        user_id TEXT NOT NULL CHECK (user_id <> ''),
        book_id TEXT NOT NULL CHECK (book_id <> ''),
        kind TEXT NOT NULL CHECK (kind IN {EVENT_KINDS!r}),
        rating REAL CHECK ((rating IS NOT NULL) = (kind = 'rating')),
        event_time REAL NOT NULL,
        received_time REAL NOT NULL,
        client_event_id TEXT
    )
    """,
    """
    CREATE UNIQUE INDEX IF NOT EXISTS interactions_client_event_id
        ON interactions (client_event_id) WHERE client_event_id IS NOT NULL
    """,
    """
    CREATE UNIQUE INDEX IF NOT EXISTS interactions_natural_key
        ON interactions (user_id, book_id, kind, event_time)
    """,
    """
    CREATE INDEX IF NOT EXISTS interactions_user_time
        ON interactions (user_id, event_time)
    """,
)

_INSERT = """
    INSERT INTO interactions
        (user_id, book_id, kind, rating, event_time, received_time,
         client_event_id)
    VALUES (?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT DO NOTHING
"""
_BY_CLIENT_ID = """
    SELECT event_id, received_time, user_id, book_id, kind
    FROM interactions WHERE client_event_id = ?
"""
_BY_NATURAL_KEY = """
    SELECT event_id, received_time FROM interactions
    WHERE user_id = ? AND book_id = ? AND kind = ? AND event_time = ?
"""
_COLUMNS = "event_id, user_id, book_id, kind, rating, event_time, received_time"
_RECENT = f"""
    SELECT {_COLUMNS} FROM interactions
    WHERE user_id = ?
    ORDER BY event_time DESC, event_id DESC
    LIMIT ?
"""
_PAGE = f"""
    SELECT {_COLUMNS} FROM interactions
    WHERE event_id > ?
    ORDER BY event_id
    LIMIT ?
"""

# failures that may come from one event of a batch, or from a connection that
# a fresh one replaces; a batch failing with one of these is retried one by one
_PER_EVENT_ERRORS = (
    sqlite3.IntegrityError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    sqlite3.DataError,
)

_T = TypeVar("_T")


class InteractionStoreError(RuntimeError):
    """The store cannot take or confirm an event: closed, failing, or too slow.

    The event of a failed :meth:`InteractionStore.track` may or may not be
    stored; a retry with the same event is safe, as duplicates are stored once.
    """


@dataclass(frozen=True)
class Interaction:
    """One event as the server receives it (ids already canonical)."""

    user_id: str
    book_id: str
    kind: str
    rating: float | None
    event_time: float
    client_event_id: str | None = None


@dataclass(frozen=True)
class TrackResult:
    """The answer to :meth:`InteractionStore.track`, given once durable.

    ``conflict`` is True when the event reused a ``client_event_id`` already
    stored for a different event (another reader, book or kind): it was not
    stored, and ``event_id`` names the event that holds the key.
    """

    event_id: int
    duplicate: bool
    received_time: float
    conflict: bool = False


@dataclass(frozen=True)
class StoredInteraction:
    """One stored event, as readers get it back."""

    event_id: int
    user_id: str
    book_id: str
    kind: str
    rating: float | None
    event_time: float
    received_time: float


@dataclass
class _Pending:
    """An event waiting for the writer, and where to send its answer."""

    event: Interaction
    received_time: float
    future: Future[TrackResult] = field(default_factory=Future)


_STOP = object()


def _short(value: object, limit: int = 64) -> str:
    """``repr`` of a value received from outside, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validate_interaction(event: Interaction) -> None:
    """Check the rules the store relies on.

    Parameters
    ----------
    event : Interaction
        The event to check.

    Raises
    ------
    ValueError
        If a field breaks its rule; the message names the field, the rule and
        the value received.
    """
    for name in ("user_id", "book_id"):
        value = getattr(event, name)
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty string, got {_short(value)}")
    if event.kind not in EVENT_KINDS:
        raise ValueError(f"kind must be one of {EVENT_KINDS}, got {_short(event.kind)}")
    if event.kind == "rating":
        if event.rating is None or not math.isfinite(event.rating):
            raise ValueError(
                f"rating must be a finite number when kind is 'rating', "
                f"got {_short(event.rating)}"
            )
    elif event.rating is not None:
        raise ValueError(
            f"rating must be None unless kind is 'rating' (kind {event.kind!r}), "
            f"got {_short(event.rating)}"
        )
    if not math.isfinite(event.event_time) or event.event_time <= 0:
        raise ValueError(
            f"event_time must be finite Unix seconds after the epoch, "
            f"got {_short(event.event_time)}"
        )
    cid = event.client_event_id
    if cid is not None and (not isinstance(cid, str) or not cid):
        raise ValueError(
            f"client_event_id must be None or a non-empty string, got {_short(cid)}"
        )


def _is_busy(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite's SQLITE_BUSY (any extended code)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF == sqlite3.SQLITE_BUSY


def _with_busy_retry(action: Callable[[], _T], what: str) -> _T:
    """Run ``action``, retrying a bounded number of times on SQLITE_BUSY.

    Raises
    ------
    sqlite3.Error
        The last error, if the database stays busy or fails otherwise.
    """
    delay = _BUSY_BACKOFF_S
    for attempt in range(1, _BUSY_RETRIES):
        try:
            return action()
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
            logger.warning("%s: database busy, retry %s: %s", what, attempt, exc)

        # jittered exponential backoff, so competing processes spread out
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, _BUSY_BACKOFF_MAX_S)
    return action()


def _rollback_quietly(conn: sqlite3.Connection) -> None:
    """Roll back an open transaction, ignoring a connection already broken."""
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.Error:
        logger.debug("rollback failed", exc_info=True)


def _close_quietly(conn: sqlite3.Connection) -> None:
    """Close ``conn``, ignoring errors of a connection already broken."""
    try:
        conn.close()
    except sqlite3.Error:
        logger.debug("close failed", exc_info=True)


def _sync_directory(directory: Path) -> None:
    """Flush ``directory``'s entries, so a new database file survives power loss.

    Raises
    ------
    OSError
        If the directory cannot be opened or synced.
    """
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _stored(row: tuple) -> StoredInteraction:
    """A result row of ``_COLUMNS`` as a :class:`StoredInteraction`."""
    return StoredInteraction(*row)


class InteractionStore:
    """Durable, deduplicating store of interaction events in one SQLite file.

    Parameters
    ----------
    path : Path
        The database file; created with its schema by :meth:`open`.
    max_batch : int
        Most events committed in one transaction.
    max_wait_s : float
        Longest the writer waits for more events after the first of a batch;
        it waits only while the batch is smaller than the previous one.
        ``0`` commits whatever is queued at once.
    busy_timeout_s : float
        How long one SQLite call waits for another connection's lock.

    Notes
    -----
    The constructor only stores its arguments; :meth:`open` creates the
    schema and starts the writer thread, :meth:`close` flushes and stops it.
    Use it as ``store = InteractionStore(path).open()``.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_batch: int = 256,
        max_wait_s: float = 0.002,
        busy_timeout_s: float = 10.0,
    ) -> None:
        self.path = path
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.busy_timeout_s = busy_timeout_s
        self._queue: queue.SimpleQueue[_Pending | object] = queue.SimpleQueue()
        self._state_lock = threading.Lock()
        self._state = "new"
        self._writer: threading.Thread | None = None
        self._writer_conn: sqlite3.Connection | None = None
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._last_batch_size = 1

    # lifecycle

    def open(self) -> InteractionStore:
        """Create the schema if needed and start the writer thread.

        Returns
        -------
        InteractionStore
            ``self``, so that ``InteractionStore(path).open()`` reads as one step.

        Raises
        ------
        ValueError
            If a constructor argument breaks its rule.
        InteractionStoreError
            If the store was opened before, the database cannot be opened, is
            not in WAL mode, or has a newer schema than this code knows.
        """
        self._check_arguments()
        with self._state_lock:
            if self._state != "new":
                raise InteractionStoreError(
                    f"store {self.path} can be opened once; it is {self._state}"
                )
            try:
                self._writer_conn = self._connect_writer()
                _sync_directory(self.path.parent)
            except (sqlite3.Error, OSError) as exc:
                raise InteractionStoreError(
                    f"cannot open interaction store {self.path}: {exc}"
                ) from exc
            self._writer = threading.Thread(
                target=self._run_writer, name="interactions-writer", daemon=True
            )
            self._writer.start()
            self._state = "open"
        logger.info(
            "interaction store open: %s (max_batch=%s, max_wait_s=%s)",
            self.path,
            self.max_batch,
            self.max_wait_s,
        )
        return self

    def close(self) -> None:
        """Commit every event already queued, stop the writer, close connections.

        Idempotent. Readers must not be in flight while the store closes.
        """
        with self._state_lock:
            if self._state != "open":
                self._state = "closed"
                return
            self._state = "closed"
            self._queue.put(_STOP)
        if self._writer is not None:
            self._writer.join()
        with self._state_lock:
            readers, self._readers = self._readers, []
        for conn in readers:
            _close_quietly(conn)
        logger.info("interaction store closed: %s", self.path)

    def __enter__(self) -> InteractionStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # writing

    def track(self, event: Interaction, timeout: float | None = None) -> TrackResult:
        """Store ``event`` and return once it is durable on disk.

        Parameters
        ----------
        event : Interaction
            The event; its ids must already be canonical.
        timeout : float or None
            Most seconds to wait for the commit; ``None`` waits as long as it
            takes.

        Returns
        -------
        TrackResult
            The stored event's id and received time; for a duplicate, those of
            the original event and ``duplicate=True``.

        Raises
        ------
        ValueError
            If a field of ``event`` breaks its rule (see
            :func:`validate_interaction`).
        InteractionStoreError
            If the store is not open, the commit failed, or ``timeout`` passed
            first. After a timeout the event may still be stored later; a retry
            is answered as a duplicate.
        """
        validate_interaction(event)
        pending = _Pending(event, received_time=time.time())
        with self._state_lock:
            if self._state != "open":
                raise InteractionStoreError(
                    f"interaction store {self.path} is {self._state}, not open"
                )
            self._queue.put(pending)
        try:
            return pending.future.result(timeout)
        except FutureTimeoutError:
            raise InteractionStoreError(
                f"event not confirmed durable within timeout={timeout} s; "
                f"it may still be stored"
            ) from None

    def _insert_params(self, pending: _Pending) -> tuple[object, ...]:
        """Parameters of the INSERT for one event (a hook for tests)."""
        e = pending.event
        return (
            e.user_id,
            e.book_id,
            e.kind,
            e.rating,
            e.event_time,
            pending.received_time,
            e.client_event_id,
        )

    # reading

    def recent(self, user_id: str, limit: int = 200) -> list[StoredInteraction]:
        """A reader's latest events, newest ``event_time`` first.

        Parameters
        ----------
        user_id : str
            Canonical reader id.
        limit : int
            Most events returned; at least 1.

        Returns
        -------
        list of StoredInteraction
            At most ``limit`` events; ties in ``event_time`` newest id first.

        Raises
        ------
        ValueError
            If ``limit`` is below 1.
        InteractionStoreError
            If the store is not open or the database cannot be read.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit!r}")
        rows = self._read(_RECENT, (user_id, limit))
        return [_stored(row) for row in rows]

    def count(self) -> int:
        """Number of stored events.

        Raises
        ------
        InteractionStoreError
            If the store is not open or the database cannot be read.
        """
        rows = self._read("SELECT COUNT(*) FROM interactions", ())
        return int(rows[0][0])

    def iter_all(self) -> Iterator[StoredInteraction]:
        """Every stored event in ``event_id`` order, read page by page.

        Each page is its own short read, so a long training read does not hold
        back checkpoints; events committed meanwhile with higher ids are
        included.

        Raises
        ------
        InteractionStoreError
            If the store is not open or the database cannot be read.
        """
        last_id = 0
        while True:
            rows = self._read(_PAGE, (last_id, _ITER_PAGE))
            for row in rows:
                yield _stored(row)
            if len(rows) < _ITER_PAGE:
                return
            last_id = rows[-1][0]

    def _read(self, sql: str, params: tuple[object, ...]) -> list[tuple]:
        """Rows of one query on this thread's read-only connection.

        Raises
        ------
        InteractionStoreError
            If the store is not open or the query fails.
        """
        if self._state != "open":
            raise InteractionStoreError(
                f"interaction store {self.path} is {self._state}, not open"
            )
        try:
            conn = self._reader()
            return _with_busy_retry(
                lambda: conn.execute(sql, params).fetchall(), "read"
            )
        except sqlite3.Error as exc:
            raise InteractionStoreError(
                f"cannot read interaction store {self.path}: {exc}"
            ) from exc

    def _reader(self) -> sqlite3.Connection:
        """This thread's read-only connection, opened on first use."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute("PRAGMA query_only = ON")
            self._local.conn = conn
            with self._state_lock:
                self._readers.append(conn)
        return conn

    def _check_arguments(self) -> None:
        """Validate the constructor's arguments.

        Raises
        ------
        ValueError
            If one breaks its rule; the message names it.
        """
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {self.max_batch!r}")
        if not self.max_wait_s >= 0:
            raise ValueError(f"max_wait_s must be >= 0, got {self.max_wait_s!r}")
        if not self.busy_timeout_s >= 0:
            raise ValueError(
                f"busy_timeout_s must be >= 0, got {self.busy_timeout_s!r}"
            )

    def _connect_writer(self) -> sqlite3.Connection:
        """Open the writer connection, set its pragmas, create the schema.

        Raises
        ------
        sqlite3.Error
            If the database cannot be opened or migrated.
        InteractionStoreError
            If WAL mode is refused or the schema is newer than this code.
        """
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout_s,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            mode = _with_busy_retry(
                lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone()[0],
                "journal_mode",
            )
            if str(mode).lower() != "wal":
                raise InteractionStoreError(
                    f"journal_mode must be 'wal' for {self.path}, SQLite kept {mode!r}"
                )
            conn.execute("PRAGMA synchronous = FULL")
            _with_busy_retry(lambda: self._create_schema(conn), "schema")
        except BaseException:
            _close_quietly(conn)
            raise
        return conn

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        """Create or check the schema in one write transaction.

        Raises
        ------
        InteractionStoreError
            If the file's ``user_version`` is newer than :data:`SCHEMA_VERSION`.
        """
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise InteractionStoreError(
                    f"user_version of {self.path} must be <= {SCHEMA_VERSION}, "
                    f"got {version}"
                )
            if version < SCHEMA_VERSION:
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            _rollback_quietly(conn)
            raise

    # the writer thread

    def _run_writer(self) -> None:
        """Take batches off the queue and commit them until told to stop."""
        stopping = False
        while not stopping:
            batch, stopping = self._next_batch()
            if batch:
                try:
                    self._commit(batch)
                except Exception as exc:  # the writer must outlive any batch
                    logger.exception("interaction writer: unexpected failure")
                    self._fail(batch, exc)
        if self._writer_conn is not None:
            _close_quietly(self._writer_conn)
            self._writer_conn = None

    def _next_batch(self) -> tuple[list[_Pending], bool]:
        """Block for one event, take what is queued, and maybe wait for more.

        The writer waits (at most ``max_wait_s``) only while the batch is
        smaller than the previous one: that many callers were active a moment
        ago and are likely to be back. A lone caller thus never waits, and
        a crowd fills its batch without the full delay; callers that arrive
        during a commit join the next batch in any case.

        Returns
        -------
        batch : list of _Pending
            At most ``max_batch`` events, possibly empty when stopping.
        stopping : bool
            Whether the stop mark was reached; everything queued before it is
            in ``batch`` or in an earlier batch.
        """
        batch: list[_Pending] = []
        item = self._queue.get()
        deadline = time.monotonic() + self.max_wait_s
        expected = min(self._last_batch_size, self.max_batch)
        while True:
            if item is _STOP:
                return batch, True
            assert isinstance(item, _Pending)
            batch.append(item)
            if len(batch) >= self.max_batch:
                break
            remaining = deadline - time.monotonic()
            try:
                if len(batch) < expected and remaining > 0:
                    item = self._queue.get(timeout=remaining)
                else:
                    item = self._queue.get_nowait()
            except queue.Empty:
                break
        self._last_batch_size = len(batch)
        return batch, False

    def _commit(self, batch: list[_Pending], *, split: bool = True) -> None:
        """Commit ``batch`` and answer its callers; isolate a failing event.

        The connection of a failed batch is replaced. A batch that failed on
        its data or a broken connection (``_PER_EVENT_ERRORS``) is retried
        once, event by event (``split``): one bad event then fails only its
        own caller, and a closed connection fails no one. Retrying is safe, as
        an event already stored is found as a duplicate of itself. Any other
        failure (busy past every retry, I/O, full disk) concerns the database,
        not an event, and fails the whole batch.
        """
        started = time.perf_counter()
        try:
            results = self._write_with_retry(batch)
        except Exception as exc:
            self._reset_writer_conn()
            if not split or not isinstance(exc, _PER_EVENT_ERRORS):
                logger.warning(
                    "interaction write of %s events failed: %s", len(batch), exc
                )
                self._fail(batch, exc)
                return
            logger.warning(
                "interaction batch of %s failed (%s); retrying one by one",
                len(batch),
                exc,
            )
            for pending in batch:
                self._commit([pending], split=False)
            return

        for pending, result in zip(batch, results, strict=True):
            pending.future.set_result(result)
        logger.debug(
            "committed %s interactions in %.2f ms",
            len(batch),
            (time.perf_counter() - started) * 1e3,
        )

    def _write_with_retry(self, batch: list[_Pending]) -> list[TrackResult]:
        """Write ``batch`` in one transaction, retrying while busy.

        Raises
        ------
        sqlite3.Error
            If the write fails, or the database stays busy.
        InteractionStoreError
            If a conflicting event cannot be found again.
        """
        if self._writer_conn is None:
            self._writer_conn = self._connect_writer()
        conn = self._writer_conn
        return _with_busy_retry(lambda: self._write(conn, batch), "write")

    def _write(
        self, conn: sqlite3.Connection, batch: list[_Pending]
    ) -> list[TrackResult]:
        """Insert ``batch`` in one ``BEGIN IMMEDIATE`` transaction and commit.

        Raises
        ------
        sqlite3.Error
            If a statement or the commit fails; the transaction is rolled back.
        InteractionStoreError
            If a conflicting event cannot be found again.
        """
        conn.execute("BEGIN IMMEDIATE")
        try:
            results = [self._insert(conn, pending) for pending in batch]
            conn.execute("COMMIT")
        except BaseException:
            _rollback_quietly(conn)
            raise
        return results

    def _insert(self, conn: sqlite3.Connection, pending: _Pending) -> TrackResult:
        """Insert one event, or find the stored event it duplicates."""
        cursor = conn.execute(_INSERT, self._insert_params(pending))
        if cursor.rowcount == 1 and cursor.lastrowid is not None:
            return TrackResult(cursor.lastrowid, False, pending.received_time)

        # a duplicate: answer with the original, by client id first
        e = pending.event
        row = None
        if e.client_event_id is not None:
            row = conn.execute(_BY_CLIENT_ID, (e.client_event_id,)).fetchone()
            # a retry may carry a later "now" as its time: only who, what and
            # which kind must match
            if row is not None and tuple(row[2:5]) != (e.user_id, e.book_id, e.kind):
                return TrackResult(int(row[0]), True, float(row[1]), conflict=True)
        if row is None:
            key = (e.user_id, e.book_id, e.kind, e.event_time)
            row = conn.execute(_BY_NATURAL_KEY, key).fetchone()
        if row is None:
            raise InteractionStoreError(
                f"event of user_id={_short(e.user_id)} was refused as a duplicate "
                f"but no original was found"
            )
        return TrackResult(int(row[0]), True, float(row[1]))

    def _reset_writer_conn(self) -> None:
        """Drop the writer connection; the next batch opens a fresh one."""
        if self._writer_conn is not None:
            _rollback_quietly(self._writer_conn)
            _close_quietly(self._writer_conn)
            self._writer_conn = None

    @staticmethod
    def _fail(batch: list[_Pending], exc: BaseException) -> None:
        """Answer every caller of ``batch`` with an :class:`InteractionStoreError`."""
        for pending in batch:
            # one exception object per caller: each raise extends its traceback
            error = InteractionStoreError(f"interaction not stored: {exc}")
            error.__cause__ = exc
            if not pending.future.done():
                pending.future.set_exception(error)
