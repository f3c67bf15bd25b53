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

It runs at request time on a few hundred candidates, with numpy only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
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

    Returns
    -------
    items : (m,) int64
        The chosen candidates in list order, ``m <= min(n, c)`` (fewer only
        when the author cap leaves too few).
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
    sims = _similarities(similarity, candidates)
    capped = _author_codes(authors, len(candidates), max_per_author)

    relevance = min_max(relevance)
    base = (1.0 - diversity) * relevance.astype(np.float64)
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

        # best marginal score; ties go to the lower item index
        values = np.where(eligible, base - diversity * max_sim, -np.inf)
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
