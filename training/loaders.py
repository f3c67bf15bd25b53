"""Loaders: the files of a data set in, a ``Dataset`` and a ``LoadReport`` out.

Three layouts are read:

- Book-Crossing (``load_bookcrossing``): ``BX-Book-Ratings.csv``,
  ``BX-Books.csv`` and ``BX-Users.csv``; ``;``-separated, every field quoted,
  latin-1, backslash-escaped quotes. Rating 0 is an implicit interaction,
  1-10 an explicit rating.
- MovieLens-100k in RecBole's atomic files (``load_movielens100k``):
  ``ml-100k.inter``, ``.item`` and ``.user``, tab-separated with a typed
  header (``user_id:token``).
- goodbooks-10k (``load_goodbooks``): ``books.csv``, ``ratings.csv`` and,
  optionally, ``book_tags.csv`` with ``tags.csv`` (top tags become genres).

Every id goes through ``bookverse.models.ids``. No row is dropped silently:
each one left out is counted by reason in ``LoadReport.dropped``, and each one
kept with a correction or a gap (a year set to 0, a book rated but without a
metadata row, ISBN spellings merged) is counted in ``LoadReport.flagged``.

Readers are those with at least one interaction; the catalogue is every book
that is rated or has a metadata row. Per-reader and per-book side data goes to
``Dataset.extras``: a key starting with ``user_`` holds a sequence aligned with
``user_ids``, one starting with ``item_`` a sequence aligned with the
catalogue (``bookverse.training.prepare`` keeps both aligned when it filters).
"""

from __future__ import annotations

import csv
import datetime
import html
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bookverse.models.dataset import Catalogue, Dataset
from bookverse.models.ids import IdScheme, normalize_book_id, normalize_user_id
from bookverse.training.prepare import drop_duplicate_pairs

logger = logging.getLogger(__name__)

MIN_YEAR = 1000
"""Earliest plausible publication year; earlier (and later than now) -> 0."""
MIN_AGE, MAX_AGE = 5, 100
"""Plausible reader ages; others are stored as missing (NaN)."""
TOP_TAGS = 5
"""Tags kept as genres per goodbooks book, most used first."""
SHELF_TAGS = frozenset(
    {
        "to-read",
        "currently-reading",
        "favorites",
        "favourites",
        "owned",
        "books-i-own",
        "owned-books",
        "default",
        "my-books",
        "my-library",
        "library",
        "wish-list",
        "to-buy",
        "kindle",
        "ebook",
        "ebooks",
        "audiobook",
        "audiobooks",
        "re-read",
        "i-own",
        "own",
        "books",
        "series",
        "favorite",
        "all-time-favorites",
    }
)
"""goodbooks tags that name a reader's shelf rather than a genre."""

_NO_COUNTRY = frozenset({"", "n/a", "na", "none", "-", "?", "null"})


class DataLoadError(ValueError):
    """A data file is missing, cannot be parsed, or has no usable rows."""


@dataclass
class LoadReport:
    """What a loader read, and every row it left out or corrected, by reason.

    Attributes
    ----------
    name : the data set.
    rows : data rows read per file name (malformed lines included).
    dropped : rows left out, per reason (``"<file>: <rule>"``).
    flagged : rows kept with a correction or a gap, per reason.
    n_interactions, n_users, n_items : sizes of the loaded ``Dataset``.
    seconds : wall time of the load.
    """

    name: str
    rows: dict[str, int] = field(default_factory=dict)
    dropped: Counter[str] = field(default_factory=Counter)
    flagged: Counter[str] = field(default_factory=Counter)
    n_interactions: int = 0
    n_users: int = 0
    n_items: int = 0
    seconds: float = 0.0

    def drop(self, reason: str, count: int) -> None:
        """Count ``count`` rows left out for ``reason`` (zero is not recorded)."""
        if count:
            self.dropped[reason] += int(count)

    def flag(self, reason: str, count: int) -> None:
        """Count ``count`` rows kept with a correction or gap for ``reason``."""
        if count:
            self.flagged[reason] += int(count)

    def summary(self) -> str:
        """Several lines for a person: sizes, rows read, dropped and flagged."""
        lines = [
            f"{self.name}: {self.n_interactions} interactions, {self.n_users} "
            f"readers, {self.n_items} items (loaded in {self.seconds:.1f} s)",
            "  rows read: "
            + ", ".join(f"{name} {count}" for name, count in self.rows.items()),
        ]
        for title, counts in (("dropped", self.dropped), ("flagged", self.flagged)):
            total = sum(counts.values())
            lines.append(f"  {title}: {total}" + ("" if total else " (none)"))
            lines.extend(f"    {reason}: {n}" for reason, n in sorted(counts.items()))
        return "\n".join(lines)


