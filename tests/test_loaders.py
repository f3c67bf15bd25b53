"""Loaders on small hand-made files that carry the real data's mess, and the
fetch's checks on fake wheels (no network)."""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bookverse.models.ids import normalize_book_id
from bookverse.training import fetch, loaders, prepare
from bookverse.training.fetch import DataFetchError, DataFile, WheelSource
from bookverse.training.loaders import DataLoadError

FIXTURES = Path(__file__).parent / "fixtures"
REAL_DATA = Path(__file__).resolve().parents[1] / "data"

HOBBIT = "9780345339683"
BELOVED = normalize_book_id("0452264464")
NO_METADATA = normalize_book_id("0590353403")
STRASSE = normalize_book_id("3499230933")


def isbn(raw: str) -> str:
    return normalize_book_id(raw, "isbn")


def interactions(dataset) -> set[tuple[str, str, float]]:
    """The (reader id, book id, rating) triples of a dataset."""
    return {
        (
            str(dataset.user_ids[u]),
            str(dataset.catalogue.item_ids[i]),
            float(r),
        )
        for u, i, r in zip(dataset.users, dataset.items, dataset.ratings, strict=True)
    }


# -- Book-Crossing -----------------------------------------------------------


@pytest.fixture(scope="module")
def bookcrossing():
    return loaders.load_bookcrossing(FIXTURES / "bookcrossing")


def test_bookcrossing_fixture_is_latin1_with_crlf() -> None:
    raw = (FIXTURES / "bookcrossing" / "BX-Books.csv").read_bytes()
    assert b"\r\n" in raw
    assert "Straße".encode("latin-1") in raw
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")


def test_bookcrossing_interactions(bookcrossing) -> None:
    dataset, _ = bookcrossing
    assert dataset.name == "bookcrossing"
    assert dataset.id_scheme == "isbn"
    assert dataset.rating_scale == (1.0, 10.0)
    assert list(dataset.user_ids) == ["1", "2", "3", "4", "5", "12"]
    # a repeated pair keeps its explicit rating; "0005" is reader 5;
    # the escaped quotes around an ISBN are not part of it
    assert interactions(dataset) == {
        ("1", HOBBIT, 5.0),
        ("2", HOBBIT, 8.0),
        ("3", BELOVED, 10.0),
        ("4", NO_METADATA, 7.0),
        ("5", NO_METADATA, 0.0),
        ("5", STRASSE, 9.0),
        ("12", HOBBIT, 6.0),
    }
    assert not dataset.has_timestamps
    assert dataset.timestamps.dtype == np.int64 and not dataset.timestamps.any()
    assert dataset.users.dtype == np.int32 and dataset.items.dtype == np.int32
    assert dataset.ratings.dtype == np.float32


def test_bookcrossing_report_counts_every_row(bookcrossing) -> None:
    _, report = bookcrossing
    ratings, books, users = "BX-Book-Ratings.csv", "BX-Books.csv", "BX-Users.csv"
    assert report.rows == {ratings: 15, books: 9, users: 9}
    assert dict(report.dropped) == {
        f"{ratings}: malformed line": 1,
        f"{ratings}: line with missing fields": 1,
        f"{ratings}: empty reader id": 1,
        f"{ratings}: empty book id": 1,
        f"{ratings}: rating not a number in 0 or 1..10": 2,
        f"{ratings}: repeated (reader, book) pair": 2,
        f"{books}: malformed line": 1,
        f"{books}: empty book id": 1,
        f"{users}: repeated reader id": 1,
        f"{users}: reader without interactions": 3,
    }
    assert dict(report.flagged) == {
        f"{ratings}: rating of a book without metadata": 2,
        "catalogue: book rated but without a metadata row": 1,
        f"{books}: row merged into an earlier spelling of its id": 1,
        f"{books}: year missing (blank or 0)": 1,
        f"{books}: year not a number, set to 0": 1,
        f"{books}: year outside 1000..this year, set to 0": 2,
        f"{users}: age missing": 2,
        f"{users}: age outside 5..100, set to missing": 2,
        f"{users}: reader with interactions but no row": 1,
    }
    assert (report.n_interactions, report.n_users, report.n_items) == (7, 6, 7)
    # every data row of the ratings file is either kept or counted
    assert (
        report.n_interactions
        + sum(n for reason, n in report.dropped.items() if reason.startswith(ratings))
        == report.rows[ratings]
    )


