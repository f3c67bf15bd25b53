"""Tracked events from a real events file, merged into a data set."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bookverse.models.dataset import INTERACTION_KINDS, Catalogue, Dataset
from bookverse.models.popularity import Popularity
from bookverse.server.interactions import Interaction, InteractionStore
from bookverse.training.events import (
    merge_events,
    merge_events_with_report,
    read_events,
)

T0 = 1_700_000_000.0


def code(kind: str) -> int:
    return INTERACTION_KINDS.index(kind)


def static_dataset() -> Dataset:
    """Two readers, three books, no timestamps, a user_ extra per reader."""
    catalogue = Catalogue(
        item_ids=np.array(["b0", "b1", "b2"]),
        titles=["A", "B", "C"],
        authors=["", "", ""],
        years=np.zeros(3, dtype=np.int32),
        publishers=["", "", ""],
        genres=[(), (), ()],
    )
    return Dataset(
        name="static",
        user_ids=np.array(["u0", "u1"]),
        catalogue=catalogue,
        users=np.array([0, 1, 1], dtype=np.int32),
        items=np.array([0, 0, 1], dtype=np.int32),
        ratings=np.array([8.0, 0.0, 6.0], dtype=np.float32),
        timestamps=np.zeros(3, dtype=np.int64),
        rating_scale=(1.0, 10.0),
        id_scheme="plain",
        extras={
            "user_age": np.array([30.0, 40.0], dtype=np.float32),
            "user_location": ["x", "y"],
            "work_aliases": {"b2-paperback": "b2"},
        },
    )


EVENTS = [
    Interaction("u1", "b2", "view", None, T0),
    Interaction("new-a", "b1", "purchase", None, T0 + 10),
    Interaction("u0", "nope", "click", None, T0 + 20),
    Interaction("new-b", "b2-paperback", "rating", 9.0, T0 + 30),
    Interaction("new-a", "b0", "finished", None, T0 + 40.7),
    Interaction("new-c", "nope-either", "view", None, T0 + 50),
]


@pytest.fixture
def events_db(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "events.db"
    store = InteractionStore(path).open()
    try:
        for event in EVENTS:
            store.track(event)
    finally:
        store.close()
    yield path


def test_merge_maps_ids_and_counts(events_db: Path) -> None:
    data = static_dataset()
    merged, report = merge_events_with_report(data, events_db)

    assert (report.n_events, report.n_merged) == (6, 4)
    assert (report.n_unknown_books, report.n_new_readers) == (2, 2)
    # known readers keep their index; new ones follow in order of first event
    assert merged.user_ids.tolist() == ["u0", "u1", "new-a", "new-b"]
    assert merged.users.tolist() == [0, 1, 1, 1, 2, 3, 2]
    # the alias of a work's edition resolves to the work
    assert merged.items.tolist() == [0, 0, 1, 2, 1, 2, 0]
    assert merged.kinds is not None
    assert merged.kinds.tolist() == [0, 0, 0] + [
        code(k) for k in ("view", "purchase", "rating", "finished")
    ]
    np.testing.assert_array_equal(merged.ratings, [8, 0, 6, 0, 0, 9, 0])
    times = [int(T0 + offset) for offset in (0, 10, 30, 40)]
    assert merged.timestamps.tolist() == [0, 0, 0, *times]

    # user_ extras padded for new readers; others untouched
    age = merged.extras["user_age"]
    assert isinstance(age, np.ndarray)
    np.testing.assert_array_equal(age, [30.0, 40.0, np.nan, np.nan])
    assert merged.extras["user_location"] == ["x", "y", "", ""]
    assert merged.catalogue is data.catalogue


def test_merged_kinds_drive_trending(events_db: Path) -> None:
    merged = merge_events(static_dataset(), events_db)
    model = Popularity(half_life_days=1.0).fit(merged)
    # the static rows carry no time; the dated events alone trend
    assert model.trending_source_ == "timestamps"
    assert model.trending_ is not None

    # newest event T0 + 40 (stored as whole seconds); ages in days
    def decayed(seconds: float) -> float:
        return float(0.5 ** (seconds / 86_400))

    expected = [
        1.5 * decayed(0),  # finished
        2.0 * decayed(30),  # purchase
        0.5 * decayed(40) + 1.0 * decayed(10),  # view, rating
    ]
    np.testing.assert_allclose(model.trending_, np.log1p(expected), rtol=1e-6)


def test_existing_kinds_are_kept(events_db: Path) -> None:
    data = static_dataset()
    typed = Dataset(
        **{**data.__dict__, "kinds": np.array([code("view")] * 3, dtype=np.int8)}
    )
    merged = merge_events(typed, events_db)
    assert merged.kinds is not None
    assert merged.kinds[:3].tolist() == [code("view")] * 3


def test_unknown_books_are_logged_as_a_warning(
    events_db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO", logger="bookverse.training.events"):
        merge_events(static_dataset(), events_db)
    assert "2 skipped for a book unknown" in caplog.text
    assert caplog.records[-1].levelname == "WARNING"


def test_reading_leaves_the_file_as_it_was(events_db: Path) -> None:
    before = events_db.read_bytes()
    events = read_events(events_db)
    assert len(events) == len(EVENTS)
    assert events_db.read_bytes() == before


def test_reads_while_the_server_store_is_open(tmp_path: Path) -> None:
    path = tmp_path / "live.db"
    with InteractionStore(path).open() as store:
        store.track(EVENTS[0])
        assert len(read_events(path)) == 1
        store.track(EVENTS[1])
        assert len(read_events(path)) == 2


def test_a_file_of_another_schema_version_is_named(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 2")
    with pytest.raises(ValueError, match=r"other\.db: PRAGMA user_version must be 1"):
        read_events(path)


def test_a_missing_file_is_named_and_not_created(tmp_path: Path) -> None:
    path = tmp_path / "absent.db"
    with pytest.raises(ValueError, match=r"absent\.db: cannot open read-only"):
        read_events(path)
    assert not path.exists()


def test_training_does_not_import_the_server() -> None:
    source = Path(__file__).parents[1] / "training" / "events.py"
    assert "bookverse.server" not in source.read_text().replace(
        "bookverse.server.interactions", ""
    )
