"""Popularity: how many readers took each book, and what is trending now.

The score of an item is ``log(1 + n_readers)``, the same for every reader: the
baseline every personalised model must beat, and the cold-start answer for a
reader about whom nothing is known. When the data set has timestamps a second
ranking, *trending*, weighs each interaction by its age with an exponential
half-life counted back from the newest interaction; without timestamps the
trending ranking is the popularity ranking.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import scipy.sparse as sp

from bookverse.models.base import UserProfile, load_array, top_k
from bookverse.models.dataset import Dataset

logger = logging.getLogger(__name__)

_SECONDS_PER_DAY = 86_400.0
_POPULARITY_FILE = "popularity.scores.npy"
_TRENDING_FILE = "popularity.trending.npy"


class Popularity:
    """Log-scaled reader count per item, plus a time-decayed trending score.

    Parameters
    ----------
    half_life_days : float, default 30.0
        Age, in days before the newest interaction, at which an interaction
        counts half as much in the trending score. Must be > 0.

    Attributes
    ----------
    scores_ : (n_items,) float32
        ``log1p`` of the number of distinct readers of each item.
    trending_ : (n_items,) float32
        ``log1p`` of the time-decayed reader count (equal to ``scores_`` when
        the data set has no timestamps).
    """

    name: ClassVar[str] = "popularity"

    def __init__(self, half_life_days: float = 30.0) -> None:
        self.half_life_days = half_life_days
        self.scores_: np.ndarray | None = None
        self.trending_: np.ndarray | None = None

    def _check_params(self) -> None:
        if not self.half_life_days > 0:
            raise ValueError(f"half_life_days must be > 0, got {self.half_life_days!r}")

    def fit(self, dataset: Dataset) -> Self:
        """Count distinct readers per item (and decayed counts if timestamped).

        Raises
        ------
        ValueError
            If ``half_life_days`` is not positive.
        """
        self._check_params()

        # distinct readers per item: repeated (reader, book) pairs count once
        counts = np.asarray(dataset.user_items().sum(axis=0)).ravel()
        self.scores_ = np.log1p(counts).astype(np.float32)

        # trending: every interaction weighted by 0.5 ** (age / half-life)
        if dataset.has_timestamps:
            age = (dataset.timestamps.max() - dataset.timestamps) / _SECONDS_PER_DAY
            decay = np.exp2(-age / self.half_life_days)
            decayed = np.bincount(dataset.items, decay, minlength=dataset.n_items)
            self.trending_ = np.log1p(decayed).astype(np.float32)
        else:
            self.trending_ = self.scores_.copy()

        logger.info(
            "popularity fitted: %s items, trending=%s",
            dataset.n_items,
            dataset.has_timestamps,
        )
        return self

    def _fitted(self) -> tuple[np.ndarray, np.ndarray]:
        if self.scores_ is None or self.trending_ is None:
            raise RuntimeError("popularity model is not fitted: call fit or load")
        return self.scores_, self.trending_

    def score(
        self, profile: UserProfile, items: np.ndarray | None = None
    ) -> np.ndarray:
        """Popularity of ``items`` (or of every item), whoever the reader.

        Returns
        -------
        (len(items),) or (n_items,) float32
        """
        scores, _ = self._fitted()
        if items is None:
            return np.array(scores, dtype=np.float32)
        return np.asarray(scores[np.asarray(items, dtype=np.int64)], dtype=np.float32)

    def score_users(self, user_items: sp.csr_matrix, users: np.ndarray) -> np.ndarray:
        """The popularity row repeated for each reader: (len(users), n_items)."""
        scores, _ = self._fitted()
        return np.tile(np.asarray(scores, dtype=np.float32), (len(users), 1))

    def ranking(self, k: int = 100, trending: bool = False) -> np.ndarray:
        """The ``k`` most popular (or trending) items, best first.

        Returns
        -------
        (min(k, n_items),) int64
            Item indices, ties broken by the lower index.
        """
        scores, trend = self._fitted()
        return top_k(np.asarray(trend if trending else scores), k)

    def params(self) -> dict[str, Any]:
        return {"half_life_days": self.half_life_days}

    def save(self, directory: Path) -> list[str]:
        """Write ``popularity.scores.npy`` and ``popularity.trending.npy``."""
        scores, trend = self._fitted()
        np.save(directory / _POPULARITY_FILE, scores, allow_pickle=False)
        np.save(directory / _TRENDING_FILE, trend, allow_pickle=False)
        return [_POPULARITY_FILE, _TRENDING_FILE]

    @classmethod
    def load(cls, directory: Path, params: dict[str, Any]) -> Self:
        """Read what ``save`` wrote.

        Raises
        ------
        ValueError
            If a file cannot be read, is not 1-D, or the two differ in length.
        """
        model = cls(**params)
        scores = load_array(directory / _POPULARITY_FILE)
        trend = load_array(directory / _TRENDING_FILE)
        if scores.ndim != 1 or trend.shape != scores.shape:
            raise ValueError(
                f"{_TRENDING_FILE}: shape must equal {_POPULARITY_FILE} "
                f"{scores.shape} and be 1-D, got {trend.shape}"
            )
        model.scores_, model.trending_ = scores, trend
        return model