def test_bookcrossing_catalogue(bookcrossing) -> None:
    dataset, _ = bookcrossing
    catalogue = dataset.catalogue
    row = {str(item): i for i, item in enumerate(catalogue.item_ids)}
    assert set(row) == {
        HOBBIT,
        BELOVED,
        NO_METADATA,
        STRASSE,
        isbn("0679425608"),
        isbn("0060973129"),
        "B00009ANY9",
    }

    # ISBN spellings merged: first row wins, a blank field filled by none later
    hobbit = row[HOBBIT]
    assert catalogue.titles[hobbit] == "The Hobbit"
    assert catalogue.authors[hobbit] == "J. R. R. Tolkien"
    assert catalogue.years[hobbit] == 1986
    assert catalogue.publishers[hobbit] == "Del Rey"

    # escaped quotes, latin-1 text, implausible years
    assert catalogue.titles[row[BELOVED]] == 'Beloved "A Novel"'
    assert catalogue.years[row[BELOVED]] == 0
    assert catalogue.publishers[row[BELOVED]] == "Plume & Co"  # entity decoded
    assert catalogue.titles[row[STRASSE]] == "Die Straße"
    assert catalogue.authors[row[STRASSE]] == "Hans Müller"
    assert catalogue.years[row[isbn("0679425608")]] == 0
    assert catalogue.years.dtype == np.int32

    # a rated book without a metadata row is kept, its metadata empty
    missing = row[NO_METADATA]
    assert catalogue.titles[missing] == catalogue.authors[missing] == ""
    has_metadata = dataset.extras["item_has_metadata"]
    assert [str(i) for i in catalogue.item_ids[~has_metadata]] == [NO_METADATA]
    assert catalogue.genres == [()] * len(catalogue)


def test_bookcrossing_reader_extras(bookcrossing) -> None:
    dataset, _ = bookcrossing
    ages = dataset.extras["user_age"]
    assert ages.dtype == np.float32 and ages.shape == (dataset.n_users,)
    # NULL, 230, 2 and no users row are missing; 18 and 17 are kept
    np.testing.assert_array_equal(ages, [np.nan, 18, np.nan, 17, np.nan, np.nan])
    assert dataset.extras["user_country"] == [
        "usa",
        "usa",
        "germany",
        "portugal",
        "canada",
        "",
    ]


def test_report_summary_lists_reasons(bookcrossing) -> None:
    _, report = bookcrossing
    summary = report.summary()
    assert summary.startswith("bookcrossing: 7 interactions, 6 readers, 7 items")
    assert "BX-Users.csv: age outside 5..100, set to missing: 2" in summary
    assert "dropped: 14" in summary


# -- MovieLens-100k ------------------------------------------------------------


def test_movielens_fixture() -> None:
    dataset, report = loaders.load_movielens100k(FIXTURES / "ml-100k")
    assert dataset.id_scheme == "plain" and dataset.rating_scale == (1.0, 5.0)
    assert list(dataset.user_ids) == ["1", "2", "3"]
    assert list(dataset.catalogue.item_ids) == ["10", "20", "30", "40"]
    # of the repeated pair (2, 10) the latest rating wins
    assert interactions(dataset) == {
        ("1", "10", 4.0),
        ("1", "20", 5.0),
        ("2", "10", 5.0),
        ("3", "40", 1.0),
    }
    assert dataset.has_timestamps
    assert sorted(dataset.timestamps.tolist()) == [
        881250949,
        881250950,
        881250953,
        881250999,
    ]

    catalogue = dataset.catalogue
    assert catalogue.titles == ["Toy Story", '"Quoted" Title', "Café", ""]
    assert catalogue.years.tolist() == [1995, 0, 1895, 0]
    assert catalogue.genres == [
        ("Animation", "Children's", "Comedy"),
        ("Drama",),
        ("Documentary",),
        (),
    ]
    np.testing.assert_array_equal(dataset.extras["user_age"], [24, 53, np.nan])
    assert dataset.extras["user_gender"] == ["M", "F", "M"]
    assert dataset.extras["user_occupation"] == ["technician", "other", "writer"]

    assert report.rows == {"ml-100k.inter": 8, "ml-100k.item": 3, "ml-100k.user": 4}
    assert dict(report.dropped) == {
        "ml-100k.inter: rating not a number in 1..5": 2,
        "ml-100k.inter: bad timestamp": 1,
        "ml-100k.inter: repeated (reader, book) pair": 1,
        "ml-100k.user: reader without interactions": 1,
    }
    assert dict(report.flagged) == {
        "ml-100k.inter: rating of a book without metadata": 1,
        "catalogue: book rated but without a metadata row": 1,
        "ml-100k.item: year not a number, set to 0": 1,
        "ml-100k.user: age outside 5..100, set to missing": 1,
    }


