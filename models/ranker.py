"""The meta-ranker: an XGBoost learning-to-rank model over base-model scores.

At request time the ranker re-orders a candidate pool. For one reader:

1. every base model in ``base_models`` scores the whole catalogue
   (``Model.score(profile)``) and ``candidates`` keeps the union of each one's
   ``pool`` best unseen books (the pool the ranker was trained on);
2. ``features`` builds the candidates' feature rows
   (``bookverse.models.features.build_features``) from the base models' scores
   of those candidates, the reader's history, the stored statistics and the
   request context;
3. ``score`` gives one float32 per row; higher is better.

The ranker only re-orders the pool, so its recall is bounded by the pool's.

Files (no pickle): ``ranker.json`` (the XGBoost booster in XGBoost's own JSON),
``ranker.tables.json`` (categorical mappings and the time origin) and one
``ranker.<table>.npy`` per statistics array. The ordered feature names travel
in ``params()["features"]`` (the manifest's ``ranker.features``) and in the
booster file; ``load`` refuses a bundle where they differ.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import xgboost as xgb

from bookverse.models.base import Model, UserProfile, load_array
from bookverse.models.features import (
    FeatureTables,
    RequestContext,
    build_features,
    check_feature_names,
    pool_candidates,
)

logger = logging.getLogger(__name__)

BOOSTER_FILE = "ranker.json"
TABLES_FILE = "ranker.tables.json"
_ARRAYS = ("author", "publisher", "genres", "trend")


def _table_file(kind: str, name: str) -> str:
    return f"ranker.{kind}.{name}.npy" if kind else f"ranker.{name}.npy"


class MetaRanker:
    """Learning-to-rank over base-model scores and reader and book features.

    Parameters
    ----------
    features : sequence of str
        Ordered feature names (``features.known_features``).
    base_models : sequence of str
        Base models whose scores the features use, by registry name.
    pool : int, default 50
        Books each base model proposes to the candidate pool; >= 1.

    Attributes
    ----------
    booster_ : xgboost.Booster
        Predicts with one thread (the server runs many calls in parallel).
    tables_ : FeatureTables
        Statistics of the data the base models were fitted on.
    """

    name: ClassVar[str] = "meta_ranker"

    def __init__(
        self, features: Sequence[str], base_models: Sequence[str], pool: int = 50
    ) -> None:
        self.features = list(features)
        self.base_models = list(base_models)
        self.pool = pool
        self.booster_: xgb.Booster | None = None
        self.tables_: FeatureTables | None = None

    def check(self) -> None:
        """Refuse parameters that break their rule.

        Raises
        ------
        ValueError
            Naming ``pool``, an unknown or repeated feature, or a base model
            listed twice.
        """
        if self.pool < 1:
            raise ValueError(f"pool must be >= 1, got {self.pool!r}")
        if len(set(self.base_models)) != len(self.base_models):
            raise ValueError(f"base_models must be unique, got {self.base_models}")
        check_feature_names(self.features, self.base_models)

    def set_fitted(self, booster: xgb.Booster, tables: FeatureTables) -> Self:
        """Attach a trained booster and the statistics; returns self.

        Raises
        ------
        ValueError
            If the parameters break their rule or the booster's feature names
            differ from ``features`` (the message names the first difference).
        """
        self.check()
        _check_booster_features(booster, self.features)
        booster.set_param({"nthread": 1})
        self.booster_, self.tables_ = booster, tables
        return self

    def _fitted(self) -> tuple[xgb.Booster, FeatureTables]:
        if self.booster_ is None or self.tables_ is None:
            raise RuntimeError("meta_ranker is not fitted: train it or call load")
        return self.booster_, self.tables_

    # -- request time -------------------------------------------------------

    def candidates(
        self,
        models: Mapping[str, Model],
        profile: UserProfile,
        exclude: np.ndarray | None = None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The candidate pool of one reader and each base model's scores of it.

        Parameters
        ----------
        models : dict of str to Model
            Fitted base models; every name in ``base_models`` must be present.
        profile : UserProfile
            The history being scored; its books are never candidates.
        exclude : (m,) int, optional
            More books never to propose.

        Returns
        -------
        items : (n_candidates,) int64, ascending
        scores : dict of str to (n_candidates,) float32

        Raises
        ------
        ValueError
            If a base model is missing from ``models``.
        """
        missing = [m for m in self.base_models if m not in models]
        if missing:
            raise ValueError(f"models must hold base model(s) {missing}")
        full = {
            m: np.asarray(models[m].score(profile), np.float32)
            for m in self.base_models
        }
        seen = np.asarray(profile.items, dtype=np.int64)
        if exclude is not None:
            seen = np.concatenate([seen, np.asarray(exclude, dtype=np.int64)])
        items = pool_candidates(full, seen, self.pool)
        return items, {m: values[items] for m, values in full.items()}

    def build(
        self,
        items: np.ndarray,
        scores: Mapping[str, np.ndarray],
        profile: UserProfile,
        reader: int | None = None,
        context: RequestContext | None = None,
    ) -> np.ndarray:
        """Feature rows of the candidates: ``build_features`` with this ranker's
        feature names and statistics.

        Returns
        -------
        (n_candidates, n_features) float32, NaN where missing.

        Raises
        ------
        ValueError
            As ``build_features``.
        """
        _, tables = self._fitted()
        return build_features(
            self.features, items, scores, profile, tables, reader, context
        )

    def score(self, features: np.ndarray) -> np.ndarray:
        """Ranker scores of feature rows; higher is better.

        Parameters
        ----------
        features : (n_candidates, n_features) float
            Columns in ``self.features`` order; NaN is missing.

        Returns
        -------
        (n_candidates,) float32

        Raises
        ------
        ValueError
            If ``features`` is not 2-D with ``n_features`` columns.
        """
        booster, _ = self._fitted()
        matrix = np.asarray(features, dtype=np.float32)
        if matrix.ndim != 2 or matrix.shape[1] != len(self.features):
            raise ValueError(
                f"features must have shape (n, {len(self.features)}), "
                f"got {matrix.shape}"
            )
        if len(matrix) == 0:
            return np.zeros(0, dtype=np.float32)
        predicted = booster.inplace_predict(matrix, validate_features=False)
        return np.asarray(predicted, dtype=np.float32)

    # -- bundle -------------------------------------------------------------

    def params(self) -> dict[str, Any]:
        return {
            "features": list(self.features),
            "base_models": list(self.base_models),
            "pool": self.pool,
        }

    def save(self, directory: Path) -> list[str]:
        """Write the booster (XGBoost JSON), the tables' JSON and ``.npy`` arrays."""
        booster, tables = self._fitted()
        directory = Path(directory)
        booster.save_model(str(directory / BOOSTER_FILE))
        written = [BOOSTER_FILE, TABLES_FILE]
        meta = {
            "book": sorted(tables.book),
            "reader": sorted(tables.reader),
            "trend_start": tables.trend_start,
            "mean_activity": tables.mean_activity,
            "vocab": tables.vocab,
        }
        (directory / TABLES_FILE).write_text(json.dumps(meta), encoding="utf-8")
        arrays = {
            **{_table_file("book", k): v for k, v in tables.book.items()},
            **{_table_file("reader", k): v for k, v in tables.reader.items()},
            **{_table_file("", k): getattr(tables, k) for k in _ARRAYS},
        }
        for file, array in arrays.items():
            np.save(directory / file, np.asarray(array), allow_pickle=False)
            written.append(file)
        return written

    @classmethod
    def load(cls, directory: Path, params: dict[str, Any]) -> Self:
        """Read what ``save`` wrote and check it against ``params``.

        Raises
        ------
        ValueError
            If a file is missing or malformed (named), or a feature of
            ``params["features"]`` is not the booster's feature at that
            position or cannot be built by ``features.build_features``
            (the message names the feature).
        """
        directory = Path(directory)
        ranker = cls(**params)
        ranker.check()
        booster = xgb.Booster()
        try:
            booster.load_model(str(directory / BOOSTER_FILE))
        except xgb.core.XGBoostError as exc:
            raise ValueError(f"{BOOSTER_FILE}: cannot read booster ({exc})") from exc
        tables = _load_tables(directory)
        return ranker.set_fitted(booster, tables)


