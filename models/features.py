"""The one feature builder of the meta-ranker, shared by training and serving.

Training and serving call the same ``build_features`` with the same inputs
(one reader's candidates, each base model's scores over them, the reader's
history, the precomputed ``FeatureTables`` and an optional request context),
so a candidate gets the same row offline and online. Columns come out in the
order of a given list of feature names; a feature the data set cannot provide
(no genres in Book-Crossing, no authors in MovieLens, no request context in
either) is NaN, XGBoost's missing value, never a made-up default.

Feature names (``known_features`` lists them for a set of base models):

- per base model ``m``: ``{m}_score`` (raw score), ``{m}_norm`` (min-max over
  the candidates, ``hybrid.min_max``) and ``{m}_rank`` (1 + the number of
  candidates scored strictly higher: ties share a rank, whatever their order);
- the book: ``book_count`` (training interactions), ``book_mean_rating``
  (explicit ratings only), ``book_year``, ``author_count`` and
  ``publisher_count`` (interactions of all books by the same author or
  publisher), ``book_mean_day`` (mean interaction time, days since the epoch);
- the reader: ``reader_activity`` (books in the history being scored),
  ``reader_mean_rating``, ``reader_age``, ``reader_gender``,
  ``reader_occupation``, ``reader_country`` (integer codes),
  ``reader_mean_day``, ``reader_genre_entropy`` (of the history's genres,
  bits);
- book and reader together: ``author_loyalty`` (share of the history by the
  candidate's author), ``publisher_loyalty``, ``genre_overlap`` (mean over the
  candidate's genres of the share of the history in that genre),
  ``year_gap`` (candidate's year minus the history's mean year), ``day_gap``
  (``book_mean_day - reader_mean_day``), ``book_trend`` (the book's share of
  all interactions in the reader's month, per mille);
- the request: ``hour`` (0-23), ``weekday`` (0 = Monday), ``device`` (code).

Categorical values (gender, occupation, country, device) are integer codes,
most frequent value first, with the mapping kept in ``FeatureTables.vocab``
(stored as JSON); a value outside the mapping is missing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from bookverse.models.base import UserProfile
from bookverse.models.dataset import Dataset
from bookverse.models.hybrid import min_max

logger = logging.getLogger(__name__)

MODEL_SUFFIXES = ("score", "norm", "rank")
BOOK_FEATURES = (
    "book_count",
    "book_mean_rating",
    "book_year",
    "author_count",
    "publisher_count",
    "book_mean_day",
)
READER_FEATURES = (
    "reader_activity",
    "reader_mean_rating",
    "reader_age",
    "reader_gender",
    "reader_occupation",
    "reader_country",
    "reader_mean_day",
    "reader_genre_entropy",
)
CROSS_FEATURES = (
    "author_loyalty",
    "publisher_loyalty",
    "genre_overlap",
    "year_gap",
    "day_gap",
    "book_trend",
)
CONTEXT_FEATURES = ("hour", "weekday", "device")
CATEGORICAL_READER = ("gender", "occupation", "country")
"""Reader extras (``user_<name>``) encoded as integer codes."""

SECONDS_PER_DAY = 86400.0
DAYS_PER_BIN = 30.0
"""Width of a ``book_trend`` time bin."""


@dataclass(frozen=True)
class RequestContext:
    """What a request says about when and where it is made; None = unknown."""

    hour: int | None = None
    weekday: int | None = None
    device: str | None = None


@dataclass(frozen=True)
class FeatureTables:
    """Per-book and per-reader statistics of the training data.

    Every array is float32 with NaN where unknown unless stated.

    Attributes
    ----------
    book : dict of str to (n_items,) float32
        ``book_count``, ``book_mean_rating``, ``book_year``, ``author_count``,
        ``publisher_count``, ``book_mean_day``.
    reader : dict of str to (n_users,) float32
        ``reader_mean_rating``, ``reader_age``, ``reader_gender``,
        ``reader_occupation``, ``reader_country``, ``reader_mean_day``
        (codes for the categorical ones).
    author, publisher : (n_items,) int32
        Code of each book's author or publisher; -1 where none.
    genres : (n_items, n_genres) float32
        1 where the book has the genre; ``n_genres`` is 0 without genres.
    trend : (n_items, n_bins) float32
        Each book's share of all interactions of each 30-day bin, per mille;
        ``n_bins`` is 0 without timestamps.
    trend_start : float
        Day (since the epoch) where bin 0 starts.
    mean_activity : float
        Mean number of books per training reader (>= 1).
    vocab : dict of str to list of str
        Categorical mappings: code ``c`` of ``name`` is ``vocab[name][c]``.
    """

    book: dict[str, np.ndarray]
    reader: dict[str, np.ndarray]
    author: np.ndarray
    publisher: np.ndarray
    genres: np.ndarray
    trend: np.ndarray
    trend_start: float = 0.0
    mean_activity: float = 1.0
    vocab: dict[str, list[str]] = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return len(self.author)

    @property
    def n_users(self) -> int:
        return len(next(iter(self.reader.values()))) if self.reader else 0

    def provides(self, name: str) -> bool:
        """Whether these tables can give ``name`` a value for some candidate."""
        if name in self.book:
            return bool(np.isfinite(self.book[name]).any())
        if name in self.reader:
            return bool(np.isfinite(self.reader[name]).any())
        needs = {
            "author_loyalty": (self.author >= 0).any(),
            "publisher_loyalty": (self.publisher >= 0).any(),
            "genre_overlap": self.genres.shape[1] > 0,
            "reader_genre_entropy": self.genres.shape[1] > 0,
            "year_gap": self.provides("book_year"),
            "day_gap": self.provides("book_mean_day"),
            "book_trend": self.trend.shape[1] > 0,
            "reader_activity": True,
        }
        return bool(needs.get(name, False))


def known_features(base_models: Sequence[str]) -> list[str]:
    """Every feature name ``build_features`` can fill for ``base_models``."""
    per_model = [f"{m}_{suffix}" for m in base_models for suffix in MODEL_SUFFIXES]
    return [
        *per_model,
        *BOOK_FEATURES,
        *READER_FEATURES,
        *CROSS_FEATURES,
        *CONTEXT_FEATURES,
    ]


def check_feature_names(names: Sequence[str], base_models: Sequence[str]) -> None:
    """Refuse a feature list that ``build_features`` cannot build.

    Raises
    ------
    ValueError
        Naming the first unknown or repeated feature.
    """
    known = set(known_features(base_models))
    seen: set[str] = set()
    for name in names:
        if name not in known:
            raise ValueError(
                f"features: {name!r} cannot be built for base models "
                f"{list(base_models)}"
            )
        if name in seen:
            raise ValueError(f"features: {name!r} is listed twice")
        seen.add(name)


# -- statistics of the training data ----------------------------------------


def _codes(values: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Integer codes of strings, most frequent first; "" is missing (-1)."""
    array = np.asarray([str(v) for v in values], dtype=object)
    known = array != ""
    labels, counts = np.unique(array[known].astype(str), return_counts=True)
    order = np.lexsort((labels, -counts))
    vocab = labels[order].tolist()
    lookup = {label: code for code, label in enumerate(vocab)}
    codes = np.array([lookup.get(str(v), -1) for v in array], dtype=np.int32)
    return codes, vocab


