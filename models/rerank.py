"""Diversity re-ranking of a scored candidate list: maximal marginal relevance.

Carbonell and Goldstein, "The use of MMR, diversity-based reranking for
reordering documents and producing summaries", SIGIR 1998. The list is built
greedily: at each step the candidate with the best marginal score

    mmr(j) = (1 - lambda) * rel(j) - lambda * max_{s in chosen} sim(j, s)

is appended, where ``rel`` is the relevance min-max normalised over the
candidates (best 1, worst 0) and ``sim`` the cosine of two items' vectors (ALS
item factors, TF-IDF rows, ...). ``lambda = 0`` keeps the relevance order;
``lambda = 1`` only avoids similar items. Two hard rules come on top:

- a similarity threshold: a candidate more similar than the threshold to an
  item already chosen is skipped while any candidate within it remains;
- an author cap: at most ``max_per_author`` books of one author in the list
  (an empty author is no author, never capped); a capped list may come out
  shorter than asked.

Two levers act across readers' lists rather than within one, for catalogue
coverage (Abdollahpouri et al., "Managing popularity bias in recommender
systems with personalized re-ranking", FLAIRS 2019, and the popularity
penalties reviewed there):

- a pool: only the ``pool`` most relevant candidates are re-ranked, so a
  deep candidate list does not let weak items in;
- a popularity penalty on relevance, before the MMR step,

      rel'(j) = rel(j) - beta * pop(j),
      pop(j) = log(1 + count(j)) / log(1 + max_i count(i)),

  with ``count`` the readers of each candidate (the max over the candidates
  re-ranked), so the most read candidate loses ``beta`` and an unread one
  nothing;
- a head: the first ``head`` places go by relevance alone (no penalty, no
  diversity), so the lower places, which nDCG discounts most, absorb the
  re-ranking.

Coverage across readers needs the readers' lists to know of each other,
which no per-list rule does: the least popular books one reader's pool holds
are mostly the same few that every other pool holds. An exposure ledger
(:class:`ExposureLedger`) counts how often the service placed each book in a
list lately; after the first ``head`` places, a list's remaining places go,
in relevance order, to books of the reader's ``depth`` best that were shown
fewer than ``limit`` times, and only then to the rest. It is the greedy
aggregate-diversity re-ranking of Adomavicius and Kwon ("Improving aggregate
recommendation diversity using ranking-based techniques", IEEE TKDE 2012),
run online: each list is arranged against the lists served before it.

It runs at request time on a few hundred candidates, with numpy only.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bookverse.models.hybrid import min_max

logger = logging.getLogger(__name__)

Similarity = np.ndarray | Callable[[np.ndarray], np.ndarray]
"""Item vectors aligned with the candidates, or ``fn(candidates) -> (c, c)``."""


def cosine_matrix(embeddings: Any) -> np.ndarray:
    """Pairwise cosine of the rows of an embedding matrix.

    Parameters
    ----------
    embeddings : (n, d) array, or any matrix with ``@`` and ``.T`` (a scipy
        sparse matrix such as TF-IDF rows works too).

    Returns
    -------
    (n, n) float64
        Cosines; a zero row is similar to nothing (0), itself included.
    """
    gram = embeddings @ embeddings.T
    gram = np.asarray(gram.toarray() if hasattr(gram, "toarray") else gram, float)
    norms = np.sqrt(np.clip(np.diagonal(gram), 0.0, None))
    inverse = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    return gram * inverse[:, None] * inverse[None, :]


def mmr(
    candidates: np.ndarray,
    relevance: np.ndarray,
    similarity: Similarity,
    n: int,
    diversity: float = 0.3,
    similarity_threshold: float | None = None,
    authors: Sequence[str] | None = None,
    max_per_author: int | None = None,
    *,
    popularity: np.ndarray | None = None,
    popularity_penalty: float = 0.0,
    pool: int | None = None,
    head: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank candidates for relevance and diversity, greedily.

    Parameters
    ----------
    candidates : (c,) int
        Distinct item indices.
    relevance : (c,) float
        Higher is better; non-finite values count as the lowest.
    similarity : (c, d) array or callable
        Vectors of the candidates, row ``j`` for ``candidates[j]`` (cosine is
        taken; a scipy sparse matrix works too), or a function that maps the
        candidates to their (c, c) similarity matrix.
    n : int
        Length of the list wanted; >= 0.
    diversity : float, default 0.3
        ``lambda`` in [0, 1].
    similarity_threshold : float or None, default None
        Skip a candidate whose similarity to a chosen item exceeds this, as
        long as another one does not; ``None`` skips nothing.
    authors : sequence of str, optional
        Author of each candidate (``""`` when unknown); needed with
        ``max_per_author``.
    max_per_author : int or None, default None
        At most this many books of one author (>= 1); ``None``: no cap.
    popularity : (c,) array, optional
        Readers of each candidate (finite, >= 0); needed with a positive
        ``popularity_penalty``.
    popularity_penalty : float, default 0.0
        ``beta`` >= 0, taken off the normalised relevance of the most read
        candidate (see the module notes); 0 leaves relevance as it is.
    pool : int or None, default None
        Re-rank only the ``pool`` (>= 1) most relevant candidates, ties to the
        lower item index; ``None`` re-ranks them all.
    head : int, default 0
        The first ``head`` (>= 0) picks maximise the normalised relevance
        alone; the threshold and the author cap still apply to them.

    Returns
    -------
    items : (m,) int64
        The chosen candidates in list order, ``m <= min(n, c, pool)`` (fewer
        only when the author cap leaves too few).
    scores : (m,) float32
        The running minimum of each pick's marginal score: non-increasing, so
        sorting the items by it (stably) keeps the list order.

    Raises
    ------
    ValueError
        If an argument breaks its rule; the message names it and the value.
    """
    candidates, relevance = _check(
        candidates, relevance, n, diversity, similarity_threshold, max_per_author
    )
    counts = _check_popularity(
        popularity, popularity_penalty, pool, head, len(candidates)
    )
    capped = _author_codes(authors, len(candidates), max_per_author)

    # the pool: the most relevant candidates, everything else is dropped
    if pool is not None and pool < len(candidates):
        kept = _most_relevant(candidates, relevance, pool)
        similarity = _rows(similarity, kept, len(candidates))
        candidates, relevance, capped = candidates[kept], relevance[kept], capped[kept]
        counts = None if counts is None else counts[kept]
    relevance = min_max(relevance)
    plain = relevance.astype(np.float64)
    if counts is not None and popularity_penalty > 0:
        relevance = relevance - popularity_penalty * _log_popularity(counts)
    base = (1.0 - diversity) * relevance.astype(np.float64)
    if diversity == 0 and similarity_threshold is None:
        # no similarity term: the greedy is a walk down two sorted orders
        return _sorted_picks(candidates, plain, base, n, head, capped, max_per_author)
    sims = _similarities(similarity, candidates)
    max_sim = np.zeros(len(candidates))
    open_ = np.ones(len(candidates), dtype=bool)
    per_author: dict[int, int] = {}
    chosen: list[int] = []
    marginal: list[float] = []

    while len(chosen) < n and open_.any():
        # the threshold skips close items while any item within it is left
        eligible = open_
        if similarity_threshold is not None and chosen:
            within = open_ & (max_sim <= similarity_threshold)
            eligible = within if within.any() else open_

        # best marginal score (relevance alone in the head); ties go to
        # the lower item index
        marginal_now = plain if len(chosen) < head else base - diversity * max_sim
        values = np.where(eligible, marginal_now, -np.inf)
        best = np.flatnonzero(values == values.max())
        pick = int(best[np.argmin(candidates[best])])
        chosen.append(pick)
        marginal.append(float(values[pick]))
        open_[pick] = False
        max_sim = np.maximum(max_sim, sims[pick])

        # the author cap closes an author's remaining books for good
        code = int(capped[pick])
        if code >= 0 and max_per_author is not None:
            per_author[code] = per_author.get(code, 0) + 1
            if per_author[code] >= max_per_author:
                open_ &= capped != code

    items = candidates[np.array(chosen, dtype=np.int64)]
    scores = np.minimum.accumulate(np.array(marginal, dtype=np.float64))
    logger.debug("mmr: %s of %s candidates chosen", len(items), len(candidates))
    return items.astype(np.int64), scores.astype(np.float32)