def load_bookcrossing(folder: str | Path) -> tuple[Dataset, LoadReport]:
    """Load Book-Crossing from the three ``BX-*.csv`` files in ``folder``.

    Every rating row is an interaction: 0 an implicit one (rating 0.0), 1-10 an
    explicit rating. ISBNs are normalised (``normalize_book_id(raw, "isbn")``),
    so spellings of one ISBN meet; their metadata rows are merged, the first
    non-empty value of each field winning. Books rated but without a metadata
    row stay in the catalogue with empty title, author and publisher
    (``extras["item_has_metadata"]`` is False for them). There are no
    timestamps (all 0).

    Returns
    -------
    dataset : Dataset
        ``id_scheme`` "isbn", ``rating_scale`` (1, 10). Extras:
        ``user_age`` (n_users,) float32, NaN where missing or outside 5..100;
        ``user_country`` list[str], the last part of the location, "" if none;
        ``item_has_metadata`` (n_items,) bool.
    report : LoadReport

    Raises
    ------
    DataLoadError
        When a file is missing, cannot be parsed, lacks a column, or has no
        usable rows; the message names the file.
    """
    start = time.perf_counter()
    folder = Path(folder)
    report = LoadReport("bookcrossing")
    read = _bx_reader(report)

    ratings_path = folder / "BX-Book-Ratings.csv"
    ratings = read(ratings_path, ["User-ID", "ISBN", "Book-Rating"])
    inter = _interactions(
        ratings,
        ratings_path,
        report,
        columns=("User-ID", "ISBN", "Book-Rating", None),
        scheme="isbn",
        scale=(1, 10),
        implicit_zero=True,
    )

    books_path = folder / "BX-Books.csv"
    books = read(
        books_path,
        ["ISBN", "Book-Title", "Book-Author", "Year-Of-Publication", "Publisher"],
    )
    items = _item_metadata(
        books,
        books_path,
        report,
        scheme="isbn",
        columns={
            "id": "ISBN",
            "title": "Book-Title",
            "author": "Book-Author",
            "year": "Year-Of-Publication",
            "publisher": "Publisher",
        },
    )

    users_path = folder / "BX-Users.csv"
    users = _bx_users(
        read(users_path, ["User-ID", "Location", "Age"]), users_path, report
    )

    dataset = _assemble(
        "bookcrossing",
        inter,
        items,
        users,
        report,
        files=(ratings_path.name, users_path.name),
        scheme="isbn",
        scale=(1.0, 10.0),
    )
    return dataset, _finish(report, dataset, start)