def _group_counts(codes: np.ndarray, per_item: np.ndarray) -> np.ndarray:
    """Sum of ``per_item`` over all books sharing each book's code; NaN at -1."""
    known = codes >= 0
    totals = np.bincount(
        codes[known], weights=per_item[known], minlength=int(codes.max(initial=-1)) + 1
    )
    out = np.full(len(codes), np.nan, dtype=np.float32)
    out[known] = totals[codes[known]]
    return out


def _means(index: np.ndarray, values: np.ndarray, size: int) -> np.ndarray:
    """Mean of ``values`` per ``index``; NaN where there are none: (size,)."""
    totals = np.bincount(index, weights=values, minlength=size)
    counts = np.bincount(index, minlength=size)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, totals / counts, np.nan).astype(np.float32)


def _genre_matrix(genres: Sequence[tuple[str, ...]]) -> tuple[np.ndarray, list[str]]:
    names = sorted({g for item in genres for g in item})
    column = {name: c for c, name in enumerate(names)}
    matrix = np.zeros((len(genres), len(names)), dtype=np.float32)
    for item, tags in enumerate(genres):
        for tag in tags:
            matrix[item, column[tag]] = 1.0
    return matrix, names


def _trend(dataset: Dataset) -> tuple[np.ndarray, float]:
    """Per-book share (per mille) of each 30-day bin's interactions."""
    if not dataset.has_timestamps:
        return np.zeros((dataset.n_items, 0), dtype=np.float32), 0.0
    days = dataset.timestamps / SECONDS_PER_DAY
    start = float(np.floor(days.min()))
    bins = ((days - start) // DAYS_PER_BIN).astype(np.int64)
    counts = np.zeros((dataset.n_items, int(bins.max()) + 1), dtype=np.float64)
    np.add.at(counts, (dataset.items, bins), 1.0)
    share = 1000.0 * counts / np.maximum(counts.sum(axis=0, keepdims=True), 1.0)
    return share.astype(np.float32), start


def compute_tables(dataset: Dataset) -> FeatureTables:
    """Statistics of ``dataset`` (the training data) for ``build_features``.

    Book and reader counts count distinct (reader, book) pairs; mean ratings
    use explicit ratings (> 0) only; times exist only when every row has a
    timestamp. Reader extras ``user_age`` (numbers) and ``user_gender``,
    ``user_occupation``, ``user_country`` (strings, coded) are used when the
    data set has them.

    Returns
    -------
    FeatureTables
    """
    n_users, n_items = dataset.n_users, dataset.n_items
    reads = dataset.user_items()
    book_count = np.asarray(reads.sum(axis=0), dtype=np.float32).ravel()
    explicit = dataset.ratings > 0
    nan_items = np.full(n_items, np.nan, dtype=np.float32)
    nan_users = np.full(n_users, np.nan, dtype=np.float32)

    # books: popularity, quality, year, author and publisher popularity
    catalogue = dataset.catalogue
    author, author_vocab = _codes(catalogue.authors)
    publisher, publisher_vocab = _codes(catalogue.publishers)
    years = np.asarray(catalogue.years, dtype=np.float32)
    share = np.float32(1e4 / max(float(book_count.sum()), 1.0))
    book = {
        "book_count": book_count * share,
        "book_mean_rating": _means(
            dataset.items[explicit], dataset.ratings[explicit], n_items
        ),
        "book_year": np.where(years > 0, years, np.nan).astype(np.float32),
        "author_count": _group_counts(author, book_count) * share,
        "publisher_count": _group_counts(publisher, book_count) * share,
        "book_mean_day": nan_items,
    }

    # readers: taste, demographics (coded) and when they were active
    reader = {
        "reader_mean_rating": _means(
            dataset.users[explicit], dataset.ratings[explicit], n_users
        ),
        "reader_mean_day": nan_users,
    }
    vocab: dict[str, list[str]] = {}
    age = dataset.extras.get("user_age")
    reader["reader_age"] = (
        nan_users if age is None else np.asarray(age, dtype=np.float32)
    )
    for name in CATEGORICAL_READER:
        values = dataset.extras.get(f"user_{name}")
        if values is None:
            reader[f"reader_{name}"] = nan_users
            continue
        codes, vocab[name] = _codes(list(values))  # type: ignore[call-overload]
        reader[f"reader_{name}"] = np.where(codes >= 0, codes, np.nan).astype(
            np.float32
        )
    if dataset.has_timestamps:
        days = (dataset.timestamps / SECONDS_PER_DAY).astype(np.float64)
        book["book_mean_day"] = _means(dataset.items, days, n_items)
        reader["reader_mean_day"] = _means(dataset.users, days, n_users)

    genres, _ = _genre_matrix(catalogue.genres)
    trend, trend_start = _trend(dataset)
    logger.debug("feature tables: %s books, %s readers", n_items, n_users)
    return FeatureTables(
        book=book,
        reader=reader,
        author=author,
        publisher=publisher,
        genres=genres,
        trend=trend,
        trend_start=trend_start,
        mean_activity=max(float(book_count.sum()) / max(n_users, 1), 1.0),
        vocab={**vocab, "author": author_vocab, "publisher": publisher_vocab},
    )


# -- one reader's candidates ------------------------------------------------


def ranks(scores: np.ndarray) -> np.ndarray:
    """1 + the number of strictly higher scores, per entry: (n,) float32.

    Ties share a rank, so the result does not depend on the candidates' order;
    a non-finite score ranks below every finite one.
    """
    values = np.where(np.isfinite(scores), scores, -np.inf).astype(np.float64)
    ascending = np.sort(values)
    higher = len(values) - np.searchsorted(ascending, values, side="right")
    return (higher + 1).astype(np.float32)


def pool_candidates(
    full_scores: Mapping[str, np.ndarray], seen: np.ndarray, pool: int
) -> np.ndarray:
    """The ranker's candidate pool: the union of each model's ``pool`` best
    books over the whole catalogue, the reader's ``seen`` books left out.

    Parameters
    ----------
    full_scores : dict of str to (n_items,) float
        Each base model's scores of every book for this reader.
    seen : (n_seen,) int
        Books never to propose (the reader's history).
    pool : int
        Books proposed per model; >= 1.

    Returns
    -------
    (n_candidates,) int64, sorted ascending, unique.

    Raises
    ------
    ValueError
        If ``pool`` < 1 or the score arrays differ in length.
    """
    if pool < 1:
        raise ValueError(f"pool must be >= 1, got {pool}")
    lengths = {len(v) for v in full_scores.values()}
    if len(lengths) > 1:
        raise ValueError(f"full_scores must share one length, got {sorted(lengths)}")
    proposals = []
    for scores in full_scores.values():
        values = np.array(scores, dtype=np.float32)
        values[np.asarray(seen, dtype=np.int64)] = -np.inf
        n = min(pool, len(values))
        best = np.argpartition(-values, n - 1)[:n]
        proposals.append(best[np.isfinite(values[best])])
    if not proposals:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.concatenate(proposals)).astype(np.int64)


