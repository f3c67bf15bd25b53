"""Popularity: how many readers took each book, and what is trending now.

The score of an item is ``log(1 + n_readers)``, the same for every reader: the
baseline every personalised model must beat, and the cold-start answer for a
reader about whom nothing is known.

A second ranking, *trending*, sums each book's interactions weighted by their
type and their age::

    trending[i] = log(1 + sum_r w[kind_r] * 0.5 ** (age_r / half_life_days))

over the interactions ``r`` of book ``i``, where ``age_r`` is in days before
the reference time (the newest timestamp, or the ``now`` given), never below
zero. A book with fewer than ``min_count`` weighted interactions gets 0 and
never ranks as trending. Interactions without a timestamp (0) count as
infinitely old when some interactions have one; when none has,
trending is the all-time (undecayed, weighted) count and ``trending_source_``
says ``"all_time"`` instead of ``"timestamps"``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import scipy.sparse as sp

from bookverse.models.base import UserProfile, check_rules, load_array, top_k
from bookverse.models.dataset import INTERACTION_KINDS, Dataset

logger = logging.getLogger(__name__)

_SECONDS_PER_DAY = 86_400.0
_POPULARITY_FILE = "popularity.scores.npy"
_TRENDING_FILE = "popularity.trending.npy"
_INFO_FILE = "popularity.json"

DEFAULT_KIND_WEIGHTS: dict[str, float] = {
    "view": 0.5,
    "click": 0.5,
    "add_to_list": 1.0,
    "rating": 1.0,
    "finished": 1.5,
    "purchase": 2.0,
}
"""Weight of one interaction of each tracked kind in the trending score."""

TRENDING_SOURCES = ("timestamps", "all_time", "unknown")
"""Values of ``Popularity.trending_source_``; ``"unknown"`` only for a model
loaded from files written before the source was recorded."""


class Popularity:
    """Log-scaled reader count per item, plus a time-decayed trending score.

    Parameters
    ----------
    half_life_days : float, default 30.0
        Age, in days before the reference time, at which an interaction counts
        half as much in the trending score. Must be > 0.
    kind_weights : dict of str to float, optional
        Weight of one interaction of each kind in ``INTERACTION_KINDS``
        (``"static"`` excepted), overriding ``DEFAULT_KIND_WEIGHTS``; each
        finite and >= 0. Rows of a data set without kinds, and static rows,
        weigh 1.
    min_count : int, default 1
        Fewest interactions of non-zero weight a book needs to trend. Must be
        >= 1.
    now : float, optional
        Reference time in Unix seconds for the decay; default the newest
        timestamp of the data set. Must be > 0 when given.

    Attributes
    ----------
    scores_ : (n_items,) float32
        ``log1p`` of the number of distinct readers of each item.
    trending_ : (n_items,) float32
        The trending score of the module docstring; 0 for books under
        ``min_count``.
    trending_source_ : str
        ``"timestamps"`` when trending decays by age, ``"all_time"`` when the
        data set had no timestamps and trending is the undecayed count.
    reference_time_ : float or None
        The time the decay was measured back from; None for ``"all_time"``.
    """

    name: ClassVar[str] = "popularity"

    def __init__(
        self,
        half_life_days: float = 30.0,
        kind_weights: Mapping[str, float] | None = None,
        min_count: int = 1,
        now: float | None = None,
    ) -> None:
        self.half_life_days = half_life_days
        self.kind_weights = kind_weights
        self.min_count = min_count
        self.now = now
        self.scores_: np.ndarray | None = None
        self.trending_: np.ndarray | None = None
        self.trending_source_: str | None = None
        self.reference_time_: float | None = None

    def _check_params(self) -> None:
        weights = dict(self.kind_weights or {})
        kinds = INTERACTION_KINDS[1:]
        unknown = sorted(set(weights) - set(kinds))
        bad = {k: v for k, v in weights.items() if not (math.isfinite(v) and v >= 0)}
        check_rules(
            [
                ("half_life_days", self.half_life_days, self.half_life_days > 0, "> 0"),
                ("kind_weights keys", unknown, not unknown, f"among {kinds}"),
                ("kind_weights values", bad, not bad, "finite and >= 0"),
                (
                    "min_count",
                    self.min_count,
                    isinstance(self.min_count, int) and self.min_count >= 1,
                    "an int >= 1",
                ),
                ("now", self.now, self.now is None or self.now > 0, "None or > 0"),
            ]
        )

    def row_weights(self, dataset: Dataset) -> np.ndarray:
        """Weight of each interaction by its kind.

        Returns
        -------
        (n_interactions,) float64
            1 where the data set has no kinds or the row is static.

        Raises
        ------
        ValueError
            If ``dataset.kinds`` is not integer codes into
            ``INTERACTION_KINDS`` of one per interaction.
        """
        if dataset.kinds is None:
            return np.ones(dataset.n_interactions)
        kinds = np.asarray(dataset.kinds)
        n_kinds = len(INTERACTION_KINDS)
        if (
            kinds.dtype.kind not in "iu"
            or kinds.shape != (dataset.n_interactions,)
            or (len(kinds) and (kinds.min() < 0 or kinds.max() >= n_kinds))
        ):
            raise ValueError(
                f"dataset.kinds must be ({dataset.n_interactions},) integer codes "
                f"in [0, {n_kinds}), got {kinds.dtype} of shape {kinds.shape}"
            )
        weights = {**DEFAULT_KIND_WEIGHTS, **(self.kind_weights or {})}
        table = np.array([1.0] + [weights[k] for k in INTERACTION_KINDS[1:]])
        return table[kinds.astype(np.int64)]

    def fit(self, dataset: Dataset) -> Self:
        """Count distinct readers per item, and the trending score.

        Raises
        ------
        ValueError
            If a parameter breaks its rule, or ``dataset.kinds`` is malformed.
        """
        self._check_params()

        # distinct readers per item: repeated (reader, book) pairs count once
        counts = np.asarray(dataset.user_items().sum(axis=0)).ravel()
        self.scores_ = np.log1p(counts).astype(np.float32)

        # trending: kind weight x 0.5 ** (age / half-life), undated rows 0
        weights = self.row_weights(dataset)
        dated = dataset.timestamps > 0
        if dated.any():
            times = dataset.timestamps.astype(np.float64)
            self.reference_time_ = float(
                self.now if self.now is not None else times[dated].max()
            )
            age = np.maximum(self.reference_time_ - times, 0.0) / _SECONDS_PER_DAY
            decay = np.where(dated, np.exp2(-age / self.half_life_days), 0.0)
            self.trending_source_ = "timestamps"
        else:
            decay = np.ones(dataset.n_interactions)
            self.reference_time_ = None
            self.trending_source_ = "all_time"
        self.trending_ = self._trending(dataset, weights, decay)

        logger.info(
            "popularity fitted: %s items, trending from %s "
            "(%s of %s interactions dated, reference time %s), %s books trend",
            dataset.n_items,
            self.trending_source_,
            int(dated.sum()),
            dataset.n_interactions,
            self.reference_time_,
            int(np.count_nonzero(self.trending_)),
        )
        return self

    def _trending(
        self, dataset: Dataset, weights: np.ndarray, decay: np.ndarray
    ) -> np.ndarray:
        """(n_items,) float32 ``log1p`` of the decayed weighted count, 0 under
        ``min_count`` interactions of non-zero weight."""
        n_items = dataset.n_items
        decayed = np.bincount(dataset.items, weights * decay, minlength=n_items)
        counted = np.bincount(dataset.items[weights > 0], minlength=n_items)
        decayed[counted < self.min_count] = 0.0
        return np.log1p(decayed).astype(np.float32)

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

        Raises
        ------
        RuntimeError
            If the model is not fitted.
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

        Trending leaves out books with a trending score of 0 (under
        ``min_count``, or never taken), so it may hold fewer than ``k``.

        Returns
        -------
        (min(k, n_items),) int64, or fewer when ``trending``
            Item indices, ties broken by the lower index.
        """
        scores, trend = self._fitted()
        if not trending:
            return top_k(np.asarray(scores), k)
        trend = np.asarray(trend)
        return top_k(trend, min(k, int(np.count_nonzero(trend > 0))))

    def params(self) -> dict[str, Any]:
        return {
            "half_life_days": self.half_life_days,
            "kind_weights": None
            if self.kind_weights is None
            else dict(self.kind_weights),
            "min_count": self.min_count,
            "now": self.now,
        }

    def save(self, directory: Path) -> list[str]:
        """Write ``popularity.scores.npy``, ``popularity.trending.npy`` and
        ``popularity.json`` (where trending came from)."""
        scores, trend = self._fitted()
        np.save(directory / _POPULARITY_FILE, scores, allow_pickle=False)
        np.save(directory / _TRENDING_FILE, trend, allow_pickle=False)
        info = {
            "trending_source": self.trending_source_,
            "reference_time": self.reference_time_,
        }
        (directory / _INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        return [_POPULARITY_FILE, _TRENDING_FILE, _INFO_FILE]

    @classmethod
    def load(cls, directory: Path, params: dict[str, Any]) -> Self:
        """Read what ``save`` wrote.

        Files written before ``popularity.json`` existed load with
        ``trending_source_ = "unknown"`` (logged as a warning).

        Raises
        ------
        ValueError
            If a file cannot be read, an array is not 1-D, the two arrays
            differ in length, or ``popularity.json`` is malformed.
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
        model.trending_source_, model.reference_time_ = _read_info(directory)
        return model


def _read_info(directory: Path) -> tuple[str, float | None]:
    """``(trending_source, reference_time)`` from ``popularity.json``.

    Raises
    ------
    ValueError
        If the file is not JSON or its fields break their rules.
    """
    path = directory / _INFO_FILE
    if not path.exists():
        logger.warning("%s: missing; trending source unknown", path)
        return "unknown", None
    try:
        info = json.loads(path.read_text())
        source, reference = info["trending_source"], info["reference_time"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{_INFO_FILE}: cannot read ({exc})") from exc
    if source not in TRENDING_SOURCES[:2]:
        raise ValueError(
            f"{_INFO_FILE}: trending_source must be one of "
            f"{TRENDING_SOURCES[:2]}, got {source!r}"
        )
    if reference is not None and not isinstance(reference, int | float):
        raise ValueError(
            f"{_INFO_FILE}: reference_time must be a number or null, got {reference!r}"
        )
    return source, None if reference is None else float(reference)