def _check_booster_features(booster: xgb.Booster, features: Sequence[str]) -> None:
    stored = list(booster.feature_names or [])
    for position, (mine, theirs) in enumerate(zip(features, stored, strict=False)):
        if mine != theirs:
            raise ValueError(
                f"features[{position}] is {mine!r} but {BOOSTER_FILE} has {theirs!r}"
            )
    if len(stored) != len(features):
        extra = (stored[len(features) :] or list(features)[len(stored) :])[0]
        raise ValueError(
            f"features: {len(features)} listed but {BOOSTER_FILE} has "
            f"{len(stored)}; first unmatched feature {extra!r}"
        )


def _load_tables(directory: Path) -> FeatureTables:
    path = directory / TABLES_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ValueError(f"{TABLES_FILE}: missing") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{TABLES_FILE}: unreadable ({exc})") from exc

    def read(file: str) -> np.ndarray:
        try:
            return np.asarray(load_array(directory / file, mmap=False))
        except FileNotFoundError as exc:
            raise ValueError(f"{file}: missing") from exc

    book = {k: read(_table_file("book", k)) for k in meta["book"]}
    reader = {k: read(_table_file("reader", k)) for k in meta["reader"]}
    arrays = {k: read(_table_file("", k)) for k in _ARRAYS}
    n_items = len(arrays["author"])
    for name, array in [*book.items(), *((k, arrays[k]) for k in _ARRAYS)]:
        if len(array) != n_items:
            raise ValueError(
                f"{name}: must have one row per book ({n_items}), got {len(array)}"
            )
    return FeatureTables(
        book=book,
        reader=reader,
        author=arrays["author"],
        publisher=arrays["publisher"],
        genres=arrays["genres"],
        trend=arrays["trend"],
        trend_start=float(meta["trend_start"]),
        mean_activity=float(meta["mean_activity"]),
        vocab={k: list(v) for k, v in meta["vocab"].items()},
    )
