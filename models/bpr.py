"""Bayesian personalised ranking: factors fitted to order read above unread.

Rendle et al., "BPR: Bayesian Personalized Ranking from Implicit Feedback",
UAI 2009. Training runs the ``implicit`` library's CPU learner on the binary
reader x book matrix: stochastic gradient ascent on ``ln sigmoid(x_ui - x_uj)``
over sampled (reader, read book, unread book) triples.

``implicit`` stores one extra column beside the ``factors`` latent ones: the
item factors carry the item bias there and the user factors a constant 1, so
``user_factors @ item_factors.T`` is ``p_u . q_i + b_i``. Both arrays are
saved as they are, bias column included.

BPR has no closed-form fold-in. A reader whose history is not exactly the
training one gets, as latent part, the weighted mean of the latent parts of
their history's item factors (the reader "is" the average of what they read),
and 1 in the bias column; an empty history scores by item bias alone.
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
    stored_row,
)
from bookverse.models.dataset import Dataset

logger = logging.getLogger(__name__)

_USER_FILE = "bpr.user_factors.npy"
_ITEM_FILE = "bpr.item_factors.npy"


class BPR:
    """Matrix factorisation for pairwise ranking of implicit feedback.

    Parameters
    ----------
    factors : int, default 64
        Latent dimensions, not counting the bias column; >= 1.
    learning_rate : float, default 0.01
        SGD step; > 0.
    regularization : float, default 0.01
        L2 weight on the factors touched by each step; >= 0.
    iterations : int, default 100
        Passes over the interactions; >= 1.
    random_state : int, default 0
        Seed of the initial factors and the sampler.
    num_threads : int, default 0
        Threads used by ``implicit`` while fitting; 0 means every core. With
        more than one thread the result is not reproducible to the bit.

    Attributes
    ----------
    user_factors : (n_users, factors + 1) float32
        Last column 1.
    item_factors : (n_items, factors + 1) float32
        Last column the item bias.
    """

    name: ClassVar[str] = "bpr"

    def __init__(
        self,
        factors: int = 64,
        learning_rate: float = 0.01,
        regularization: float = 0.01,
        iterations: int = 100,
        random_state: int = 0,
        num_threads: int = 0,
    ) -> None:
        self.factors = factors
        self.learning_rate = learning_rate
        self.regularization = regularization
        self.iterations = iterations
        self.random_state = random_state
        self.num_threads = num_threads
        self.user_factors: np.ndarray | None = None
        self.item_factors: np.ndarray | None = None

    def _check_params(self) -> None:
        rules = (
            ("factors", self.factors, self.factors >= 1, ">= 1"),
            ("learning_rate", self.learning_rate, self.learning_rate > 0, "> 0"),
            ("regularization", self.regularization, self.regularization >= 0, ">= 0"),
            ("iterations", self.iterations, self.iterations >= 1, ">= 1"),
            ("num_threads", self.num_threads, self.num_threads >= 0, ">= 0"),
        )
        check_rules(rules)

    def fit(self, dataset: Dataset) -> Self:
        """Learn the factors with ``implicit``'s BPR on ``dataset.user_items()``.

        Raises
        ------
        ValueError
            If a hyperparameter breaks its rule.
        RuntimeError
            If the learned factors are not finite (lower ``learning_rate``).
        """
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        self._check_params()
        started = time.perf_counter()
        bpr = BayesianPersonalizedRanking(
            factors=self.factors,
            learning_rate=self.learning_rate,
            regularization=self.regularization,
            iterations=self.iterations,
            random_state=self.random_state,
            num_threads=self.num_threads,
        )
        bpr.fit(dataset.user_items(), show_progress=False)

        user_factors = np.ascontiguousarray(bpr.user_factors, dtype=np.float32)
        item_factors = np.ascontiguousarray(bpr.item_factors, dtype=np.float32)
        if not (
            np.all(np.isfinite(user_factors)) and np.all(np.isfinite(item_factors))
        ):
            raise RuntimeError("bpr factors are not finite; lower learning_rate")
        self.user_factors, self.item_factors = user_factors, item_factors
        logger.info(
            "bpr fitted: %s readers x %s items, %s factors in %.1fs",
            dataset.n_users,
            dataset.n_items,
            self.factors,
            time.perf_counter() - started,
        )
        return self

    def _fitted(self) -> tuple[np.ndarray, np.ndarray]:
        if self.user_factors is None or self.item_factors is None:
            raise RuntimeError("bpr model is not fitted: call fit or load")
        return self.user_factors, self.item_factors

    def fold_in(self, items: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Reader vector of a history: weighted mean of its items' latent part.

        Parameters
        ----------
        items : (n,) int
            Item indices of the history (repeats add up).
        weights : (n,) float
            Interaction strengths; non-finite or negative ones drop their item.

        Returns
        -------
        (factors + 1,) float32
            Latent part the weighted mean (zeros for an empty history or zero
            total weight), last entry 1 so that item biases count.

        Raises
        ------
        ValueError
            If the shapes differ or an item index is outside ``[0, n_items)``.
        """
        _, item_factors = self._fitted()
        items, weights = clean_history(items, weights, len(item_factors))
        vector = np.zeros(item_factors.shape[1], dtype=np.float64)
        total = weights.sum(dtype=np.float64)
        if total > 0:
            latent = np.asarray(item_factors[items, :-1], dtype=np.float64)
            vector[:-1] = weights @ latent / total
        vector[-1] = 1.0
        return vector.astype(np.float32)

    def user_vector(self, profile: UserProfile) -> np.ndarray:
        """The stored factor of a training reader, else the folded-in one.

        Returns
        -------
        (factors + 1,) float32

        Raises
        ------
        ValueError
            If ``profile.user_index`` is outside ``[0, n_users)``, or as
            ``fold_in``.
        """
        user_factors, _ = self._fitted()
        if profile.user_index is None:
            return self.fold_in(profile.items, profile.weights)
        return stored_row(user_factors, profile.user_index)

    def score(
        self, profile: UserProfile, items: np.ndarray | None = None
    ) -> np.ndarray:
        """``p_u . q_i + b_i`` for ``items`` (or every item).

        Returns
        -------
        (len(items),) or (n_items,) float32, finite
        """
        _, item_factors = self._fitted()
        vector = self.user_vector(profile)
        if items is not None:
            item_factors = item_factors[np.asarray(items, dtype=np.int64)]
        scores = np.asarray(item_factors @ vector, dtype=np.float32)
        return np.nan_to_num(scores, nan=0.0, posinf=0.0, neginf=0.0)

    def score_users(self, user_items: sp.csr_matrix, users: np.ndarray) -> np.ndarray:
        """Stored training factors times item factors: (len(users), n_items)."""
        user_factors, item_factors = self._fitted()
        scores = np.asarray(user_factors[users] @ item_factors.T, dtype=np.float32)
        return np.nan_to_num(scores, nan=0.0, posinf=0.0, neginf=0.0)

    def params(self) -> dict[str, Any]:
        return {
            "factors": self.factors,
            "learning_rate": self.learning_rate,
            "regularization": self.regularization,
            "iterations": self.iterations,
            "random_state": self.random_state,
            "num_threads": self.num_threads,
        }

    def save(self, directory: Path) -> list[str]:
        """Write both factor arrays, bias column included, as ``.npy``."""
        user_factors, item_factors = self._fitted()
        np.save(directory / _USER_FILE, user_factors, allow_pickle=False)
        np.save(directory / _ITEM_FILE, item_factors, allow_pickle=False)
        return [_USER_FILE, _ITEM_FILE]

    @classmethod
    def load(cls, directory: Path, params: dict[str, Any]) -> Self:
        """Read what ``save`` wrote; memory-mapped.

        Raises
        ------
        ValueError
            Naming the file, if one cannot be read or is not of shape
            ``(n, params["factors"] + 1)``.
        """
        model = cls(**params)
        width = model.factors + 1
        user_factors = load_array(directory / _USER_FILE)
        item_factors = load_array(directory / _ITEM_FILE)
        for file, array in ((_USER_FILE, user_factors), (_ITEM_FILE, item_factors)):
            if array.ndim != 2 or array.shape[1] != width:
                raise ValueError(
                    f"{file}: shape must be (n, factors + 1 = {width}), "
                    f"got {array.shape}"
                )
        model.user_factors, model.item_factors = user_factors, item_factors
        return model