def _sorted_picks(
    candidates: np.ndarray,
    plain: np.ndarray,
    base: np.ndarray,
    n: int,
    head: int,
    capped: np.ndarray,
    max_per_author: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """What the greedy loop picks when no similarity enters the marginal
    score: the ``head`` best by ``plain``, then the rest by ``base`` (ties:
    lower item), skipping authors at the cap."""
    taken = np.zeros(len(candidates), dtype=bool)
    per_author: dict[int, int] = {}
    picks: list[int] = []
    marginal: list[float] = []
    for values, stop in ((plain, min(head, n)), (base, n)):
        for j in np.lexsort((candidates, -values)).tolist():
            if len(picks) >= stop:
                break
            code = int(capped[j])
            full = (
                max_per_author is not None and per_author.get(code, 0) >= max_per_author
            )
            if taken[j] or (code >= 0 and full):
                continue
            taken[j] = True
            picks.append(j)
            marginal.append(float(values[j]))
            if code >= 0:
                per_author[code] = per_author.get(code, 0) + 1
    chosen = np.array(picks, dtype=np.int64)
    scores = np.minimum.accumulate(np.array(marginal, dtype=np.float64))
    logger.debug("mmr: %s of %s candidates chosen", len(chosen), len(candidates))
    return candidates[chosen].astype(np.int64), scores.astype(np.float32)


def _check(
    candidates: np.ndarray,
    relevance: np.ndarray,
    n: int,
    diversity: float,
    similarity_threshold: float | None,
    max_per_author: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Validated candidates (int64) and relevance (float64)."""
    candidates = np.asarray(candidates, dtype=np.int64)
    relevance = np.asarray(relevance, dtype=np.float64)
    if candidates.ndim != 1 or relevance.shape != candidates.shape:
        raise ValueError(
            "candidates and relevance must be 1-D of one length, got "
            f"{candidates.shape} and {relevance.shape}"
        )
    if len(np.unique(candidates)) != len(candidates):
        raise ValueError("candidates must be distinct, got a repeated item index")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n!r}")
    if not 0.0 <= diversity <= 1.0:
        raise ValueError(f"diversity must be in [0, 1], got {diversity!r}")
    if similarity_threshold is not None and not np.isfinite(similarity_threshold):
        raise ValueError(
            f"similarity_threshold must be finite or None, got {similarity_threshold!r}"
        )
    if max_per_author is not None and max_per_author < 1:
        raise ValueError(f"max_per_author must be >= 1 or None, got {max_per_author!r}")
    return candidates, relevance


def _check_popularity(
    popularity: np.ndarray | None,
    popularity_penalty: float,
    pool: int | None,
    head: int,
    c: int,
) -> np.ndarray | None:
    """Validated reader counts (float64), or None when none were given."""
    if head < 0:
        raise ValueError(f"head must be >= 0, got {head!r}")
    if not (np.isfinite(popularity_penalty) and popularity_penalty >= 0):
        raise ValueError(
            f"popularity_penalty must be finite and >= 0, got {popularity_penalty!r}"
        )
    if pool is not None and pool < 1:
        raise ValueError(f"pool must be >= 1 or None, got {pool!r}")
    if popularity is None:
        if popularity_penalty > 0:
            raise ValueError(
                "popularity must give one reader count per candidate with "
                f"popularity_penalty > 0, got None (penalty {popularity_penalty!r})"
            )
        return None
    counts = np.asarray(popularity, dtype=np.float64)
    if counts.shape != (c,):
        raise ValueError(
            f"popularity must be ({c},), one count per candidate, got {counts.shape}"
        )
    if not (np.all(np.isfinite(counts)) and np.all(counts >= 0)):
        raise ValueError(
            f"popularity must be finite and >= 0, got minimum {counts.min()!r}"
        )
    return counts


def _most_relevant(candidates: np.ndarray, relevance: np.ndarray, m: int) -> np.ndarray:
    """Positions of the m most relevant candidates (non-finite last, ties by item)."""
    values = np.where(np.isfinite(relevance), relevance, -np.inf)
    return np.sort(np.lexsort((candidates, -values))[:m])


def _rows(similarity: Similarity, kept: np.ndarray, c: int) -> Similarity:
    """``similarity`` restricted to the candidates at positions ``kept``."""
    if callable(similarity):
        return similarity
    if similarity.ndim != 2 or similarity.shape[0] != c:
        raise ValueError(
            f"similarity must be a ({c}, d) matrix aligned with the "
            f"candidates, got shape {similarity.shape}"
        )
    return similarity[kept]


def _log_popularity(counts: np.ndarray) -> np.ndarray:
    """``log(1 + count) / log(1 + max count)`` in [0, 1]; 0 when all are 0."""
    logs = np.log1p(counts)
    top = logs.max() if len(logs) else 0.0
    return logs / top if top > 0 else np.zeros_like(logs)


def _similarities(similarity: Similarity, candidates: np.ndarray) -> np.ndarray:
    """The (c, c) similarity matrix of the candidates."""
    c = len(candidates)
    if callable(similarity):
        sims = np.asarray(similarity(candidates), dtype=np.float64)
    else:
        if similarity.ndim != 2 or similarity.shape[0] != c:
            raise ValueError(
                f"similarity must be a ({c}, d) matrix aligned with the "
                f"candidates, got shape {similarity.shape}"
            )
        sims = cosine_matrix(similarity)
    if sims.shape != (c, c):
        raise ValueError(
            f"similarity function must return ({c}, {c}), got {sims.shape}"
        )
    return np.nan_to_num(sims, nan=0.0, posinf=1.0, neginf=-1.0)


def _author_codes(
    authors: Sequence[str] | None, c: int, max_per_author: int | None
) -> np.ndarray:
    """An int code per candidate's author; -1 for none or when nothing is capped."""
    if max_per_author is None:
        return np.full(c, -1, dtype=np.int64)
    if authors is None or len(authors) != c:
        got = None if authors is None else len(authors)
        raise ValueError(
            f"authors must give one author per candidate ({c}) with "
            f"max_per_author, got {got}"
        )
    codes: dict[str, int] = {}
    out = np.full(c, -1, dtype=np.int64)
    for j, author in enumerate(authors):
        key = author.strip().lower()
        if key:
            out[j] = codes.setdefault(key, len(codes))
    return out


# -- coverage across readers: the exposure ledger --------------------------------


MAX_EXPOSURE_PLACES = 10_000
"""Bound of ``head`` and ``depth``: far beyond any list or candidate pool."""
MAX_EXPOSURE_COUNT = 2**31 - 1
"""Bound of ``limit`` and ``window``: the counters are int32."""


MAX_EXPOSURE_PLACES = 10_000
"""Bound of ``head`` and ``depth``: far beyond any list or candidate pool."""
MAX_EXPOSURE_COUNT = 2**31 - 1
"""Bound of ``limit`` and ``window``: the counters are int32."""


@dataclass(frozen=True)
class ExposureSettings:
    """Which places of a list the exposure ledger may fill, and from where.

    Attributes
    ----------
    head : int in 0..MAX_EXPOSURE_PLACES
        Places kept in relevance order.
    depth : int in 1..MAX_EXPOSURE_PLACES
        How deep in the reader's ranking the other places may reach.
    limit : int in 1..MAX_EXPOSURE_COUNT, default 1
        A book shown this many times within the window counts as shown.
    window : int in 1..MAX_EXPOSURE_COUNT, default 20000
        Lists per ledger generation: counts cover the last ``window`` to
        ``2 * window`` lists served.
    """

    head: int
    depth: int
    limit: int = 1
    window: int = 20_000

    def __post_init__(self) -> None:
        for name, low, high in (
            ("head", 0, MAX_EXPOSURE_PLACES),
            ("depth", 1, MAX_EXPOSURE_PLACES),
            ("limit", 1, MAX_EXPOSURE_COUNT),
            ("window", 1, MAX_EXPOSURE_COUNT),
        ):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or not low <= value <= high
            ):
                raise ValueError(
                    f"exposure.{name} must be an integer in {low}..{high}, "
                    f"got {str(value)[:40]}"
                )


class ExposureLedger:
    """How often each book was placed in a list lately; arranges new lists.

    Counts live in two generations of ``window`` lists each: when the
    current one is full it becomes the previous one and a fresh one starts,
    so a book's count covers the last ``window`` to ``2 * window`` lists.
    Thread-safe: a list is arranged and recorded under one lock, so two
    concurrent lists never both take the same unshown book.

    Parameters
    ----------
    n_items : int
        Books of the catalogue (rows ``0 .. n_items - 1``).
    settings : ExposureSettings
    """

    def __init__(self, n_items: int, settings: ExposureSettings) -> None:
        if n_items < 0:
            raise ValueError(f"n_items must be >= 0, got {n_items!r}")
        self.settings = settings
        self._current = np.zeros(n_items, dtype=np.int32)
        self._previous = np.zeros(n_items, dtype=np.int32)
        self._lists = 0
        self._lock = threading.Lock()

    def clear(self) -> None:
        """Forget every list recorded (e.g. the server's warm-up calls)."""
        with self._lock:
            self._current[:] = 0
            self._previous[:] = 0
            self._lists = 0

    def shown(self, items: np.ndarray) -> np.ndarray:
        """(len(items),) int: lists each book was placed in, this window."""
        with self._lock:
            return self._current[items] + self._previous[items]

    def arrange(self, ranked: np.ndarray, n: int) -> np.ndarray:
        """Positions into ``ranked`` of an ``n``-book list, and record it.

        Parameters
        ----------
        ranked : (c,) int
            Distinct book rows, best first.
        n : int
            Books wanted (>= 0).

        Returns
        -------
        (min(n, c),) int64
            The first ``head`` positions; then, in order, the positions within
            ``depth`` whose books were shown fewer than ``limit`` times; then
            the best remaining positions.
        """
        ranked = np.asarray(ranked, dtype=np.int64)
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n!r}")
        m = min(n, len(ranked))
        head = min(self.settings.head, m)
        with self._lock:
            reach = ranked[: self.settings.depth]
            shown = self._current[reach] + self._previous[reach]
            fresh = np.flatnonzero(shown[head:] < self.settings.limit) + head
            chosen = np.concatenate([np.arange(head), fresh[: m - head]])
            if len(chosen) < m:
                rest = np.setdiff1d(np.arange(len(ranked)), chosen)[: m - len(chosen)]
                chosen = np.concatenate([chosen, rest])
            chosen = chosen.astype(np.int64)
            self._current[ranked[chosen]] += 1
            self._lists += 1
            if self._lists >= self.settings.window:
                self._previous, self._current = self._current, self._previous
                self._current[:] = 0
                self._lists = 0
        return chosen