def load_movielens100k(folder: str | Path) -> tuple[Dataset, LoadReport]:
    """Load MovieLens-100k from RecBole's ``ml-100k.{inter,item,user}`` in ``folder``.

    Header names are read from the typed header (``user_id:token`` ->
    ``user_id``). Titles, release years and genres (``class``, space
    separated) fill the catalogue.

    Returns
    -------
    dataset : Dataset
        ``id_scheme`` "plain", ``rating_scale`` (1, 5), Unix timestamps.
        Extras: ``user_age`` (n_users,) float32 (NaN where missing or outside
        5..100), ``user_gender`` and ``user_occupation`` list[str],
        ``item_has_metadata`` (n_items,) bool.
    report : LoadReport

    Raises
    ------
    DataLoadError
        When a file is missing, cannot be parsed, lacks a column, or has no
        usable rows; the message names the file.
    """
    start = time.perf_counter()
    folder = Path(folder)
    report = LoadReport("movielens100k")

    def read(path: Path, columns: list[str]) -> pd.DataFrame:
        return _read_table(
            path, report, columns, sep="\t", quoting=csv.QUOTE_NONE, typed_header=True
        )

    inter_path = folder / "ml-100k.inter"
    inter = _interactions(
        read(inter_path, ["user_id", "item_id", "rating", "timestamp"]),
        inter_path,
        report,
        columns=("user_id", "item_id", "rating", "timestamp"),
        scheme="plain",
        scale=(1, 5),
    )

    item_path = folder / "ml-100k.item"
    items = _item_metadata(
        read(item_path, ["item_id", "movie_title", "release_year", "class"]),
        item_path,
        report,
        scheme="plain",
        columns={
            "id": "item_id",
            "title": "movie_title",
            "year": "release_year",
            "genres": "class",
        },
        genre_sep=" ",
    )

    user_path = folder / "ml-100k.user"
    users = _ml_users(
        read(user_path, ["user_id", "age", "gender", "occupation"]), user_path, report
    )

    dataset = _assemble(
        "movielens100k",
        inter,
        items,
        users,
        report,
        files=(inter_path.name, user_path.name),
        scheme="plain",
        scale=(1.0, 5.0),
    )
    return dataset, _finish(report, dataset, start)


def load_goodbooks(
    folder: str | Path, top_tags: int = TOP_TAGS
) -> tuple[Dataset, LoadReport]:
    """Load a data set in the goodbooks-10k layout from ``folder``.

    ``books.csv`` (``book_id``, ``title``, ``authors``, optionally
    ``original_publication_year`` and ``goodreads_book_id``) and
    ``ratings.csv`` (``user_id``, ``book_id``, ``rating`` 1-5) are required.
    When ``book_tags.csv`` (``goodreads_book_id``, ``tag_id``, ``count``) and
    ``tags.csv`` (``tag_id``, ``tag_name``) are present, the ``top_tags`` most
    used tags of a book, shelf names (``SHELF_TAGS``) left out, become its
    genres. Tags are matched on ``goodreads_book_id`` when ``books.csv`` has
    it, on ``book_id`` otherwise.

    Returns
    -------
    dataset : Dataset
        ``id_scheme`` "plain", ``rating_scale`` (1, 5), no timestamps.
        Extras: ``item_has_metadata`` (n_items,) bool.
    report : LoadReport

    Raises
    ------
    DataLoadError
        When a required file is missing, only one of the two tag files is
        present, or a file cannot be parsed, lacks a column or has no usable
        rows; the message names the file.
    """
    start = time.perf_counter()
    folder = Path(folder)
    report = LoadReport("goodbooks")

    ratings_path = folder / "ratings.csv"
    inter = _interactions(
        _read_table(ratings_path, report, ["user_id", "book_id", "rating"]),
        ratings_path,
        report,
        columns=("user_id", "book_id", "rating", None),
        scheme="plain",
        scale=(1, 5),
    )

    books_path = folder / "books.csv"
    books = _read_table(books_path, report, ["book_id", "title", "authors"])
    books["genres"] = _goodbooks_genres(folder, books, report, top_tags)
    columns = {
        "id": "book_id",
        "title": "title",
        "author": "authors",
        "genres": "genres",
    }
    if "original_publication_year" in books.columns:
        columns["year"] = "original_publication_year"
    items = _item_metadata(books, books_path, report, scheme="plain", columns=columns)

    dataset = _assemble(
        "goodbooks",
        inter,
        items,
        None,
        report,
        files=(ratings_path.name, None),
        scheme="plain",
        scale=(1.0, 5.0),
    )
    return dataset, _finish(report, dataset, start)


# -- reading ---------------------------------------------------------------