def _history_shares(codes: np.ndarray, history: np.ndarray) -> dict[int, float]:
    """Share of the history per code (books without a code count in the total)."""
    if len(history) == 0:
        return {}
    values, counts = np.unique(codes[history], return_counts=True)
    return {
        int(v): c / len(history)
        for v, c in zip(values.tolist(), counts.tolist(), strict=True)
        if v >= 0
    }


def _loyalty(codes: np.ndarray, items: np.ndarray, history: np.ndarray) -> np.ndarray:
    """Share of the history sharing each candidate's code; NaN without code."""
    shares = _history_shares(codes, history)
    candidate = codes[items]
    out = np.array([shares.get(int(c), 0.0) for c in candidate], dtype=np.float32)
    out[candidate < 0] = np.nan
    if not (codes >= 0).any():
        out[:] = np.nan
    return out


def _genre_features(
    genres: np.ndarray, items: np.ndarray, history: np.ndarray
) -> tuple[np.ndarray, float]:
    """Genre overlap per candidate and the history's genre entropy (bits)."""
    n = len(items)
    if genres.shape[1] == 0 or len(history) == 0:
        return np.full(n, np.nan, dtype=np.float32), float("nan")
    share = genres[history].sum(axis=0, dtype=np.float64) / len(history)
    candidate = genres[items].astype(np.float64)
    n_genres = candidate.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        overlap = np.where(n_genres > 0, (candidate @ share) / n_genres, np.nan)
    mass = share[share > 0] / share.sum() if share.sum() > 0 else share[:0]
    entropy = float(-(mass * np.log2(mass)).sum()) if len(mass) else float("nan")
    return overlap.astype(np.float32), entropy


