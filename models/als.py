"""Implicit-feedback matrix factorisation (ALS), with fold-in for new history.

Training factorises the binary reader x book matrix with the ``implicit``
library (Hu, Koren and Volinsky, "Collaborative Filtering for Implicit
Feedback Datasets", 2008): preference ``p_ui = 1`` where the reader took the
book, confidence ``c_ui = 1 + alpha * w_ui``, and ``c_ui = 1, p_ui = 0``
elsewhere. ``implicit`` 0.7 reads the matrix values as the confidence itself
and regularises with a plain ``lambda * I`` (no scaling by history length), so
``fit`` hands it ``1 + alpha`` for every interaction.

Serving needs numpy and faiss only. A reader whose history is not exactly the
training one (tracked events, or a reader unknown to training) is *folded in*:
their vector is the exact solution of one ALS half-step against the stored
item factors,

    x_u = (YtY + Y_u^T (C_u - I) Y_u + lambda I)^-1  Y_u^T C_u p_u,

with ``YtY`` computed once when the model is fitted or loaded.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import faiss
import numpy as np
import scipy.sparse as sp

from bookverse.models.base import (
    UserProfile,
    check_rules,
    clean_history,
    load_array,
    stored_row,
    top_k,
)
from bookverse.models.dataset import Dataset

logger = logging.getLogger(__name__)

_USER_FILE = "als.user_factors.npy"
_ITEM_FILE = "als.item_factors.npy"
_INDEX_FILE = "als.item_factors.faiss"


@dataclass(frozen=True)
class _Fitted:
    """Everything fit or load produces, set together."""

    user_factors: np.ndarray  # (n_users, factors) float32
    item_factors: np.ndarray  # (n_items, factors) float32
    yty: np.ndarray  # (factors, factors) float64, Y^T Y
    item_norms: np.ndarray  # (n_items,) float32
    index: faiss.Index  # inner product over item_factors


class ALS:
    """Alternating least squares for implicit feedback.

    Parameters
    ----------
    factors : int, default 64
        Latent dimensions; >= 1.
    regularization : float, default 0.05
        ``lambda`` of the ridge term; > 0.
    alpha : float, default 10.0
        Confidence slope: ``c = 1 + alpha * w``; >= 0.
    iterations : int, default 15
        Alternating sweeps over readers and items; >= 1.
    random_state : int, default 0
        Seed of the initial factors.
    num_threads : int, default 0
        Threads used by ``implicit`` while fitting; 0 means every core.

    Attributes
    ----------
    user_factors : (n_users, factors) float32
    item_factors : (n_items, factors) float32
    """

    name: ClassVar[str] = "als"

    def __init__(
        self,
        factors: int = 64,
        regularization: float = 0.05,
        alpha: float = 10.0,
        iterations: int = 15,
        random_state: int = 0,
        num_threads: int = 0,
    ) -> None:
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.random_state = random_state
        self.num_threads = num_threads
        self._state: _Fitted | None = None

    def _check_params(self) -> None:
        rules = (
            ("factors", self.factors, self.factors >= 1, ">= 1"),
            ("regularization", self.regularization, self.regularization > 0, "> 0"),
            ("alpha", self.alpha, self.alpha >= 0, ">= 0"),
            ("iterations", self.iterations, self.iterations >= 1, ">= 1"),
            ("num_threads", self.num_threads, self.num_threads >= 0, ">= 0"),
        )
        check_rules(rules)

    def fit(self, dataset: Dataset) -> Self:
        """Factorise ``dataset.user_items()`` with ``implicit``.

        Raises
        ------
        ValueError
            If a hyperparameter breaks its rule.
        """
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        self._check_params()
        confidence = dataset.user_items()
        confidence.data = 1.0 + self.alpha * confidence.data

        # implicit runs its own threads; a threaded BLAS underneath slows it down
        started = time.perf_counter()
        with threadpool_limits(limits=1, user_api="blas"):
            als = AlternatingLeastSquares(
                factors=self.factors,
                regularization=self.regularization,
                alpha=1.0,
                iterations=self.iterations,
                random_state=self.random_state,
                num_threads=self.num_threads,
            )
            als.fit(confidence, show_progress=False)

        self._set_factors(
            np.ascontiguousarray(als.user_factors, dtype=np.float32),
            np.ascontiguousarray(als.item_factors, dtype=np.float32),
        )
        logger.info(
            "als fitted: %s readers x %s items, %s factors in %.1fs",
            dataset.n_users,
            dataset.n_items,
            self.factors,
            time.perf_counter() - started,
        )
        return self

    def _set_factors(
        self,
        user_factors: np.ndarray,
        item_factors: np.ndarray,
        index: faiss.Index | None = None,
    ) -> None:
        # cached once per fit or load: the Gram matrix, norms and the IP index
        items64 = np.asarray(item_factors, dtype=np.float64)
        if index is None:
            index = faiss.IndexFlatIP(item_factors.shape[1])
            index.add(np.ascontiguousarray(item_factors, dtype=np.float32))
        self._state = _Fitted(
            user_factors=user_factors,
            item_factors=item_factors,
            yty=items64.T @ items64,
            item_norms=np.linalg.norm(items64, axis=1).astype(np.float32),
            index=index,
        )

    def _fitted(self) -> _Fitted:
        if self._state is None:
            raise RuntimeError("als model is not fitted: call fit or load")
        return self._state

    @property
    def user_factors(self) -> np.ndarray:
        """(n_users, factors) float32 training reader factors."""
        return self._fitted().user_factors

    @property
    def item_factors(self) -> np.ndarray:
        """(n_items, factors) float32 item factors."""
        return self._fitted().item_factors

    def fold_in(self, items: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Reader vector solved from a history, as one exact ALS step.

        Parameters
        ----------
        items : (n,) int
            Item indices of the history (repeats add up).
        weights : (n,) float
            Interaction strengths ``w``; confidence is ``1 + alpha * w``.
            Non-finite or negative weights drop their item.

        Returns
        -------
        (factors,) float32
            Zeros for an empty history or a solve that is not finite.

        Raises
        ------
        ValueError
            If an item index is outside ``[0, n_items)``.
        """
        state = self._fitted()
        item_factors = state.item_factors
        items, weights = clean_history(items, weights, len(item_factors))
        if len(items) == 0:
            return np.zeros(item_factors.shape[1], dtype=np.float32)

        # A = YtY + Y_u^T (C_u - I) Y_u + lambda I ;  b = Y_u^T C_u p_u
        y_u = np.asarray(item_factors[items], dtype=np.float64)
        confidence = 1.0 + self.alpha * weights.astype(np.float64)
        a = state.yty + (y_u.T * (confidence - 1.0)) @ y_u
        a[np.diag_indices_from(a)] += self.regularization
        b = y_u.T @ confidence

        vector = np.linalg.solve(a, b)
        if not np.all(np.isfinite(vector)):
            logger.warning("als fold-in gave a non-finite vector; using zeros")
            return np.zeros(item_factors.shape[1], dtype=np.float32)
        return vector.astype(np.float32)

    def user_vector(self, profile: UserProfile) -> np.ndarray:
        """The stored factor of a training reader, else the folded-in one.

        Returns
        -------
        (factors,) float32

        Raises
        ------
        ValueError
            If ``profile.user_index`` is outside ``[0, n_users)`` or an item
            index is outside ``[0, n_items)``.
        """
        user_factors = self._fitted().user_factors
        if profile.user_index is None:
            return self.fold_in(profile.items, profile.weights)
        return stored_row(user_factors, profile.user_index)

    def score(
        self, profile: UserProfile, items: np.ndarray | None = None
    ) -> np.ndarray:
        """Dot products of the reader vector with item factors.

        Returns
        -------
        (len(items),) or (n_items,) float32, finite
        """
        item_factors = self._fitted().item_factors
        vector = self.user_vector(profile)
        if items is not None:
            item_factors = item_factors[np.asarray(items, dtype=np.int64)]
        scores = np.asarray(item_factors @ vector, dtype=np.float32)
        return np.nan_to_num(scores, nan=0.0, posinf=0.0, neginf=0.0)

    def score_users(self, user_items: sp.csr_matrix, users: np.ndarray) -> np.ndarray:
        """Stored training factors times item factors: (len(users), n_items)."""
        state = self._fitted()
        scores = state.user_factors[users] @ state.item_factors.T
        scores = np.asarray(scores, dtype=np.float32)
        return np.nan_to_num(scores, nan=0.0, posinf=0.0, neginf=0.0)

    def candidates(self, profile: UserProfile, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` items of largest score, from the faiss inner-product index.

        Returns
        -------
        items : (m,) int64
            Best first, ``m <= min(k, n_items)``; faiss padding (-1) removed.
        scores : (m,) float32
        """
        index = self._fitted().index
        vector = self.user_vector(profile)
        k = min(k, index.ntotal)
        if k <= 0 or not np.any(vector):
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        scores, labels = index.search(vector[None, :], k)
        keep = (labels[0] >= 0) & np.isfinite(scores[0])
        return labels[0][keep].astype(np.int64), scores[0][keep].astype(np.float32)

    def similar_items(self, item: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` items whose factors have the largest cosine with ``item``'s.

        The item itself is left out; so are items with zero factors.

        Returns
        -------
        items : (m,) int64, best first, ``m <= k``
        scores : (m,) float32 cosines

        Raises
        ------
        ValueError
            If ``item`` is outside ``[0, n_items)``.
        """
        state = self._fitted()
        item_factors, norms = state.item_factors, state.item_norms
        if not 0 <= item < len(item_factors):
            raise ValueError(f"item must be in [0, {len(item_factors)}), got {item}")
        if norms[item] == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)

        denominator = np.where(norms > 0, norms * norms[item], np.inf)
        cosines = (item_factors @ item_factors[item]) / denominator
        cosines[item] = -np.inf
        cosines[norms == 0] = -np.inf
        best = top_k(cosines, k)
        best = best[np.isfinite(cosines[best])]
        return best, cosines[best].astype(np.float32)

    def params(self) -> dict[str, Any]:
        return {
            "factors": self.factors,
            "regularization": self.regularization,
            "alpha": self.alpha,
            "iterations": self.iterations,
            "random_state": self.random_state,
            "num_threads": self.num_threads,
        }

    def save(self, directory: Path) -> list[str]:
        """Write both factor arrays (``.npy``) and the item index (``.faiss``)."""
        state = self._fitted()
        np.save(directory / _USER_FILE, state.user_factors, allow_pickle=False)
        np.save(directory / _ITEM_FILE, state.item_factors, allow_pickle=False)
        faiss.write_index(state.index, str(directory / _INDEX_FILE))
        return [_USER_FILE, _ITEM_FILE, _INDEX_FILE]

    @classmethod
    def load(cls, directory: Path, params: dict[str, Any]) -> Self:
        """Read what ``save`` wrote; factor arrays memory-mapped.

        Raises
        ------
        ValueError
            Naming the file, if one cannot be read or its shape disagrees with
            ``params["factors"]`` or with the other files.
        """
        model = cls(**params)
        user_factors = load_array(directory / _USER_FILE)
        item_factors = load_array(directory / _ITEM_FILE)
        for file, array in ((_USER_FILE, user_factors), (_ITEM_FILE, item_factors)):
            if array.ndim != 2 or array.shape[1] != model.factors:
                raise ValueError(
                    f"{file}: shape must be (n, {model.factors}), got {array.shape}"
                )
        try:
            index = faiss.read_index(str(directory / _INDEX_FILE))
        except RuntimeError as exc:
            raise ValueError(f"{_INDEX_FILE}: cannot read index ({exc})") from exc
        if index.ntotal != len(item_factors) or index.d != model.factors:
            raise ValueError(
                f"{_INDEX_FILE}: must hold {len(item_factors)} vectors of "
                f"{model.factors} dims, got {index.ntotal} of {index.d}"
            )
        model._set_factors(user_factors, item_factors, index)
        return model