def _read_table(
    path: Path,
    report: LoadReport,
    columns: Sequence[str],
    *,
    sep: str = ",",
    encoding: str = "utf-8",
    escapechar: str | None = None,
    quoting: int = csv.QUOTE_MINIMAL,
    typed_header: bool = False,
) -> pd.DataFrame:
    """Read a delimited text file as strings, counting the lines left out.

    Lines with more fields than the header are counted as
    ``"<file>: malformed line"``; lines missing one of ``columns`` as
    ``"<file>: line with missing fields"``. No value is read as NaN: empty
    fields stay ``""``.

    Raises
    ------
    DataLoadError
        When the file is missing, cannot be decoded or parsed, or lacks one of
        ``columns``.
    """
    if not path.is_file():
        raise DataLoadError(f"{path}: file is missing")
    malformed = 0

    def count_malformed(line: list[str]) -> None:
        nonlocal malformed
        malformed += 1

    # the Python parser, unlike the C one, can count lines with too many
    # fields, and leaves the fields missing from short lines as NaN
    try:
        frame = pd.read_csv(
            path,
            sep=sep,
            encoding=encoding,
            escapechar=escapechar,
            quotechar='"',
            quoting=quoting,
            dtype=str,
            keep_default_na=False,
            on_bad_lines=count_malformed,
            engine="python",
        )
    except (ValueError, csv.Error) as exc:
        raise DataLoadError(f"{path}: cannot be parsed ({exc})") from exc

    frame.columns = [_column_name(c, typed_header) for c in frame.columns]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataLoadError(
            f"{path}: missing column(s) {missing}; the header has {list(frame.columns)}"
        )

    short = frame[list(columns)].isna().any(axis=1).to_numpy()
    report.rows[path.name] = len(frame) + malformed
    report.drop(f"{path.name}: malformed line", malformed)
    report.drop(f"{path.name}: line with missing fields", int(short.sum()))
    return frame.loc[~short].reset_index(drop=True)


def _column_name(raw: object, typed_header: bool) -> str:
    """A header cell as a column name; ``name:type`` -> ``name`` if typed."""
    name = str(raw).strip()
    return name.split(":", 1)[0] if typed_header else name


def _bx_reader(report: LoadReport) -> Callable[[Path, list[str]], pd.DataFrame]:
    """``read(path, columns)`` with the Book-Crossing dialect."""

    def read(path: Path, columns: list[str]) -> pd.DataFrame:
        return _read_table(
            path, report, columns, sep=";", encoding="latin-1", escapechar="\\"
        )

    return read


def _require_rows(frame: pd.DataFrame, path: Path) -> None:
    """Raise when nothing usable is left of a file."""
    if frame.empty:
        raise DataLoadError(f"{path}: no usable rows")


# -- cleaning --------------------------------------------------------------


def _normalized(values: pd.Series, normalize: Callable[[str], str]) -> pd.Series:
    """``normalize`` applied once per distinct value."""
    codes, uniques = pd.factorize(values)
    # a missing value has code -1, which picks the "" appended last
    mapped = np.array([normalize(str(v)) for v in uniques] + [""], dtype=object)
    return pd.Series(mapped[codes], index=values.index, dtype=object)


def _interactions(
    frame: pd.DataFrame,
    path: Path,
    report: LoadReport,
    *,
    columns: tuple[str, str, str, str | None],
    scheme: IdScheme,
    scale: tuple[int, int],
    implicit_zero: bool = False,
) -> pd.DataFrame:
    """Interaction rows with canonical ids: ``user``, ``item``, ``rating``,
    ``timestamp`` (0 when the file has no time column); bad rows counted."""
    user_col, item_col, rating_col, time_col = columns
    name = path.name
    out = pd.DataFrame(
        {
            "user": _normalized(frame[user_col], normalize_user_id),
            "item": _normalized(
                frame[item_col], lambda s: normalize_book_id(s, scheme)
            ),
            "rating": pd.to_numeric(frame[rating_col].str.strip(), errors="coerce"),
            "timestamp": 0
            if time_col is None
            else pd.to_numeric(frame[time_col].str.strip(), errors="coerce"),
        }
    )

    low, high = scale
    rating_ok = out.rating.between(low, high) | (implicit_zero & (out.rating == 0))
    allowed = f"{'0 or ' if implicit_zero else ''}{low}..{high}"
    checks = [
        (out.user != "", f"{name}: empty reader id"),
        (out.item != "", f"{name}: empty book id"),
        (rating_ok, f"{name}: rating not a number in {allowed}"),
        (out.timestamp.notna() & (out.timestamp >= 0), f"{name}: bad timestamp"),
    ]
    keep = np.ones(len(out), dtype=bool)
    for ok, reason in checks:
        bad = keep & ~ok.to_numpy()
        report.drop(reason, int(bad.sum()))
        keep &= ~bad

    out = out.loc[keep]
    _require_rows(out, path)
    return out.astype({"rating": np.float32, "timestamp": np.int64})