# -- goodbooks ---------------------------------------------------------------


def test_goodbooks_fixture() -> None:
    dataset, report = loaders.load_goodbooks(FIXTURES / "goodbooks")
    assert dataset.id_scheme == "plain" and dataset.rating_scale == (1.0, 5.0)
    assert list(dataset.catalogue.item_ids) == ["1", "2", "3", "4", "5", "6"]
    # of the repeated pair (2, 1), without timestamps, the first row wins
    assert interactions(dataset) == {
        ("1", "1", 5.0),
        ("1", "2", 4.0),
        ("2", "1", 3.0),
        ("3", "4", 2.0),
        ("3", "5", 5.0),
    }
    catalogue = dataset.catalogue
    assert catalogue.titles[0] == "The Hunger Games (The Hunger Games, #1)"
    assert catalogue.authors[1] == "J.K. Rowling, Mary GrandPré"
    assert catalogue.years.tolist() == [2008, 1997, 2005, 0, 0, 0]
    # shelf tags left out, the most used first, tags matched on goodreads ids
    assert catalogue.genres == [
        ("young-adult", "dystopia"),
        ("fantasy", "young-adult"),
        (),
        (),
        (),
        (),
    ]
    assert dataset.extras["item_has_metadata"].tolist() == [1, 1, 1, 1, 0, 1]

    assert dict(report.dropped) == {
        "ratings.csv: line with missing fields": 1,
        "ratings.csv: rating not a number in 1..5": 1,
        "ratings.csv: repeated (reader, book) pair": 1,
        "book_tags.csv: count not a number": 1,
        "book_tags.csv: tag id not in tags.csv": 1,
    }
    assert dict(report.flagged) == {
        "ratings.csv: rating of a book without metadata": 1,
        "catalogue: book rated but without a metadata row": 1,
        "books.csv: year missing (blank or 0)": 1,
        "books.csv: year outside 1000..this year, set to 0": 1,
    }


def test_goodbooks_top_tags_and_no_tags(tmp_path: Path) -> None:
    dataset, _ = loaders.load_goodbooks(FIXTURES / "goodbooks", top_tags=1)
    assert dataset.catalogue.genres[:2] == [("young-adult",), ("fantasy",)]

    for name in ("books.csv", "ratings.csv"):
        shutil.copy(FIXTURES / "goodbooks" / name, tmp_path / name)
    untagged, report = loaders.load_goodbooks(tmp_path)
    assert untagged.catalogue.genres == [()] * untagged.n_items
    assert "tags.csv" not in report.rows


def test_goodbooks_tag_files_come_in_pairs(tmp_path: Path) -> None:
    for name in ("books.csv", "ratings.csv", "book_tags.csv"):
        shutil.copy(FIXTURES / "goodbooks" / name, tmp_path / name)
    with pytest.raises(DataLoadError, match=r"tags\.csv: file is missing"):
        loaders.load_goodbooks(tmp_path)


# -- errors ------------------------------------------------------------------


def copy_fixture(name: str, tmp_path: Path) -> Path:
    folder = tmp_path / name
    shutil.copytree(FIXTURES / name, folder)
    return folder


