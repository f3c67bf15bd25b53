"""Quality popularity: books that readers rate well, often, and lately.

The score of a book is the same for every reader: a cold-start answer that,
unlike plain popularity, prefers a well-rated book to a merely much-read one.
For book ``i`` it is a weighted mean of three parts, each in [0, 1]::

    x_r       = clip((rating_r - low) / (high - low), 0, 1)   explicit ratings
    m         = mean of x_r over the whole data set (0.5 without ratings)
    rating_i  = (C * m + sum_{r of i} x_r) / (C + n_i)        damped mean
    count_i   = log(1 + n_i) / log(1 + max_j n_j)             0 when no ratings
    recency_i = 0.5 ** (age_i / H)
    score_i   = (w_rating * rating_i + w_count * count_i + w_recency * recency_i)
                / (w_rating + w_count + w_recency)

``n_i`` is the number of explicit ratings of ``i`` (rows with a non-zero
rating), ``(low, high)`` the data set's ``rating_scale`` and ``C`` the
``prior_count`` pseudo-ratings at the global mean, so that a book with one
perfect rating does not outrank one with a hundred good ones. ``age_i``, in
years, is the newest publication year of the catalogue minus the book's year
where the catalogue knows it; otherwise the time from the newest timestamp of
the data set back to the book's newest dated interaction; a book with
neither gets ``recency_i = 0``. ``H`` is ``recency_half_life_years``.
"""

from __future__ import annotations

import logging
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

_SECONDS_PER_YEAR = 365.25 * 86_400.0
_SCORES_FILE = "quality.scores.npy"
_PARTS_FILE = "quality.parts.npy"
PARTS = ("rating", "count", "recency")
"""Columns of ``QualityPopularity.parts_``."""