def _years(values: pd.Series, name: str, report: LoadReport) -> pd.Series:
    """Publication years as int; unknown or outside 1000..this year -> 0."""
    this_year = datetime.date.today().year
    years = pd.to_numeric(values.str.strip(), errors="coerce")
    not_number = years.isna() & (values.str.strip() != "")
    blank = years.isna() & ~not_number
    zero = years == 0
    implausible = years.notna() & ~zero & ~years.between(MIN_YEAR, this_year)

    report.flag(f"{name}: year not a number, set to 0", int(not_number.sum()))
    report.flag(f"{name}: year missing (blank or 0)", int((blank | zero).sum()))
    report.flag(
        f"{name}: year outside {MIN_YEAR}..this year, set to 0", int(implausible.sum())
    )
    return years.where(years.notna() & ~zero & ~implausible, 0).astype(np.int64)


def _ages(values: pd.Series, name: str, report: LoadReport) -> pd.Series:
    """Reader ages as float; missing (NULL, blank) or outside 5..100 -> NaN."""
    ages = pd.to_numeric(values.str.strip(), errors="coerce")
    implausible = ages.notna() & ~ages.between(MIN_AGE, MAX_AGE)
    report.flag(f"{name}: age missing", int(ages.isna().sum()))
    report.flag(
        f"{name}: age outside {MIN_AGE}..{MAX_AGE}, set to missing",
        int(implausible.sum()),
    )
    return ages.where(~implausible).astype(np.float32)


def _country(locations: pd.Series) -> pd.Series:
    """The last comma-separated part of a location, trimmed; "" when none."""
    last = locations.str.rsplit(",", n=1).str[-1].str.strip(" \t.\"'")
    last = last.str.replace(r"\s+", " ", regex=True).str.lower()
    return last.where(~last.isin(_NO_COUNTRY), "")


def _item_metadata(
    frame: pd.DataFrame,
    path: Path,
    report: LoadReport,
    *,
    scheme: IdScheme,
    columns: dict[str, str],
    genre_sep: str | None = None,
) -> pd.DataFrame:
    """One metadata row per canonical item id, indexed by it.

    ``columns`` maps ``id``, ``title`` and optionally ``author``, ``year``,
    ``publisher`` and ``genres`` to the frame's column names. Rows whose ids
    meet after normalisation are merged: the first non-empty value of each
    field wins.
    """
    name = path.name
    ids = _normalized(frame[columns["id"]], lambda s: normalize_book_id(s, scheme))
    has_id = (ids != "").to_numpy()
    report.drop(f"{name}: empty book id", int((~has_id).sum()))
    frame, ids = frame.loc[has_id], ids.loc[has_id]

    # empty values become None, so that merging fills them from a later row
    meta = pd.DataFrame(index=pd.Index(ids.to_numpy(), name="item"))
    # HTML entities ("Angels &amp; Demons") are decoded into plain text
    for key in ("title", "author", "publisher"):
        text = (
            frame[columns[key]].map(html.unescape, na_action="ignore").str.strip()
            if key in columns
            else None
        )
        meta[key] = None if text is None else text.replace("", None).to_numpy(object)
    years = _years(frame[columns["year"]], name, report) if "year" in columns else 0
    meta["year"] = pd.Series(years, index=frame.index).replace(0, None).to_numpy()
    meta["genres"] = _genres(frame, columns.get("genres"), genre_sep)

    merged = len(meta) - ids.nunique()
    report.flag(f"{name}: row merged into an earlier spelling of its id", merged)
    meta = meta.groupby(level=0, sort=False).first()
    _require_rows(meta, path)
    return meta.fillna({"title": "", "author": "", "publisher": "", "year": 0})