@pytest.mark.parametrize(
    ("name", "load", "missing"),
    [
        ("bookcrossing", loaders.load_bookcrossing, "BX-Users.csv"),
        ("ml-100k", loaders.load_movielens100k, "ml-100k.item"),
        ("goodbooks", loaders.load_goodbooks, "ratings.csv"),
    ],
)
def test_missing_file_is_named(name, load, missing, tmp_path: Path) -> None:
    folder = copy_fixture(name, tmp_path)
    (folder / missing).unlink()
    with pytest.raises(DataLoadError, match=f"{missing}: file is missing"):
        load(folder)


def test_missing_column_is_named(tmp_path: Path) -> None:
    folder = copy_fixture("bookcrossing", tmp_path)
    path = folder / "BX-Book-Ratings.csv"
    path.write_bytes(path.read_bytes().replace(b'"ISBN"', b'"Book"', 1))
    with pytest.raises(DataLoadError, match=r"BX-Book-Ratings\.csv: missing .*'ISBN'"):
        loaders.load_bookcrossing(folder)


def test_undecodable_file_is_named(tmp_path: Path) -> None:
    folder = copy_fixture("ml-100k", tmp_path)
    path = folder / "ml-100k.item"
    path.write_bytes(path.read_bytes() + b"50\t\xff\xfe broken\t1990\tDrama\n")
    with pytest.raises(DataLoadError, match=r"ml-100k\.item: cannot be parsed"):
        loaders.load_movielens100k(folder)


def test_empty_file_is_named(tmp_path: Path) -> None:
    folder = copy_fixture("goodbooks", tmp_path)
    (folder / "books.csv").write_bytes(b"")
    with pytest.raises(DataLoadError, match=r"books\.csv: cannot be parsed"):
        loaders.load_goodbooks(folder)


def test_file_without_usable_rows_is_named(tmp_path: Path) -> None:
    folder = copy_fixture("ml-100k", tmp_path)
    (folder / "ml-100k.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t10\t9\t1\n"
    )
    with pytest.raises(DataLoadError, match=r"ml-100k\.inter: no usable rows"):
        loaders.load_movielens100k(folder)


# -- fetch (fake wheels, no network) -------------------------------------------


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


FILES = {"a.csv": b"x;y\r\n1;2\r\n", "b.csv": b"\xe9t\xe9\r\n"}


def make_wheel(path: Path, files: dict[str, bytes] = FILES) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("pkg/__init__.py", "")
        for name, data in files.items():
            archive.writestr(f"pkg/data/{name}", data)
    return path


def make_source(wheel: Path, **sums: str) -> WheelSource:
    return WheelSource(
        folder="fake",
        package="fake-data",
        version="1.0",
        wheel_sha256=sha256(wheel.read_bytes()),
        member_dir="pkg/data/",
        files=tuple(
            DataFile(name, sums.get(name.split(".")[0], sha256(data)))
            for name, data in FILES.items()
        ),
    )


def no_download(package: str, version: str, directory: Path) -> None:
    raise AssertionError("nothing should be downloaded")


def test_fetch_extracts_only_the_data_files(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "fake.whl")
    folder = fetch.fetch(make_source(wheel), tmp_path / "data", wheel=wheel)
    assert folder == tmp_path / "data" / "fake"
    assert sorted(p.name for p in folder.iterdir()) == ["a.csv", "b.csv"]
    assert (folder / "b.csv").read_bytes() == FILES["b.csv"]


def test_fetch_downloads_then_skips_when_verified(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "fake_data-1.0-py3-none-any.whl")
    calls = []

    def download(package: str, version: str, directory: Path) -> None:
        calls.append((package, version))
        shutil.copy(wheel, directory / wheel.name)

    source = make_source(wheel)
    folder = fetch.fetch(source, tmp_path / "data", download=download)
    assert calls == [("fake-data", "1.0")]
    assert sorted(p.name for p in folder.iterdir()) == ["a.csv", "b.csv"]
    assert fetch.fetch(source, tmp_path / "data", download=no_download) == folder


