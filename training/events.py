"""Tracked interactions from the server's events file, merged into a data set.

The server's TrackInteraction writes events to an SQLite file whose schema is
the one ``bookverse.server.interactions.InteractionStore`` creates
(``PRAGMA user_version`` 1)::

    interactions(event_id INTEGER PRIMARY KEY, user_id TEXT, book_id TEXT,
                 kind TEXT, rating REAL, event_time REAL, received_time REAL,
                 client_event_id TEXT)

with ``kind`` one of the tracked kinds (``INTERACTION_KINDS`` but
``"static"``), ``rating`` set for ``"rating"`` events only, times in Unix
seconds and ids already canonical. Training reads that file here, read-only
and without importing the server (training never depends on it), so the
schema is restated above and checked by its version number.

``merge_events`` appends the events to a ``Dataset`` as extra interactions:
readers through ``user_ids`` (a reader unknown to the data set becomes a new
reader at the end), books through the catalogue's ids or the edition ->
work aliases of ``extras["work_aliases"]`` (an unknown book's events are
counted and skipped), the kind in ``Dataset.kinds`` (the data set's own rows
get code 0, ``"static"``, where it had no kinds), ``event_time`` as the
timestamp and the rating of ``"rating"`` events as the rating (0, implicit,
for the other kinds; ratings are taken on the data set's scale as they are).
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from bookverse.models.dataset import INTERACTION_KINDS, Dataset

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
"""``PRAGMA user_version`` of the events file this module understands."""

WORK_ALIASES_KEY = "work_aliases"
"""``Dataset.extras`` key of the edition id -> work id map (see training.works)."""

_SELECT = """
    SELECT user_id, book_id, kind, rating, event_time
    FROM interactions
    ORDER BY event_id