def _genres(
    frame: pd.DataFrame, column: str | None, sep: str | None
) -> list[tuple[str, ...] | None]:
    """Genres per row (None when there are none, so merging may fill them)."""
    if column is None:
        return [None] * len(frame)
    values = frame[column]
    if sep is not None:
        values = values.fillna("").str.split(sep)
    return [tuple(g for g in v or () if g) or None for v in values]


def _bx_users(frame: pd.DataFrame, path: Path, report: LoadReport) -> pd.DataFrame:
    """Age and country per canonical reader id of ``BX-Users.csv``."""
    users = pd.DataFrame(
        {
            "age": _ages(frame["Age"], path.name, report).to_numpy(),
            "country": _country(frame["Location"]).to_numpy(),
        },
        index=pd.Index(_normalized(frame["User-ID"], normalize_user_id).to_numpy()),
    )
    return _unique_users(users, path, report)


def _ml_users(frame: pd.DataFrame, path: Path, report: LoadReport) -> pd.DataFrame:
    """Age, gender and occupation per canonical reader id of ``ml-100k.user``."""
    users = pd.DataFrame(
        {
            "age": _ages(frame["age"], path.name, report).to_numpy(),
            "gender": frame["gender"].str.strip().to_numpy(),
            "occupation": frame["occupation"].str.strip().to_numpy(),
        },
        index=pd.Index(_normalized(frame["user_id"], normalize_user_id).to_numpy()),
    )
    return _unique_users(users, path, report)


def _unique_users(users: pd.DataFrame, path: Path, report: LoadReport) -> pd.DataFrame:
    """Drop rows with an empty id, and repeats of an id (first row wins)."""
    empty = (users.index == "").astype(bool)
    report.drop(f"{path.name}: empty reader id", int(empty.sum()))
    users = users.loc[~empty]
    repeated = users.index.duplicated(keep="first")
    report.drop(f"{path.name}: repeated reader id", int(repeated.sum()))
    return users.loc[~repeated]


def _goodbooks_genres(
    folder: Path, books: pd.DataFrame, report: LoadReport, top_tags: int
) -> list[tuple[str, ...] | None]:
    """Top tags per row of ``books``, from ``book_tags.csv`` and ``tags.csv``."""
    book_tags_path, tags_path = folder / "book_tags.csv", folder / "tags.csv"
    present = [p.is_file() for p in (book_tags_path, tags_path)]
    if not any(present):
        return [None] * len(books)
    if not all(present):
        missing = tags_path if present[0] else book_tags_path
        raise DataLoadError(f"{missing}: file is missing (the tag files come in pairs)")

    book_tags = _read_table(
        book_tags_path, report, ["goodreads_book_id", "tag_id", "count"]
    )
    tags = _read_table(tags_path, report, ["tag_id", "tag_name"])
    book_tags["count"] = pd.to_numeric(book_tags["count"], errors="coerce")
    bad = book_tags["count"].isna()
    report.drop(f"{book_tags_path.name}: count not a number", int(bad.sum()))

    names = dict(zip(tags.tag_id.str.strip(), tags.tag_name.str.strip(), strict=True))
    book_tags = book_tags.loc[~bad].assign(
        tag=book_tags.tag_id.str.strip().map(names),
        key=book_tags.goodreads_book_id.str.strip(),
    )
    unknown = book_tags.tag.isna()
    report.drop(f"{book_tags_path.name}: tag id not in tags.csv", int(unknown.sum()))
    book_tags = book_tags.loc[~unknown & ~book_tags.tag.isin(SHELF_TAGS)]

    top = (
        book_tags.sort_values(["key", "count"], ascending=[True, False], kind="stable")
        .groupby("key", sort=False)
        .head(top_tags)
        .groupby("key", sort=False)["tag"]
        .agg(tuple)
    )
    key_col = "goodreads_book_id" if "goodreads_book_id" in books else "book_id"
    keys = books[key_col].str.strip()
    return [top.get(k) for k in keys]


# -- assembling ------------------------------------------------------------


