"""Biased matrix factorisation of explicit ratings, fitted by alternating ridge.

Only explicit ratings (``rating > 0``) are modelled; implicit interactions are
left out. The predicted rating of reader ``u`` for book ``i`` is

    r_ui = mu + b_u + b_i + p_u . q_i,

with ``mu`` the mean training rating. Fitting alternates closed-form ridge
solves (ALS-WR, Zhou et al. 2008): with the book side fixed, each reader's
``[p_u, b_u]`` solves

    (Z^T Z + lambda n_u I) x = Z^T (r_u - mu - b_I),    Z = [Q_I, 1],

over the ``n_u`` books they rated, then the same for each book with the
readers fixed. A reader (or book) without ratings keeps zero factors and
bias.

``score`` returns the predicted rating, unclipped, for ranking. For a reader
whose history is not the training one, ``UserProfile.weights`` must carry the
**ratings** (on the data set's scale) for this model: the books with a weight
> 0 are folded in by the same ridge solve against the stored book side;
weights of 0 (implicit events) are ignored. Without any rating the score is
``mu + b_i``, the book's bias. Plain interaction weights of 1.0 would read as
ratings of 1: callers that hold no ratings pass weights of 0.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import scipy.sparse as sp

from bookverse.models.base import UserProfile, check_rules, load_array
from bookverse.models.dataset import Dataset

logger = logging.getLogger(__name__)

_USER_FILE = "explicit_mf.user_factors.npy"
_ITEM_FILE = "explicit_mf.item_factors.npy"
_USER_BIAS_FILE = "explicit_mf.user_bias.npy"
_ITEM_BIAS_FILE = "explicit_mf.item_bias.npy"
_MEAN_FILE = "explicit_mf.global_mean.npy"


class ExplicitMF:
    """Rating prediction: global mean, two biases and a factor dot product.

    Parameters
    ----------
    factors : int, default 32
        Latent dimensions; >= 1.
    regularization : float, default 0.05
        ``lambda``, scaled by each row's rating count; > 0.
    epochs : int, default 10
        Alternating sweeps (readers then books); >= 1.
    random_state : int, default 0
        Seed of the initial book factors.

    Attributes
    ----------
    global_mean : float
    user_factors : (n_users, factors) float32
    item_factors : (n_items, factors) float32
    user_bias : (n_users,) float32
    item_bias : (n_items,) float32
    """

    name: ClassVar[str] = "explicit_mf"

    def __init__(
        self,
        factors: int = 32,
        regularization: float = 0.05,
        epochs: int = 10,
        random_state: int = 0,
    ) -> None:
        self.factors = factors
        self.regularization = regularization
        self.epochs = epochs
        self.random_state = random_state
        self.global_mean = 0.0
        self.user_factors: np.ndarray | None = None
        self.item_factors: np.ndarray | None = None
        self.user_bias: np.ndarray | None = None
        self.item_bias: np.ndarray | None = None

    def _check_params(self) -> None:
        rules = (
            ("factors", self.factors, self.factors >= 1, ">= 1"),
            ("regularization", self.regularization, self.regularization > 0, "> 0"),
            ("epochs", self.epochs, self.epochs >= 1, ">= 1"),
        )
        check_rules(rules)

    def fit(self, dataset: Dataset) -> Self:
        """Alternate ridge solves over the explicit ratings of ``dataset``.

        Raises
        ------
        ValueError
            If a hyperparameter breaks its rule, or the data set has no
            explicit rating.
        RuntimeError
            If the fitted state is not finite.
        """
        self._check_params()
        started = time.perf_counter()
        ratings = explicit_ratings(dataset)
        if ratings.nnz == 0:
            raise ValueError(
                f"dataset {dataset.name!r} must have explicit ratings (> 0), got none"
            )
        by_item = ratings.T.tocsr()
        mu = float(ratings.data.mean())

        rng = np.random.default_rng(self.random_state)
        q = rng.normal(0.0, 0.1, (dataset.n_items, self.factors))
        b_i = np.zeros(dataset.n_items)
        for epoch in range(self.epochs):
            p, b_u = _ridge_rows(ratings, q, b_i, mu, self.regularization)
            q, b_i = _ridge_rows(by_item, p, b_u, mu, self.regularization)
            logger.debug(
                "explicit_mf epoch %s: train rmse %.4f",
                epoch + 1,
                _rmse(ratings, mu, p, q, b_u, b_i),
            )

        state = [p, q, b_u, b_i]
        if not all(np.all(np.isfinite(a)) for a in state):
            raise RuntimeError("explicit_mf state is not finite; raise regularization")
        self.global_mean = mu
        self.user_factors, self.item_factors, self.user_bias, self.item_bias = (
            a.astype(np.float32) for a in state
        )
        logger.info(
            "explicit_mf fitted: %s ratings, train rmse %.4f in %.1fs",
            ratings.nnz,
            _rmse(ratings, mu, p, q, b_u, b_i),
            time.perf_counter() - started,
        )
        return self

    def _fitted(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if (
            self.user_factors is None
            or self.item_factors is None
            or self.user_bias is None
            or self.item_bias is None
        ):
            raise RuntimeError("explicit_mf model is not fitted: call fit or load")
        return self.user_factors, self.item_factors, self.user_bias, self.item_bias

    def fold_in(
        self, items: np.ndarray, ratings: np.ndarray
    ) -> tuple[np.ndarray, float]:
        """Reader factors and bias from ratings, by one ridge solve.

        Parameters
        ----------
        items : (n,) int
        ratings : (n,) float
            Ratings on the data set's scale; entries <= 0 or not finite are
            ignored (implicit).

        Returns
        -------
        factors : (factors,) float32
            Zeros when no rating is left.
        bias : float
            0.0 when no rating is left.

        Raises
        ------
        ValueError
            If the shapes differ or an item index is outside ``[0, n_items)``.
        """
        _, item_factors, _, item_bias = self._fitted()
        items = np.asarray(items, dtype=np.int64)
        ratings = np.asarray(ratings, dtype=np.float64)
        _check_history(items, ratings, len(item_factors))
        rated = np.isfinite(ratings) & (ratings > 0)
        if not np.any(rated):
            return np.zeros(self.factors, dtype=np.float32), 0.0
        x = _ridge(
            np.asarray(item_factors[items[rated]], dtype=np.float64),
            ratings[rated] - self.global_mean - item_bias[items[rated]],
            self.regularization,
        )
        return x[:-1].astype(np.float32), float(x[-1])

    def user_state(self, profile: UserProfile) -> tuple[np.ndarray, float]:
        """Stored factors and bias of a training reader, else folded in.

        Raises
        ------
        ValueError
            If ``profile.user_index`` is outside ``[0, n_users)``, or as
            ``fold_in``.
        """
        user_factors, _, user_bias, _ = self._fitted()
        if profile.user_index is None:
            return self.fold_in(profile.items, profile.weights)
        if not 0 <= profile.user_index < len(user_factors):
            raise ValueError(
                f"profile.user_index must be in [0, {len(user_factors)}), "
                f"got {profile.user_index}"
            )
        user = profile.user_index
        return np.asarray(user_factors[user]), float(user_bias[user])

    def score(
        self, profile: UserProfile, items: np.ndarray | None = None
    ) -> np.ndarray:
        """Predicted ratings of ``items`` (or every item), unclipped.

        Returns
        -------
        (len(items),) or (n_items,) float32, finite
        """
        _, item_factors, _, item_bias = self._fitted()
        vector, bias = self.user_state(profile)
        if items is not None:
            items = np.asarray(items, dtype=np.int64)
            item_factors, item_bias = item_factors[items], item_bias[items]
        scores = self.global_mean + bias + item_bias + item_factors @ vector
        return np.nan_to_num(scores.astype(np.float32), nan=self.global_mean)

    def score_users(self, user_items: sp.csr_matrix, users: np.ndarray) -> np.ndarray:
        """Predicted ratings of every item for training readers.

        Returns (len(users), n_items) float32.
        """
        user_factors, item_factors, user_bias, item_bias = self._fitted()
        scores = user_factors[users] @ item_factors.T
        scores += self.global_mean + user_bias[users][:, None] + item_bias[None, :]
        return np.nan_to_num(scores.astype(np.float32), nan=self.global_mean)

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Predicted ratings of (training reader, book) pairs: (n,) float32."""
        user_factors, item_factors, user_bias, item_bias = self._fitted()
        dots = np.einsum("ij,ij->i", user_factors[users], item_factors[items])
        scores = self.global_mean + user_bias[users] + item_bias[items] + dots
        return scores.astype(np.float32)

    def params(self) -> dict[str, Any]:
        return {
            "factors": self.factors,
            "regularization": self.regularization,
            "epochs": self.epochs,
            "random_state": self.random_state,
        }

    def save(self, directory: Path) -> list[str]:
        """Write factors, biases and the global mean as ``.npy``."""
        user_factors, item_factors, user_bias, item_bias = self._fitted()
        arrays = {
            _USER_FILE: user_factors,
            _ITEM_FILE: item_factors,
            _USER_BIAS_FILE: user_bias,
            _ITEM_BIAS_FILE: item_bias,
            _MEAN_FILE: np.array([self.global_mean], dtype=np.float64),
        }
        for file, array in arrays.items():
            np.save(directory / file, array, allow_pickle=False)
        return list(arrays)

    @classmethod
    def load(cls, directory: Path, params: dict[str, Any]) -> Self:
        """Read what ``save`` wrote; factors memory-mapped.

        Raises
        ------
        ValueError
            Naming the file, if one cannot be read or its shape disagrees with
            ``params["factors"]`` or with the other files.
        """
        model = cls(**params)
        user_factors = load_array(directory / _USER_FILE)
        item_factors = load_array(directory / _ITEM_FILE)
        user_bias = np.asarray(load_array(directory / _USER_BIAS_FILE, mmap=False))
        item_bias = np.asarray(load_array(directory / _ITEM_BIAS_FILE, mmap=False))
        mean = np.asarray(load_array(directory / _MEAN_FILE, mmap=False))
        expected = {
            _USER_FILE: (user_factors, (len(user_factors), model.factors)),
            _ITEM_FILE: (item_factors, (len(item_factors), model.factors)),
            _USER_BIAS_FILE: (user_bias, (len(user_factors),)),
            _ITEM_BIAS_FILE: (item_bias, (len(item_factors),)),
            _MEAN_FILE: (mean, (1,)),
        }
        for file, (array, shape) in expected.items():
            if array.shape != shape:
                raise ValueError(f"{file}: shape must be {shape}, got {array.shape}")
        model.global_mean = float(mean[0])
        model.user_factors, model.item_factors = user_factors, item_factors
        model.user_bias, model.item_bias = user_bias, item_bias
        return model