def _context_value(context: RequestContext | None, name: str, vocab: dict) -> float:
    if context is None:
        return float("nan")
    value = getattr(context, name)
    if value is None:
        return float("nan")
    if name == "device":
        devices = vocab.get("device", [])
        return float(devices.index(value)) if value in devices else float("nan")
    return float(value)


def build_features(
    names: Sequence[str],
    items: np.ndarray,
    scores: Mapping[str, np.ndarray],
    profile: UserProfile,
    tables: FeatureTables,
    reader: int | None = None,
    context: RequestContext | None = None,
) -> np.ndarray:
    """Feature rows of one reader's candidates, columns in ``names`` order.

    Parameters
    ----------
    names : sequence of str
        Feature names (``known_features``), in column order.
    items : (n_candidates,) int
        Candidate book indices.
    scores : dict of str to (n_candidates,) float
        Each base model's raw scores of ``items`` (``Model.score``); every
        model named by a ``{m}_*`` feature must be present.
    profile : UserProfile
        The history being scored; its items give ``reader_activity``, the
        loyalties, genre overlap and entropy, and ``year_gap``.
    tables : FeatureTables
        Statistics of the training data (``compute_tables``).
    reader : int, optional
        The reader's training row for the per-reader statistics (pass it
        even when the history grew since training); None: those are NaN.
    context : RequestContext, optional
        None: ``hour``, ``weekday`` and ``device`` are NaN.

    Returns
    -------
    (n_candidates, len(names)) float32
        NaN marks a missing value.

    Raises
    ------
    ValueError
        If a name is unknown, a needed model's scores are absent or of another
        length, or ``items``/``reader`` is out of range.
    """
    items = np.asarray(items, dtype=np.int64)
    history = np.asarray(profile.items, dtype=np.int64)
    _check_inputs(items, history, reader, tables)
    n = len(items)
    columns: dict[str, np.ndarray] = {}

    def scalar(value: float) -> np.ndarray:
        return np.full(n, value, dtype=np.float32)

    def reader_stat(name: str) -> np.ndarray:
        if reader is None:
            return scalar(float("nan"))
        return scalar(float(tables.reader[name][reader]))

    for name in names:
        if name in columns:
            continue
        model, _, suffix = name.rpartition("_")
        if model and suffix in MODEL_SUFFIXES and name not in tables.book:
            raw = _model_scores(scores, model, n)
            columns[f"{model}_score"] = raw
            columns[f"{model}_norm"] = min_max(raw)
            columns[f"{model}_rank"] = ranks(raw)
        elif name in tables.book:
            columns[name] = np.asarray(tables.book[name], np.float32)[items]
        elif name == "reader_activity":
            columns[name] = scalar(len(history) / tables.mean_activity)
        elif name in tables.reader:
            columns[name] = reader_stat(name)
        elif name in ("genre_overlap", "reader_genre_entropy"):
            overlap, entropy = _genre_features(tables.genres, items, history)
            columns["genre_overlap"] = overlap
            columns["reader_genre_entropy"] = scalar(entropy)
        elif name in ("author_loyalty", "publisher_loyalty"):
            codes = tables.author if name == "author_loyalty" else tables.publisher
            columns[name] = _loyalty(codes, items, history)
        elif name == "year_gap":
            years = tables.book["book_year"]
            mean_year = (
                np.nanmean(years[history]) if _any_finite(years, history) else np.nan
            )
            columns[name] = (years[items] - np.float32(mean_year)).astype(np.float32)
        elif name == "day_gap":
            days = tables.book["book_mean_day"][items]
            columns[name] = (days - reader_stat("reader_mean_day")).astype(np.float32)
        elif name == "book_trend":
            columns[name] = _trend_at(tables, items, reader)
        elif name in CONTEXT_FEATURES:
            columns[name] = scalar(_context_value(context, name, tables.vocab))
        else:
            raise ValueError(f"names: cannot build feature {name!r}")
    if not names:
        return np.zeros((n, 0), dtype=np.float32)
    return np.stack([columns[name] for name in names], axis=1).astype(np.float32)