def _sorted_ids(values: Iterable[str]) -> np.ndarray:
    """Distinct ids sorted: by number when all are digits, as text otherwise."""
    unique = set(values)
    if all(v.isdigit() for v in unique):
        ordered = sorted(unique, key=lambda v: (len(v.lstrip("0")), v))
    else:
        ordered = sorted(unique)
    return np.array(ordered, dtype=str)


def _assemble(
    name: str,
    inter: pd.DataFrame,
    items: pd.DataFrame,
    users: pd.DataFrame | None,
    report: LoadReport,
    *,
    files: tuple[str, str | None],
    scheme: IdScheme,
    scale: tuple[float, float],
) -> Dataset:
    """Index-encode interactions over readers and catalogue, attach metadata
    and extras, and drop repeated (reader, book) pairs."""
    ratings_file, users_file = files
    user_ids = _sorted_ids(inter.user)
    item_ids = _sorted_ids(list(items.index) + list(inter.item.unique()))

    has_meta = np.isin(item_ids, items.index.to_numpy(dtype=str))
    meta = items.reindex(item_ids)
    rated_without = inter.item.isin(item_ids[~has_meta])
    report.flag(
        "catalogue: book rated but without a metadata row", int((~has_meta).sum())
    )
    report.flag(
        f"{ratings_file}: rating of a book without metadata", int(rated_without.sum())
    )

    catalogue = Catalogue(
        item_ids=item_ids,
        titles=meta.title.fillna("").tolist(),
        authors=meta.author.fillna("").tolist(),
        years=meta.year.fillna(0).to_numpy(dtype=np.int32),
        publishers=meta.publisher.fillna("").tolist(),
        genres=[g if isinstance(g, tuple) else () for g in meta.genres],
    )
    extras: dict[str, object] = {"item_has_metadata": has_meta}
    if users is not None and users_file is not None:
        extras.update(_user_extras(users, user_ids, users_file, report))

    dataset = Dataset(
        name=name,
        user_ids=user_ids,
        catalogue=catalogue,
        users=pd.Index(user_ids).get_indexer(inter.user).astype(np.int32),
        items=pd.Index(item_ids).get_indexer(inter.item).astype(np.int32),
        ratings=inter.rating.to_numpy(dtype=np.float32),
        timestamps=inter.timestamp.to_numpy(dtype=np.int64),
        rating_scale=scale,
        id_scheme=scheme,
        extras=extras,
    )
    deduped = drop_duplicate_pairs(dataset)
    report.drop(
        f"{ratings_file}: repeated (reader, book) pair",
        dataset.n_interactions - deduped.n_interactions,
    )
    return deduped


def _user_extras(
    users: pd.DataFrame, user_ids: np.ndarray, users_file: str, report: LoadReport
) -> dict[str, object]:
    """``user_<column>`` extras aligned with ``user_ids``; gaps counted."""
    known = users.index.isin(user_ids)
    report.drop(f"{users_file}: reader without interactions", int((~known).sum()))
    missing = int((~np.isin(user_ids, users.index.to_numpy(dtype=str))).sum())
    report.flag(f"{users_file}: reader with interactions but no row", missing)

    aligned = users.reindex(user_ids)
    extras: dict[str, object] = {}
    for column in aligned.columns:
        values = aligned[column]
        if pd.api.types.is_numeric_dtype(values):
            extras[f"user_{column}"] = values.to_numpy(dtype=np.float32)
        else:
            extras[f"user_{column}"] = values.fillna("").astype(str).tolist()
    return extras


def _finish(report: LoadReport, dataset: Dataset, start: float) -> LoadReport:
    """Record the sizes and time of a load, and log them."""
    report.n_interactions = dataset.n_interactions
    report.n_users = dataset.n_users
    report.n_items = dataset.n_items
    report.seconds = time.perf_counter() - start
    logger.info(
        "loaded %s: %s interactions, %s readers, %s items, %s rows dropped (%.1f s)",
        report.name,
        report.n_interactions,
        report.n_users,
        report.n_items,
        sum(report.dropped.values()),
        report.seconds,
    )
    return report
