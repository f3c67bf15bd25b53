"""Top-k ranking metrics and list-level measures of a recommender.

Accuracy metrics take a hit matrix: ``hits[u, i]`` is True when the book at
rank ``i + 1`` of reader ``u``'s list is one of their test books, and
``n_relevant[u]`` is the number of their test books. For one reader, with
``rel`` the test set and ``top`` the k books recommended:

- precision@k = hits in top / k
- recall@k    = hits in top / |rel|
- nDCG@k      = DCG(top) / DCG(ideal list of min(k, |rel|) hits),
                gain ``1 / log2(rank + 1)``, rank from 1
- MAP@k       = (sum over ranks i <= k with a hit of precision@i) / |rel|

``ranking_metrics`` averages them over readers with at least one test book.
The list measures (coverage, diversity, concentration, overlap) take the
recommended lists themselves, ``top[u, i]`` an item index, ``-1`` for an
empty slot.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp


def _discounts(k: int) -> np.ndarray:
    """``1 / log2(rank + 1)`` for ranks 1..k: (k,) float64."""
    return 1.0 / np.log2(np.arange(2, k + 2))


def _check_hits(hits: np.ndarray, n_relevant: np.ndarray) -> tuple[np.ndarray, ...]:
    hits = np.asarray(hits, dtype=bool)
    n_relevant = np.asarray(n_relevant, dtype=np.float64)
    if hits.ndim != 2 or n_relevant.shape != (len(hits),):
        raise ValueError(
            "hits must be (n_users, k) and n_relevant (n_users,), "
            f"got {hits.shape} and {n_relevant.shape}"
        )
    if np.any(hits.sum(axis=1) > n_relevant):
        raise ValueError("n_relevant must be >= the hits of each reader")
    return hits, n_relevant


def precision_at_k(hits: np.ndarray) -> np.ndarray:
    """Per-reader precision@k, k = ``hits.shape[1]``: (n_users,) float64."""
    hits = np.asarray(hits, dtype=bool)
    return hits.sum(axis=1) / hits.shape[1]


def recall_at_k(hits: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    """Per-reader recall@k: (n_users,) float64; 0 where ``n_relevant`` is 0."""
    hits, n_relevant = _check_hits(hits, n_relevant)
    return hits.sum(axis=1) / np.maximum(n_relevant, 1.0)


def ndcg_at_k(hits: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    """Per-reader nDCG@k, ideal list of ``min(k, |rel|)`` hits: (n_users,).

    0 where ``n_relevant`` is 0.
    """
    hits, n_relevant = _check_hits(hits, n_relevant)
    k = hits.shape[1]
    discounts = _discounts(k)
    dcg = hits @ discounts

    # ideal DCG: cumulative discounts up to min(k, |rel|)
    ideal = np.concatenate(([0.0], np.cumsum(discounts)))
    idcg = ideal[np.minimum(n_relevant, k).astype(np.int64)]
    return np.divide(dcg, idcg, out=np.zeros_like(dcg), where=idcg > 0)


def average_precision_at_k(hits: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    """Per-reader AP@k, divided by |rel| (not min(k, |rel|)): (n_users,).

    0 where ``n_relevant`` is 0.
    """
    hits, n_relevant = _check_hits(hits, n_relevant)
    ranks = np.arange(1, hits.shape[1] + 1)
    precision_at_i = np.cumsum(hits, axis=1) / ranks
    total = (precision_at_i * hits).sum(axis=1)
    return total / np.maximum(n_relevant, 1.0)


def ranking_metrics(hits: np.ndarray, n_relevant: np.ndarray) -> dict[str, float]:
    """Means of precision, recall, nDCG and MAP @k over readers with |rel| >= 1.

    Parameters
    ----------
    hits : (n_users, k) bool
    n_relevant : (n_users,) int

    Returns
    -------
    dict
        ``precision@k``, ``recall@k``, ``ndcg@k``, ``map@k`` (k spelled out)
        and ``n_users``, the readers averaged over. NaN metrics if none.

    Raises
    ------
    ValueError
        If the shapes disagree or a reader has more hits than test books.
    """
    hits, n_relevant = _check_hits(hits, n_relevant)
    k = hits.shape[1]
    scored = n_relevant > 0
    hits, n_relevant = hits[scored], n_relevant[scored]
    per_user = {
        f"precision@{k}": precision_at_k(hits),
        f"recall@{k}": recall_at_k(hits, n_relevant),
        f"ndcg@{k}": ndcg_at_k(hits, n_relevant),
        f"map@{k}": average_precision_at_k(hits, n_relevant),
    }
    means = {
        name: float(values.mean()) if len(values) else float("nan")
        for name, values in per_user.items()
    }
    means["n_users"] = float(len(hits))
    return means


def _recommendation_counts(top: np.ndarray, n_items: int) -> np.ndarray:
    """How often each item appears in the lists: (n_items,) int64."""
    top = np.asarray(top, dtype=np.int64)
    return np.bincount(top[top >= 0], minlength=n_items)


def catalogue_coverage(top: np.ndarray, n_items: int) -> float:
    """Share of the catalogue recommended to at least one reader, in [0, 1].

    Raises
    ------
    ValueError
        If ``n_items`` is not positive.
    """
    if n_items <= 0:
        raise ValueError(f"n_items must be > 0, got {n_items}")
    return float(np.count_nonzero(_recommendation_counts(top, n_items)) / n_items)


def gini_index(top: np.ndarray, n_items: int) -> float:
    """Gini coefficient of how often each catalogue item is recommended.

    Items never recommended count as 0. 0 means every item is recommended
    equally often; values near 1 mean a few (popular) items fill the lists.
    ``G = sum_i (2 i - n - 1) c_(i) / (n * sum c)`` over counts sorted
    ascending, ``i`` from 1.

    Returns
    -------
    float in [0, 1); 0 when nothing is recommended.

    Raises
    ------
    ValueError
        If ``n_items`` is not positive.
    """
    if n_items <= 0:
        raise ValueError(f"n_items must be > 0, got {n_items}")
    counts = np.sort(_recommendation_counts(top, n_items)).astype(np.float64)
    total = counts.sum()
    if total == 0:
        return 0.0
    positions = 2.0 * np.arange(1, n_items + 1) - n_items - 1
    return float(positions @ counts / (n_items * total))


def cosine_similarity_fn(
    vectors: np.ndarray | sp.spmatrix,
) -> Callable[[np.ndarray], np.ndarray]:
    """A similarity function for ``intra_list_diversity`` from item vectors.

    Parameters
    ----------
    vectors : (n_items, d) dense or sparse
        E.g. ALS item factors or TF-IDF rows. A zero row is similar to nothing.

    Returns
    -------
    callable
        ``similarity(items)`` -> (len(items), len(items)) cosine matrix.
    """
    if sp.issparse(vectors):
        matrix = sp.csr_matrix(vectors, dtype=np.float64)
        norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
    else:
        matrix = np.asarray(vectors, dtype=np.float64)
        norms = np.linalg.norm(matrix, axis=1)
    inverse = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)

    def similarity(items: np.ndarray) -> np.ndarray:
        rows = matrix[items]
        gram = rows @ rows.T
        gram = gram.toarray() if sp.issparse(gram) else np.asarray(gram)
        scale = inverse[items]
        return gram * scale[:, None] * scale[None, :]

    return similarity


def intra_list_diversity(
    top: np.ndarray, similarity: Callable[[np.ndarray], np.ndarray]
) -> float:
    """Mean over readers of the mean pairwise dissimilarity within their list.

    ``ILD(list) = mean over pairs i < j of (1 - similarity(i, j))``; lists
    with fewer than two items are skipped.

    Parameters
    ----------
    top : (n_users, k) int
        Recommended items, ``-1`` for an empty slot.
    similarity : callable
        ``similarity(items)`` -> (n, n) matrix, e.g. ``cosine_similarity_fn``.

    Returns
    -------
    float; NaN when no list has two items.
    """
    values = []
    for row in np.asarray(top, dtype=np.int64):
        items = row[row >= 0]
        if len(items) < 2:
            continue
        upper = np.triu_indices(len(items), k=1)
        values.append(float(np.mean(1.0 - similarity(items)[upper])))
    return float(np.mean(values)) if values else float("nan")


def mean_pairwise_overlap(top: np.ndarray) -> float:
    """Mean share of a list shared with another reader's list, over all pairs.

    For readers ``u != v``: ``|top_u & top_v| / k``, averaged over every
    unordered pair, computed exactly from item counts: the pairs sharing item
    ``i`` number ``c_i (c_i - 1) / 2``. 1 means everyone gets the same list.

    Parameters
    ----------
    top : (n_users, k) int
        Recommended items (distinct within a list), ``-1`` for an empty slot.

    Returns
    -------
    float in [0, 1]; NaN with fewer than two readers.
    """
    top = np.asarray(top, dtype=np.int64)
    n_users, k = top.shape
    if n_users < 2 or k == 0:
        return float("nan")
    counts = np.bincount(top[top >= 0]).astype(np.float64)
    shared = (counts * (counts - 1.0) / 2.0).sum()
    return float(shared / (n_users * (n_users - 1) / 2.0) / k)