def test_fetch_refuses_a_data_file_with_the_wrong_sum(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "fake.whl")
    source = make_source(wheel, b="0" * 64)
    with pytest.raises(DataFetchError) as caught:
        fetch.fetch(source, tmp_path / "data", wheel=wheel)
    message = str(caught.value)
    assert "b.csv" in message and "0" * 64 in message
    assert sha256(FILES["b.csv"]) in message
    # the good file is in place, the bad one and no temporary file are
    assert sorted(p.name for p in (tmp_path / "data" / "fake").iterdir()) == ["a.csv"]


def test_fetch_replaces_a_tampered_file(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "fake.whl")
    source = make_source(wheel)
    folder = fetch.fetch(source, tmp_path / "data", wheel=wheel)
    (folder / "a.csv").write_bytes(b"tampered")
    assert not fetch.is_complete(source, folder)
    fetch.fetch(source, tmp_path / "data", wheel=wheel)
    assert (folder / "a.csv").read_bytes() == FILES["a.csv"]


def test_fetch_refuses_a_wheel_with_the_wrong_sum(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "fake.whl")
    source = make_source(wheel)
    other = make_wheel(tmp_path / "other.whl", {**FILES, "a.csv": b"changed"})
    with pytest.raises(DataFetchError, match=r"other\.whl: sha256 mismatch, expected"):
        fetch.fetch(source, tmp_path / "data", wheel=other)


def test_fetch_names_a_data_file_missing_from_the_wheel(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "fake.whl", {"a.csv": FILES["a.csv"]})
    with pytest.raises(DataFetchError, match=r"pkg/data/b\.csv is missing"):
        fetch.fetch(make_source(wheel), tmp_path / "data", wheel=wheel)


def test_fetch_needs_exactly_one_downloaded_wheel(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "fake.whl")
    with pytest.raises(DataFetchError, match="expected one wheel"):
        fetch.fetch(
            make_source(wheel), tmp_path / "data", download=lambda p, v, d: None
        )


def test_check_sha256_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataFetchError, match=r"nothing\.csv: file is missing"):
        fetch.check_sha256(tmp_path / "nothing.csv", "0" * 64)


def test_pinned_sources_match_the_data_notes() -> None:
    assert [f.name for f in fetch.BOOKCROSSING.files] == [
        "BX-Book-Ratings.csv",
        "BX-Books.csv",
        "BX-Users.csv",
    ]
    assert fetch.MOVIELENS_100K.member_dir == "recbole/dataset_example/ml-100k/"
    for source in (fetch.BOOKCROSSING, fetch.MOVIELENS_100K):
        sums = [source.wheel_sha256, *(f.sha256 for f in source.files)]
        assert all(len(s) == 64 and int(s, 16) >= 0 for s in sums)


# -- the real data, when it has been fetched -------------------------------------


@pytest.mark.slow
def test_real_bookcrossing_when_fetched() -> None:
    folder = REAL_DATA / "bookcrossing"
    if not fetch.is_complete(fetch.BOOKCROSSING, folder):
        pytest.skip("Book-Crossing not fetched (bookverse-train fetch)")
    dataset, report = loaders.load_bookcrossing(folder)
    assert report.rows == {
        "BX-Book-Ratings.csv": 1_149_780,
        "BX-Books.csv": 271_379,
        "BX-Users.csv": 278_858,
    }
    assert dataset.n_users == 105_283
    prepared = prepare.prepare(dataset)
    assert 570_000 < prepared.n_interactions < 600_000
    assert 15_000 < prepared.n_users < 16_500
    assert 36_000 < prepared.n_items < 40_000


@pytest.mark.slow
def test_real_movielens_when_fetched() -> None:
    folder = REAL_DATA / "ml-100k"
    if not fetch.is_complete(fetch.MOVIELENS_100K, folder):
        pytest.skip("MovieLens-100k not fetched (bookverse-train fetch)")
    dataset, report = loaders.load_movielens100k(folder)
    assert (dataset.n_interactions, dataset.n_users, dataset.n_items) == (
        100_000,
        943,
        1_682,
    )
    assert not report.dropped