def explicit_ratings(dataset: Dataset) -> sp.csr_matrix:
    """The explicit ratings as a (n_users, n_items) float64 CSR matrix.

    Implicit rows (rating 0) are left out; a repeated (reader, book) rating is
    averaged.
    """
    explicit = dataset.ratings > 0
    users, items = dataset.users[explicit], dataset.items[explicit]
    shape = (dataset.n_users, dataset.n_items)
    values = dataset.ratings[explicit].astype(np.float64)
    totals = sp.csr_matrix((values, (users, items)), shape=shape)
    counts = sp.csr_matrix((np.ones(len(users)), (users, items)), shape=shape)
    totals.sum_duplicates()
    counts.sum_duplicates()
    return sp.csr_matrix(
        (totals.data / counts.data, totals.indices, totals.indptr), shape=shape
    )


def _ridge(z_factors: np.ndarray, target: np.ndarray, lam: float) -> np.ndarray:
    """Solve ``(Z^T Z + lam n I) x = Z^T y`` with ``Z = [factors, 1]``.

    Returns (factors + 1,) float64: the factors, then the bias.
    """
    z = np.hstack([z_factors, np.ones((len(z_factors), 1))])
    a = z.T @ z
    a[np.diag_indices_from(a)] += lam * len(z)
    return np.linalg.solve(a, z.T @ target)