class QualityPopularity:
    """Damped mean rating, log rating count and recency, blended per book.

    Parameters
    ----------
    prior_count : float, default 10.0
        Pseudo-ratings at the global mean added to every book (``C``). >= 0.
    rating_weight, count_weight, recency_weight : float
        Weights of the three parts (defaults 1.0, 0.5, 0.25); each >= 0, their
        sum > 0.
    recency_half_life_years : float, default 10.0
        Age in years at which the recency part halves (``H``). > 0.

    Attributes
    ----------
    scores_ : (n_items,) float32
        ``score_i`` of the module docstring, in [0, 1].
    parts_ : (n_items, 3) float32
        ``rating_i``, ``count_i`` and ``recency_i`` (columns ``PARTS``).
    """

    name: ClassVar[str] = "quality"

    def __init__(
        self,
        *,
        prior_count: float = 10.0,
        rating_weight: float = 1.0,
        count_weight: float = 0.5,
        recency_weight: float = 0.25,
        recency_half_life_years: float = 10.0,
    ) -> None:
        self.prior_count = prior_count
        self.rating_weight = rating_weight
        self.count_weight = count_weight
        self.recency_weight = recency_weight
        self.recency_half_life_years = recency_half_life_years
        self.scores_: np.ndarray | None = None
        self.parts_: np.ndarray | None = None

    def _weights(self) -> np.ndarray:
        return np.array([self.rating_weight, self.count_weight, self.recency_weight])

    def _check_params(self, dataset: Dataset) -> None:
        weights = self._weights()
        low, high = dataset.rating_scale
        check_rules(
            [
                ("prior_count", self.prior_count, self.prior_count >= 0, ">= 0"),
                ("rating_weight", self.rating_weight, self.rating_weight >= 0, ">= 0"),
                ("count_weight", self.count_weight, self.count_weight >= 0, ">= 0"),
                (
                    "recency_weight",
                    self.recency_weight,
                    self.recency_weight >= 0,
                    ">= 0",
                ),
                ("the sum of the weights", weights.sum(), weights.sum() > 0, "> 0"),
                (
                    "recency_half_life_years",
                    self.recency_half_life_years,
                    self.recency_half_life_years > 0,
                    "> 0",
                ),
                (
                    "dataset.rating_scale",
                    dataset.rating_scale,
                    high > low,
                    "low < high",
                ),
            ]
        )

    def fit(self, dataset: Dataset) -> Self:
        """Compute the three parts and the blended score of every book.

        Raises
        ------
        ValueError
            If a parameter breaks its rule, or the data set's rating scale is
            empty (``low >= high``).
        """
        self._check_params(dataset)
        parts = np.column_stack([*self._rating_parts(dataset), self._recency(dataset)])
        weights = self._weights()
        self.parts_ = parts.astype(np.float32)
        self.scores_ = (parts @ weights / weights.sum()).astype(np.float32)
        logger.info(
            "quality fitted: %s items, %s explicit ratings, mean score %.3f",
            dataset.n_items,
            int(np.count_nonzero(dataset.ratings)),
            float(self.scores_.mean()) if dataset.n_items else 0.0,
        )
        return self

    def _rating_parts(self, dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
        """(n_items,) damped mean and (n_items,) log count of explicit ratings."""
        low, high = dataset.rating_scale
        explicit = dataset.ratings != 0
        items = dataset.items[explicit]
        x = np.clip((dataset.ratings[explicit] - low) / (high - low), 0.0, 1.0)

        # damped mean: C pseudo-ratings at the global mean m
        m = float(x.mean()) if len(x) else 0.5
        n = np.bincount(items, minlength=dataset.n_items).astype(np.float64)
        total = np.bincount(items, x, minlength=dataset.n_items)
        denominator = self.prior_count + n
        safe = np.where(denominator > 0, denominator, 1.0)
        rating = np.where(denominator > 0, (self.prior_count * m + total) / safe, m)

        # log count, scaled so that the most-rated book has 1
        most = np.log1p(n.max()) if len(n) else 0.0
        count = np.log1p(n) / most if most > 0 else np.zeros_like(n)
        return rating, count

    def _recency(self, dataset: Dataset) -> np.ndarray:
        """(n_items,) ``0.5 ** (age / H)``, by year where known, else by the
        newest dated interaction; 0 where neither is known."""
        age = np.full(dataset.n_items, np.inf)

        # interactions: newest dated one per book, against the newest overall
        dated = dataset.timestamps > 0
        if dated.any():
            newest = np.zeros(dataset.n_items)
            np.maximum.at(
                newest, dataset.items[dated], dataset.timestamps[dated].astype(float)
            )
            seen = newest > 0
            age[seen] = (newest.max() - newest[seen]) / _SECONDS_PER_YEAR

        # publication years take precedence where the catalogue knows them
        years = np.asarray(dataset.catalogue.years, dtype=np.float64)
        known = years > 0
        if known.any():
            age[known] = years[known].max() - years[known]
        return np.exp2(-age / self.recency_half_life_years)

    def _fitted(self) -> tuple[np.ndarray, np.ndarray]:
        if self.scores_ is None or self.parts_ is None:
            raise RuntimeError("quality model is not fitted: call fit or load")
        return self.scores_, self.parts_

    def score(
        self, profile: UserProfile, items: np.ndarray | None = None
    ) -> np.ndarray:
        """Quality of ``items`` (or of every item), whoever the reader.

        Returns
        -------
        (len(items),) or (n_items,) float32

        Raises
        ------
        RuntimeError
            If the model is not fitted.
        ValueError
            If ``profile.items`` lies outside the catalogue.
        """
        scores, _ = self._fitted()
        clean_history(profile.items, profile.weights, len(scores))
        if items is None:
            return np.array(scores, dtype=np.float32)
        return np.asarray(scores[np.asarray(items, dtype=np.int64)], dtype=np.float32)

    def score_users(self, user_items: sp.csr_matrix, users: np.ndarray) -> np.ndarray:
        """The quality row repeated for each reader: (len(users), n_items)."""
        scores, _ = self._fitted()
        return np.tile(np.asarray(scores, dtype=np.float32), (len(users), 1))

    def ranking(self, k: int = 100) -> np.ndarray:
        """The ``k`` books of highest quality, best first (for a cold start).

        Returns
        -------
        (min(k, n_items),) int64
            Item indices, ties broken by the lower index.
        """
        return top_k(np.asarray(self._fitted()[0]), k)

    def params(self) -> dict[str, Any]:
        return {
            "prior_count": self.prior_count,
            "rating_weight": self.rating_weight,
            "count_weight": self.count_weight,
            "recency_weight": self.recency_weight,
            "recency_half_life_years": self.recency_half_life_years,
        }

    def save(self, directory: Path) -> list[str]:
        """Write ``quality.scores.npy`` and ``quality.parts.npy``."""
        scores, parts = self._fitted()
        np.save(directory / _SCORES_FILE, scores, allow_pickle=False)
        np.save(directory / _PARTS_FILE, parts, allow_pickle=False)
        return [_SCORES_FILE, _PARTS_FILE]

    @classmethod
    def load(cls, directory: Path, params: dict[str, Any]) -> Self:
        """Read what ``save`` wrote.

        Raises
        ------
        ValueError
            If a file cannot be read, the scores are not 1-D, or the parts are
            not (n_items, 3).
        """
        model = cls(**params)
        scores = load_array(directory / _SCORES_FILE)
        parts = load_array(directory / _PARTS_FILE)
        if scores.ndim != 1 or parts.shape != (len(scores), len(PARTS)):
            raise ValueError(
                f"{_PARTS_FILE}: shape must be ({len(scores)}, {len(PARTS)}) "
                f"beside 1-D {_SCORES_FILE} {scores.shape}, got {parts.shape}"
            )
        model.scores_, model.parts_ = scores, parts
        return model