"""
_KIND_CODES = {name: code for code, name in enumerate(INTERACTION_KINDS)}
_FETCH = 10_000


@dataclass(frozen=True)
class Events:
    """Events as read from the file, one entry per event, in ``event_id`` order.

    ``user_ids`` and ``book_ids`` are (n_events,) str, ``kinds`` (n_events,)
    int8 codes into ``INTERACTION_KINDS``, ``ratings`` (n_events,) float32
    (0 unless the kind is ``"rating"``), ``times`` (n_events,) int64 Unix
    seconds.
    """

    user_ids: np.ndarray
    book_ids: np.ndarray
    kinds: np.ndarray
    ratings: np.ndarray
    times: np.ndarray

    def __len__(self) -> int:
        return len(self.user_ids)


@dataclass(frozen=True)
class MergeReport:
    """What ``merge_events`` did with the events of one file."""

    n_events: int
    n_merged: int
    n_unknown_books: int
    n_new_readers: int


def read_events(events_db: Path) -> Events:
    """Every event of the server's events file, read in one snapshot.

    The file is opened read-only (``mode=ro``): training never writes to it,
    and a running server may go on writing meanwhile.

    Parameters
    ----------
    events_db : Path
        The SQLite file of ``bookverse.server.interactions.InteractionStore``.

    Returns
    -------
    Events

    Raises
    ------
    ValueError
        If the file cannot be opened or read, its ``PRAGMA user_version`` is
        not ``SCHEMA_VERSION``, or an event has a kind this module does not
        know; the message names the file.
    """
    path = Path(events_db)
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise ValueError(f"events_db {path}: cannot open read-only ({exc})") from exc
    try:
        rows = _read_rows(conn, path)
    except sqlite3.Error as exc:
        raise ValueError(f"events_db {path}: cannot read ({exc})") from exc
    finally:
        conn.close()
    return _events(rows, path)


def _read_rows(conn: sqlite3.Connection, path: Path) -> list[tuple]:
    """All event rows, after checking the schema version, in one transaction.

    Raises
    ------
    ValueError
        If ``PRAGMA user_version`` is not ``SCHEMA_VERSION``.
    sqlite3.Error
        If the query fails.
    """
    conn.execute("BEGIN")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version != SCHEMA_VERSION:
        raise ValueError(
            f"events_db {path}: PRAGMA user_version must be {SCHEMA_VERSION} "
            f"(the schema of bookverse.server.interactions), got {version}"
        )
    cursor = conn.execute(_SELECT)
    rows: list[tuple] = []
    while batch := cursor.fetchmany(_FETCH):
        rows.extend(batch)
    conn.execute("COMMIT")
    return rows


def _events(rows: list[tuple], path: Path) -> Events:
    """Rows ``(user_id, book_id, kind, rating, event_time)`` as arrays.

    Raises
    ------
    ValueError
        If a kind is not one of ``INTERACTION_KINDS`` but ``"static"``.
    """
    kinds = [row[2] for row in rows]
    unknown = sorted({k for k in kinds if k not in _KIND_CODES or k == "static"})
    if unknown:
        raise ValueError(
            f"events_db {path}: kind must be one of {INTERACTION_KINDS[1:]}, "
            f"got {unknown[:5]!r}"
        )
    return Events(
        user_ids=np.array([row[0] for row in rows], dtype=str),
        book_ids=np.array([row[1] for row in rows], dtype=str),
        kinds=np.array([_KIND_CODES[k] for k in kinds], dtype=np.int8),
        ratings=np.array([row[3] or 0.0 for row in rows], dtype=np.float32),
        times=np.array([row[4] for row in rows], dtype=np.float64).astype(np.int64),
    )


def merge_events(dataset: Dataset, events_db: Path) -> Dataset:
    """``dataset`` with the tracked events of ``events_db`` appended.

    See ``merge_events_with_report``; the counts are logged (at WARNING when
    events of unknown books were skipped).

    Raises
    ------
    ValueError
        See ``read_events``.
    """
    merged, _ = merge_events_with_report(dataset, events_db)
    return merged


def merge_events_with_report(
    dataset: Dataset, events_db: Path
) -> tuple[Dataset, MergeReport]:
    """``dataset`` with the tracked events appended, and what was merged.

    Parameters
    ----------
    dataset : Dataset
        The static data set, (n_interactions,) rows over (n_users,) readers.
    events_db : Path
        The server's events file (schema in the module docstring).

    Returns
    -------
    merged : Dataset
        (n_interactions + n_merged,) rows: the data set's rows first, then the
        events of known books in ``event_id`` order; (n_users +
        n_new_readers,) readers, the new ones after the old in order of
        their first event; ``kinds`` set for every row. ``user_`` extras are
        padded for the new readers (NaN for numbers, "" for text).
    report : MergeReport

    Raises
    ------
    ValueError
        See ``read_events``; also if ``dataset.kinds`` is not one code per
        interaction.
    """
    events = read_events(events_db)

    # books: catalogue ids first, then edition -> work aliases
    book_index = _book_index(dataset)
    items = np.array([book_index.get(b, -1) for b in events.book_ids.tolist()])
    known = items >= 0
    events_kept = Events(*(a[known] for a in _fields(events)))

    # readers: known ones by index, new ones appended in order of first event
    user_index = {u: i for i, u in enumerate(dataset.user_ids.tolist())}
    new_ids: list[str] = []
    users = np.empty(len(events_kept), dtype=np.int32)
    for row, user in enumerate(events_kept.user_ids.tolist()):
        if user not in user_index:
            user_index[user] = dataset.n_users + len(new_ids)
            new_ids.append(user)
        users[row] = user_index[user]

    merged = _appended(dataset, events_kept, users, items[known], new_ids)
    report = MergeReport(
        len(events), len(events_kept), int((~known).sum()), len(new_ids)
    )
    _log(report, events_db)
    return merged, report


def _fields(events: Events) -> tuple[np.ndarray, ...]:
    return (
        events.user_ids,
        events.book_ids,
        events.kinds,
        events.ratings,
        events.times,
    )


def _book_index(dataset: Dataset) -> dict[str, int]:
    """Book id -> item index, edition ids of a work included."""
    index = {b: i for i, b in enumerate(dataset.catalogue.item_ids.tolist())}
    aliases = dataset.extras.get(WORK_ALIASES_KEY)
    if isinstance(aliases, dict):
        for edition, work in aliases.items():
            if work in index and edition not in index:
                index[edition] = index[work]
    return index


def _appended(
    dataset: Dataset,
    events: Events,
    users: np.ndarray,
    items: np.ndarray,
    new_ids: list[str],
) -> Dataset:
    """The data set's rows followed by ``events`` (users, items as indices)."""
    if dataset.kinds is None:
        static_kinds = np.zeros(dataset.n_interactions, dtype=np.int8)
    elif np.shape(dataset.kinds) != (dataset.n_interactions,):
        raise ValueError(
            f"dataset.kinds must have shape ({dataset.n_interactions},), "
            f"got {np.shape(dataset.kinds)}"
        )
    else:
        static_kinds = np.asarray(dataset.kinds, dtype=np.int8)
    user_ids = np.concatenate([dataset.user_ids, np.array(new_ids, dtype=str)])
    return replace(
        dataset,
        user_ids=user_ids,
        users=np.concatenate([dataset.users, users]).astype(np.int32),
        items=np.concatenate([dataset.items, items]).astype(np.int32),
        ratings=np.concatenate([dataset.ratings, events.ratings]).astype(np.float32),
        timestamps=np.concatenate([dataset.timestamps, events.times]).astype(np.int64),
        kinds=np.concatenate([static_kinds, events.kinds]),
        extras=_padded_extras(dataset.extras, len(new_ids)),
    )


def _padded_extras(extras: dict[str, object], n_new: int) -> dict[str, object]:
    """``user_`` extras grown by ``n_new`` readers: NaN for float arrays, 0 for
    other arrays, "" in lists; other extras as they are."""
    padded: dict[str, object] = {}
    for key, value in extras.items():
        if not key.startswith("user_") or n_new == 0:
            padded[key] = value
        elif isinstance(value, np.ndarray):
            fill = np.nan if value.dtype.kind == "f" else 0
            padded[key] = np.concatenate(
                [value, np.full(n_new, fill, dtype=value.dtype)]
            )
        elif isinstance(value, list):
            padded[key] = [*value, *([""] * n_new)]
        else:
            padded[key] = value
    return padded


def _log(report: MergeReport, events_db: Path) -> None:
    """Log the counts of one merge; WARNING when events were skipped."""
    level = logging.WARNING if report.n_unknown_books else logging.INFO
    logger.log(
        level,
        "events of %s: %s read, %s merged, %s skipped for a book unknown to the "
        "data set, %s new readers",
        events_db,
        report.n_events,
        report.n_merged,
        report.n_unknown_books,
        report.n_new_readers,
    )
