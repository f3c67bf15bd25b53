"""EASE: a shallow linear item-item autoencoder with a closed-form solution.

Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019. With
``X`` the binary reader x book matrix, the item-item weights ``B`` minimise
``||X - X B||^2 + lambda ||B||^2`` subject to ``diag(B) = 0``, which has the
closed form

    P = (X^T X + lambda I)^-1,    B = I - P diag(1 / diag(P)),

that is ``B_ij = -P_ij / P_jj`` off the diagonal and ``B_jj = 0``. A reader's
score is their (weighted) history row times ``B``: no per-reader state, so a
reader unknown to training is scored exactly like a known one.

``B`` is dense, so the model keeps only the ``max_items`` most-read books
(ties to the lower index). A book outside that set contributes nothing when it
appears in a history, and scores level with the reader's lowest-scored kept
book: at the bottom of the ranking, yet finite and within the range of the
reader's scores, so that a per-list min-max normalisation (``hybrid``) does
not squash the kept books together.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import scipy.sparse as sp

from bookverse.models.base import (
    UserProfile,
    check_rules,
    clean_history,
    load_array,
    top_k,
)
from bookverse.models.dataset import Dataset

logger = logging.getLogger(__name__)

_WEIGHTS_FILE = "ease.weights.npy"
_ROWS_FILE = "ease.item_rows.npy"


class EASE:
    """Closed-form item-item linear model (EASE^R).

    Parameters
    ----------
    regularization : float, default 400.0
        ``lambda`` of the ridge term; > 0. 400 suits MovieLens-100k.
    max_items : int, default 10000
        Most-read books kept in ``B``; >= 1. ``B`` takes ``4 max_items^2``
        bytes (400 MB at 10000) and fitting inverts a float64 matrix of the
        same size.

    Attributes
    ----------
    weights_ : (n_kept, n_kept) float32
        ``B`` over the kept books, zero diagonal.
    item_rows_ : (n_items,) int64
        Row (and column) of each catalogue book in ``weights_``; -1 for a book
        outside the kept set.
    """

    name: ClassVar[str] = "ease"

    def __init__(self, regularization: float = 400.0, max_items: int = 10000) -> None:
        self.regularization = regularization
        self.max_items = max_items
        self.weights_: np.ndarray | None = None
        self.item_rows_: np.ndarray | None = None

    def _check_params(self) -> None:
        rules = (
            ("regularization", self.regularization, self.regularization > 0, "> 0"),
            ("max_items", self.max_items, self.max_items >= 1, ">= 1"),
        )
        check_rules(rules)

    def fit(self, dataset: Dataset) -> Self:
        """Solve for ``B`` on the ``max_items`` most-read books.

        Raises
        ------
        ValueError
            If a hyperparameter breaks its rule.
        RuntimeError
            If the solution is not finite.
        """
        self._check_params()
        started = time.perf_counter()
        user_items = dataset.user_items()

        # keep the most-read books, in catalogue order
        counts = np.asarray(user_items.sum(axis=0)).ravel()
        kept = np.sort(top_k(counts, self.max_items))
        item_rows = np.full(dataset.n_items, -1, dtype=np.int64)
        item_rows[kept] = np.arange(len(kept))

        # P = (X^T X + lambda I)^-1 ;  B = -P / diag(P) column-wise, diag(B) = 0
        x = user_items[:, kept]
        gram = (x.T @ x).toarray().astype(np.float64)
        gram[np.diag_indices_from(gram)] += self.regularization
        inverse = np.linalg.inv(gram)
        weights = inverse / -np.diag(inverse)
        np.fill_diagonal(weights, 0.0)
        if not np.all(np.isfinite(weights)):
            raise RuntimeError("ease solution is not finite; raise regularization")

        self.weights_ = weights.astype(np.float32)
        self.item_rows_ = item_rows
        logger.info(
            "ease fitted: %s of %s items kept, lambda=%s in %.1fs",
            len(kept),
            dataset.n_items,
            self.regularization,
            time.perf_counter() - started,
        )
        return self

    def _fitted(self) -> tuple[np.ndarray, np.ndarray]:
        if self.weights_ is None or self.item_rows_ is None:
            raise RuntimeError("ease model is not fitted: call fit or load")
        return self.weights_, self.item_rows_

    def history_row(self, profile: UserProfile) -> np.ndarray:
        """The profile's weighted history over the kept books.

        Repeated items add up; non-finite or negative weights and books
        outside the kept set drop out.

        Returns
        -------
        (n_kept,) float32

        Raises
        ------
        ValueError
            If ``profile.items`` and ``profile.weights`` differ in shape or an
            item index is outside ``[0, n_items)``.
        """
        weights, item_rows = self._fitted()
        items, strengths = clean_history(
            profile.items, profile.weights, len(item_rows), np.float32
        )
        rows = item_rows[items]
        keep = rows >= 0
        row = np.zeros(len(weights), dtype=np.float32)
        np.add.at(row, rows[keep], strengths[keep])
        return row

    def score(
        self, profile: UserProfile, items: np.ndarray | None = None
    ) -> np.ndarray:
        """History row times ``B``; books not kept score the row's kept minimum.

        Returns
        -------
        (len(items),) or (n_items,) float32, finite

        Raises
        ------
        ValueError
            As ``history_row``.
        """
        weights, item_rows = self._fitted()
        row = self.history_row(profile)

        # h @ B needs only the history's rows of B; the floor needs the full row
        history = np.flatnonzero(row)
        kept_scores = row[history] @ np.asarray(weights[history])
        kept_scores = np.nan_to_num(kept_scores, nan=0.0, posinf=0.0, neginf=0.0)
        floor = kept_scores.min() if len(kept_scores) else 0.0

        rows = item_rows if items is None else item_rows[np.asarray(items, np.int64)]
        scores = np.full(len(rows), floor, dtype=np.float32)
        scores[rows >= 0] = kept_scores[rows[rows >= 0]]
        return scores

    def score_users(self, user_items: sp.csr_matrix, users: np.ndarray) -> np.ndarray:
        """Training rows of ``user_items`` times ``B``: (len(users), n_items).

        Books not kept score each row's kept minimum, as in ``score``.
        """
        weights, item_rows = self._fitted()
        kept = np.flatnonzero(item_rows >= 0)
        x = sp.csr_matrix(user_items[users][:, kept], dtype=np.float32)
        kept_scores = np.asarray(x @ np.asarray(weights), dtype=np.float32)
        kept_scores = np.nan_to_num(kept_scores, nan=0.0, posinf=0.0, neginf=0.0)
        floor = kept_scores.min(axis=1, keepdims=True, initial=np.inf)
        scores = np.repeat(np.where(np.isfinite(floor), floor, 0.0), len(item_rows), 1)
        scores[:, kept] = kept_scores
        return scores.astype(np.float32)

    def params(self) -> dict[str, Any]:
        return {"regularization": self.regularization, "max_items": self.max_items}

    def save(self, directory: Path) -> list[str]:
        """Write ``B`` (float32) and the item rows (int64) as ``.npy``."""
        weights, item_rows = self._fitted()
        np.save(directory / _WEIGHTS_FILE, weights, allow_pickle=False)
        np.save(directory / _ROWS_FILE, item_rows, allow_pickle=False)
        return [_WEIGHTS_FILE, _ROWS_FILE]

    @classmethod
    def load(cls, directory: Path, params: dict[str, Any]) -> Self:
        """Read what ``save`` wrote; ``B`` memory-mapped.

        Raises
        ------
        ValueError
            Naming the file, if one cannot be read, ``B`` is not square, or
            the item rows do not address every row of ``B`` once.
        """
        model = cls(**params)
        weights = load_array(directory / _WEIGHTS_FILE)
        item_rows = np.asarray(load_array(directory / _ROWS_FILE, mmap=False))
        if weights.ndim != 2 or weights.shape[0] != weights.shape[1]:
            raise ValueError(f"{_WEIGHTS_FILE}: must be square, got {weights.shape}")
        kept = np.sort(item_rows[item_rows >= 0])
        if item_rows.ndim != 1 or not np.array_equal(kept, np.arange(len(weights))):
            raise ValueError(
                f"{_ROWS_FILE}: must map books onto rows 0..{len(weights) - 1} "
                f"once each, got {kept.size} rows over shape {item_rows.shape}"
            )
        model.weights_, model.item_rows_ = weights, item_rows.astype(np.int64)
        return model