def _any_finite(values: np.ndarray, index: np.ndarray) -> bool:
    return bool(len(index)) and bool(np.isfinite(values[index]).any())


def _trend_at(
    tables: FeatureTables, items: np.ndarray, reader: int | None
) -> np.ndarray:
    """Each candidate's share of the interactions of the reader's month."""
    out = np.full(len(items), np.nan, dtype=np.float32)
    if reader is None or tables.trend.shape[1] == 0:
        return out
    day = float(tables.reader["reader_mean_day"][reader])
    if not np.isfinite(day):
        return out
    column = int(np.clip((day - tables.trend_start) // DAYS_PER_BIN, 0, None))
    column = min(column, tables.trend.shape[1] - 1)
    return np.asarray(tables.trend[items, column], dtype=np.float32)


def _model_scores(scores: Mapping[str, np.ndarray], model: str, n: int) -> np.ndarray:
    if model not in scores:
        raise ValueError(f"scores must hold model {model!r}, got {sorted(scores)}")
    raw = np.asarray(scores[model], dtype=np.float32)
    if raw.shape != (n,):
        raise ValueError(
            f"scores[{model!r}] must have shape ({n},) like items, got {raw.shape}"
        )
    return raw


def _check_inputs(
    items: np.ndarray, history: np.ndarray, reader: int | None, tables: FeatureTables
) -> None:
    for label, index in (("items", items), ("profile.items", history)):
        if len(index) and (index.min() < 0 or index.max() >= tables.n_items):
            raise ValueError(
                f"{label} must be in [0, {tables.n_items}), "
                f"got {index.min()}..{index.max()}"
            )
    if reader is not None and not 0 <= reader < tables.n_users:
        raise ValueError(f"reader must be in [0, {tables.n_users}), got {reader}")