def _ridge_rows(
    ratings: sp.csr_matrix,
    fixed: np.ndarray,
    fixed_bias: np.ndarray,
    mu: float,
    lam: float,
) -> tuple[np.ndarray, np.ndarray]:
    """One half-sweep: ridge-solve factors and bias of every row of ``ratings``.

    Returns (n_rows, factors) and (n_rows,) float64; zeros for empty rows.
    """
    n_rows, n_factors = ratings.shape[0], fixed.shape[1]
    factors = np.zeros((n_rows, n_factors))
    bias = np.zeros(n_rows)
    for row in range(n_rows):
        start, end = ratings.indptr[row], ratings.indptr[row + 1]
        if start == end:
            continue
        cols = ratings.indices[start:end]
        target = ratings.data[start:end] - mu - fixed_bias[cols]
        x = _ridge(fixed[cols], target, lam)
        factors[row], bias[row] = x[:-1], x[-1]
    return factors, bias


def _rmse(
    ratings: sp.csr_matrix,
    mu: float,
    p: np.ndarray,
    q: np.ndarray,
    b_u: np.ndarray,
    b_i: np.ndarray,
) -> float:
    coo = ratings.tocoo()
    dots = np.einsum("ij,ij->i", p[coo.row], q[coo.col])
    error = coo.data - (mu + b_u[coo.row] + b_i[coo.col] + dots)
    return float(np.sqrt(np.mean(error**2)))


def _check_history(items: np.ndarray, weights: np.ndarray, n_items: int) -> None:
    if items.shape != weights.shape:
        raise ValueError(
            f"profile.weights must have the shape of profile.items {items.shape}, "
            f"got {weights.shape}"
        )
    if len(items) and (items.min() < 0 or items.max() >= n_items):
        raise ValueError(
            f"profile.items must be in [0, {n_items}), got {items.min()}..{items.max()}"
        )
