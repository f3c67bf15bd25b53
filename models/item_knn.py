"""Item neighbours: "readers of this book also read ...".

Two books are similar by the cosine of their reader columns in the binary
reader x book matrix. Each book keeps only its ``k`` most similar other books
(a sparse item x item matrix ``S``). A reader's score for a candidate ``j`` is

    score_j = sum over history items i of  w_i * S[i, j],

so the history item with the largest term is the reason to show: see
``top_contributor``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import scipy.sparse as sp

from bookverse.models.base import UserProfile, clean_history, top_k
from bookverse.models.dataset import Dataset

logger = logging.getLogger(__name__)

_SIMILARITY_FILE = "item_knn.similarity.npz"


class ItemKNN:
    """Item-item cosine neighbours.

    Parameters
    ----------
    k : int, default 100
        Neighbours kept per item (the item itself is not one of them); >= 1.
    num_threads : int, default 0
        Threads used by ``implicit`` while fitting; 0 means every core.

    Attributes
    ----------
    similarity_ : (n_items, n_items) float32 CSR
        Row ``i`` holds the cosines of item ``i`` with its neighbours.
    """

    name: ClassVar[str] = "item_knn"

    def __init__(self, k: int = 100, num_threads: int = 0) -> None:
        self.k = k
        self.num_threads = num_threads
        self.similarity_: sp.csr_matrix | None = None

    def _check_params(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k!r}")
        if self.num_threads < 0:
            raise ValueError(f"num_threads must be >= 0, got {self.num_threads!r}")

    def fit(self, dataset: Dataset) -> Self:
        """Compute the top-``k`` cosine neighbours of every item.

        Raises
        ------
        ValueError
            If ``k`` or ``num_threads`` breaks its rule.
        """
        from implicit.nearest_neighbours import ItemItemRecommender

        self._check_params()
        started = time.perf_counter()

        # cosine = dot product of reader columns scaled to unit length
        user_items = dataset.user_items()
        norms = np.sqrt(np.asarray(user_items.multiply(user_items).sum(axis=0)))
        unit = sp.csr_matrix(user_items.multiply(1.0 / np.maximum(norms, 1e-12)))

        # implicit counts the item itself among its K: ask for one more, drop it
        knn = ItemItemRecommender(K=self.k + 1, num_threads=self.num_threads)
        knn.fit(unit.astype(np.float64), show_progress=False)
        similarity = sp.csr_matrix(knn.similarity, dtype=np.float32)
        similarity.setdiag(0.0)
        similarity.eliminate_zeros()
        similarity.sort_indices()
        self.similarity_ = similarity

        logger.info(
            "item_knn fitted: %s items, %s links in %.1fs",
            dataset.n_items,
            similarity.nnz,
            time.perf_counter() - started,
        )
        return self

    def _fitted(self) -> sp.csr_matrix:
        if self.similarity_ is None:
            raise RuntimeError("item_knn model is not fitted: call fit or load")
        return self.similarity_

    def _history_scores(self, items: np.ndarray, weights: np.ndarray) -> np.ndarray:
        # sum_i w_i * S[i, :] as a dense (n_items,) row
        similarity = self._fitted()
        if len(items) == 0:
            return np.zeros(similarity.shape[1], dtype=np.float32)
        rows = similarity[items]
        scores = np.asarray(rows.T @ weights.astype(np.float32), dtype=np.float32)
        return np.nan_to_num(scores.ravel(), nan=0.0, posinf=0.0, neginf=0.0)

    def score(
        self, profile: UserProfile, items: np.ndarray | None = None
    ) -> np.ndarray:
        """Weighted sum of neighbour similarities from the reader's history.

        Returns
        -------
        (len(items),) or (n_items,) float32, finite; zeros for no history.

        Raises
        ------
        ValueError
            If a history item is outside ``[0, n_items)``.
        """
        similarity = self._fitted()
        history, weights = clean_history(
            profile.items, profile.weights, similarity.shape[0], np.float32
        )
        scores = self._history_scores(history, weights)
        if items is None:
            return scores
        return scores[np.asarray(items, dtype=np.int64)]

    def score_users(self, user_items: sp.csr_matrix, users: np.ndarray) -> np.ndarray:
        """``user_items[users] @ S`` as a dense (len(users), n_items) float32."""
        similarity = self._fitted()
        scores = (user_items[users] @ similarity).toarray()
        return np.asarray(scores, dtype=np.float32)

    def neighbours(
        self, items: np.ndarray, k: int, weights: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best neighbours of a set of items, the items left out.

        Parameters
        ----------
        items : (n,) int
            Seed items, e.g. a reader's recent books.
        k : int
            Neighbours wanted.
        weights : (n,) float, optional
            Weight of each seed; 1 when omitted.

        Returns
        -------
        items : (m,) int64, best first, ``m <= k``; only items with a
            positive summed similarity.
        scores : (m,) float32

        Raises
        ------
        ValueError
            If a seed is outside ``[0, n_items)``.
        """
        similarity = self._fitted()
        seeds = np.asarray(items, dtype=np.int64)
        if weights is None:
            weights = np.ones(len(seeds), dtype=np.float32)
        seeds, weights = clean_history(seeds, weights, similarity.shape[0], np.float32)
        scores = self._history_scores(seeds, weights)
        scores[seeds] = 0.0
        best = top_k(scores, k)
        best = best[scores[best] > 0]
        return best, scores[best]

    def top_contributor(self, profile: UserProfile, item: int) -> int | None:
        """The history item adding most to ``item``'s score, if any adds.

        Returns
        -------
        int or None
            An item index from ``profile.items``; ``None`` when no history
            item is a neighbour of ``item``.

        Raises
        ------
        ValueError
            If ``item`` or a history item is outside ``[0, n_items)``.
        """
        similarity = self._fitted()
        if not 0 <= item < similarity.shape[0]:
            raise ValueError(f"item must be in [0, {similarity.shape[0]}), got {item}")
        history, weights = clean_history(
            profile.items, profile.weights, similarity.shape[0], np.float32
        )
        if len(history) == 0:
            return None
        terms = np.asarray(similarity[history, item].toarray()).ravel() * weights
        best = int(np.argmax(terms))
        return int(history[best]) if terms[best] > 0 else None

    def params(self) -> dict[str, Any]:
        return {"k": self.k, "num_threads": self.num_threads}

    def save(self, directory: Path) -> list[str]:
        """Write the neighbour matrix as ``item_knn.similarity.npz``."""
        sp.save_npz(directory / _SIMILARITY_FILE, self._fitted(), compressed=False)
        return [_SIMILARITY_FILE]

    @classmethod
    def load(cls, directory: Path, params: dict[str, Any]) -> Self:
        """Read what ``save`` wrote.

        Raises
        ------
        ValueError
            If the file cannot be read or the matrix is not square.
        """
        model = cls(**params)
        model.similarity_ = _load_csr(directory / _SIMILARITY_FILE)
        if model.similarity_.shape[0] != model.similarity_.shape[1]:
            raise ValueError(
                f"{_SIMILARITY_FILE}: matrix must be square, "
                f"got {model.similarity_.shape}"
            )
        return model


def _load_csr(path: Path) -> sp.csr_matrix:
    """``scipy.sparse.load_npz`` (never pickle) as float32 CSR, naming the file."""
    try:
        matrix = sp.load_npz(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path.name}: cannot read sparse matrix ({exc})") from exc
    return sp.csr_matrix(matrix, dtype=np.float32)
