"""Training and evaluation of the meta-ranker (``bookverse.models.ranker``).

The ranker is never fitted or tuned on a test split. ``fit_meta_ranker``:

1. carves a validation split out of the training data (per reader,
   ``validation_fraction`` of each reader's books) and fits the base models
   on the rest (the *fit part*);
2. for each validation reader, builds the candidate pool as serving does
   (``MetaRanker.candidates``: the union of each base model's ``pool`` best
   unseen books), one feature row per candidate (``build_features``), label
   1 when the candidate is one of the reader's validation books;
3. trains XGBoost with one query group per reader; the validation readers
   are split once more (by reader) so that early stopping and the choice of
   objective (``rank:ndcg`` or ``rank:pairwise``) never see the rows they
   are judged on; the chosen objective is then refitted on every validation
   reader with the number of rounds found;
4. attaches the statistics of the whole training data, on which the base
   models must be refitted before the ranker is used.

``evaluate_meta_ranker`` scores the reference protocol over the whole
catalogue: candidates are the pool, re-ordered by the ranker; every book
outside the pool ranks below every pooled one. The ranker only re-orders the
pool, so its recall is bounded by the pool's: the result carries
``pool_recall`` (share of each reader's test books that reach the pool,
averaged over readers) and ``pool_size``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import xgboost as xgb

from bookverse.models.base import Model, UserProfile
from bookverse.models.dataset import Dataset
from bookverse.models.features import (
    CONTEXT_FEATURES,
    FeatureTables,
    build_features,
    compute_tables,
    known_features,
    pool_candidates,
)
from bookverse.models.ranker import MetaRanker
from bookverse.models.registry import create_model
from bookverse.training.metrics import ranking_metrics
from bookverse.training.split import per_user_split

logger = logging.getLogger(__name__)

OBJECTIVES = ("rank:ndcg", "rank:pairwise")
DEFAULT_PARAMS: dict[str, Any] = {
    "eta": 0.05,
    "max_depth": 4,
    "min_child_weight": 20.0,
    "subsample": 0.8,
    "colsample_bytree": 0.8,
    "lambda": 1.0,
    "tree_method": "hist",
    "max_bin": 256,
}
FOLD_READERS = 4000
"""``fit_meta_ranker`` adds validation folds until about this many readers."""
MAX_FOLDS = 5
MAX_ROUNDS = 600
EARLY_STOPPING = 40
BATCH_SIZE = 256


@dataclass(frozen=True)
class RankingRows:
    """Feature rows of many readers' candidate pools, grouped by reader.

    Attributes
    ----------
    features : (n_rows, n_features) float32
    labels : (n_rows,) float32, 1 where the candidate is a target book
    items : (n_rows,) int64, the candidate books
    group : (n_readers,) int64, rows per reader, in row order
    users : (n_readers,) int64
    n_relevant : (n_readers,) int64, each reader's target books (pooled or not)
    """

    features: np.ndarray
    labels: np.ndarray
    items: np.ndarray
    group: np.ndarray
    users: np.ndarray
    n_relevant: np.ndarray

    @property
    def qid(self) -> np.ndarray:
        """(n_rows,) int64: the reader position of each row."""
        return np.repeat(np.arange(len(self.group)), self.group)

    def readers(self, keep: np.ndarray) -> RankingRows:
        """Only the readers at positions where ``keep`` ((n_readers,) bool) is
        True."""
        rows = np.repeat(keep, self.group)
        return RankingRows(
            self.features[rows],
            self.labels[rows],
            self.items[rows],
            self.group[keep],
            self.users[keep],
            self.n_relevant[keep],
        )


def fit_base_models(
    specs: Mapping[str, Mapping[str, Any]], data: Dataset
) -> dict[str, Model]:
    """One fitted model per entry of ``specs`` (registry name -> parameters)."""
    fitted = {}
    for name, params in specs.items():
        started = time.perf_counter()
        fitted[name] = create_model(name, dict(params)).fit(data)
        logger.debug("fitted %s in %.1fs", name, time.perf_counter() - started)
    return fitted


def usable_features(
    tables: FeatureTables, base_models: Sequence[str], raw_scores: bool = False
) -> list[str]:
    """Features the training data gives a value.

    The per-model rank and normalised score (and the raw score only with
    ``raw_scores``: its scale drifts between the base models fitted on the
    fit part, which the ranker learns from, and those refitted on all the
    training data, which it is used with), and the book, reader and cross
    features the tables provide. Request-context features are left out: no
    training data set records the request context, and a column always
    missing in training cannot be learned.
    """
    names = []
    for name in known_features(base_models):
        model, _, suffix = name.rpartition("_")
        if name in CONTEXT_FEATURES:
            continue
        if model in base_models:
            if raw_scores or suffix != "score":
                names.append(name)
        elif tables.provides(name):
            names.append(name)
    return names


def _pools(
    models: Mapping[str, Model],
    base_models: Sequence[str],
    user_items: sp.csr_matrix,
    users: np.ndarray,
    pool: int,
) -> Iterator[tuple[int, np.ndarray, dict[str, np.ndarray]]]:
    """Each reader's pool and base-model scores, as ``MetaRanker.candidates``
    would give them, from ``score_users`` batches."""
    for start in range(0, len(users), BATCH_SIZE):
        batch = users[start : start + BATCH_SIZE]
        full = {
            m: np.asarray(models[m].score_users(user_items, batch), np.float32)
            for m in base_models
        }
        for row, user in enumerate(batch.tolist()):
            scores = {m: values[row] for m, values in full.items()}
            seen = user_items[user].indices
            items = pool_candidates(scores, seen, pool)
            yield user, items, {m: values[items] for m, values in scores.items()}


def collect_rows(
    models: Mapping[str, Model],
    names: Sequence[str],
    base_models: Sequence[str],
    tables: FeatureTables,
    known: Dataset,
    target: Dataset,
    users: np.ndarray,
    pool: int,
) -> RankingRows:
    """Candidate pools, feature rows and labels of ``users``.

    Parameters
    ----------
    models : dict of str to Model
        Fitted on ``known``.
    names : feature names, in column order.
    base_models : the models whose scores make the pool and the features.
    tables : statistics of ``known`` (``compute_tables``).
    known, target : Dataset
        What the models saw, and the books to find (label 1).
    users : (n,) int
        Readers to collect.
    pool : books proposed per base model.

    Returns
    -------
    RankingRows
    """
    user_items, target_items = known.user_items(), target.user_items()
    features, labels, items, group = [], [], [], []
    for user, pooled, scores in _pools(models, base_models, user_items, users, pool):
        history = user_items[user].indices.astype(np.int64)
        profile = UserProfile(user, history, np.ones(len(history), np.float32))
        features.append(build_features(names, pooled, scores, profile, tables, user))
        relevant = target_items[user].indices
        labels.append(np.isin(pooled, relevant).astype(np.float32))
        items.append(pooled)
        group.append(len(pooled))
    n_features = len(names)
    return RankingRows(
        np.concatenate(features) if features else np.zeros((0, n_features), "f4"),
        np.concatenate(labels) if labels else np.zeros(0, np.float32),
        np.concatenate(items) if items else np.zeros(0, np.int64),
        np.asarray(group, dtype=np.int64),
        np.asarray(users, dtype=np.int64),
        np.asarray(target_items.getnnz(axis=1)[users], dtype=np.int64),
    )


def _matrix(rows: RankingRows, names: Sequence[str]) -> xgb.DMatrix:
    return xgb.DMatrix(
        rows.features,
        label=rows.labels,
        qid=rows.qid,
        feature_names=list(names),
        missing=np.nan,
    )


def _booster(
    params: Mapping[str, Any],
    train: xgb.DMatrix,
    rounds: int,
    valid: xgb.DMatrix | None = None,
) -> xgb.Booster:
    evals = [(valid, "valid")] if valid is not None else []
    return xgb.train(
        dict(params),
        train,
        num_boost_round=rounds,
        evals=evals,
        early_stopping_rounds=EARLY_STOPPING if valid is not None else None,
        verbose_eval=False,
    )


def rows_ndcg(rows: RankingRows, scores: np.ndarray, k: int) -> float:
    """Mean nDCG@k of pools ordered by ``scores``, the ideal list counting
    every target book (pooled or not); readers without targets left out."""
    hits = _top_hits(rows, scores, k)
    return ranking_metrics(hits, rows.n_relevant)[f"ndcg@{k}"]


def _top_hits(rows: RankingRows, scores: np.ndarray, k: int) -> np.ndarray:
    """(n_readers, k) bool hits of each pool's k best rows (ties: lower item)."""
    hits = np.zeros((len(rows.group), k), dtype=bool)
    start = 0
    for reader, size in enumerate(rows.group.tolist()):
        part = slice(start, start + size)
        order = np.lexsort((rows.items[part], -scores[part]))[:k]
        hits[reader, : len(order)] = rows.labels[part][order] > 0
        start += size
    return hits


@dataclass(frozen=True)
class Fold:
    """Base models fitted on ``fit_part``; ``validation`` holds the labels."""

    models: Mapping[str, Model]
    fit_part: Dataset
    validation: Dataset


def train_ranker(
    folds: Sequence[Fold],
    final: Dataset,
    *,
    k: int = 10,
    pool: int = 50,
    seed: int = 0,
    objectives: Sequence[str] = OBJECTIVES,
    max_readers: int | None = None,
    params: Mapping[str, Any] | None = None,
    nthread: int = 0,
    raw_scores: bool = False,
) -> MetaRanker:
    """Train a ranker on validation pools of base models fitted on fit parts.

    Parameters
    ----------
    folds : sequence of Fold
        Splits of the training data (fit part, validation) with the base
        models fitted on each fit part only; each fold adds one group of rows
        per validation reader. The model names (the same in every fold) are
        the ranker's ``base_models``.
    final : Dataset
        The whole training data: its statistics are attached to the ranker,
        and the base models must be refitted on it before use.
    k : int, default 10
        Cut-off of the nDCG that chooses the objective and stops boosting.
    pool : int, default 50
        Books proposed per base model.
    seed : int, default 0
        Seed of reader sampling, the inner reader split and XGBoost.
    objectives : sequence of str
        XGBoost ranking objectives tried; the best on held-out readers wins.
    max_readers : int, optional
        Validation readers sampled to bound the training time.
    params : dict, optional
        XGBoost parameters over ``DEFAULT_PARAMS``.
    nthread : int, default 0
        Threads for training (0: all cores); prediction uses one.
    raw_scores : bool, default False
        Also use the base models' raw scores (``usable_features``).

    Returns
    -------
    MetaRanker

    Raises
    ------
    ValueError
        If ``models`` or ``objectives`` is empty, an objective is not a ranking
        one, or ``k``/``pool`` < 1.
    """
    _check_training(folds, objectives, k, pool)
    started = time.perf_counter()
    base_models = list(folds[0].models)
    names = usable_features(compute_tables(folds[0].fit_part), base_models, raw_scores)
    parts = []
    for number, fold in enumerate(folds):
        users = _sample_readers(fold.validation, max_readers, seed + number)
        tables = compute_tables(fold.fit_part)
        parts.append(
            collect_rows(
                fold.models,
                names,
                base_models,
                tables,
                fold.fit_part,
                fold.validation,
                users,
                pool,
            )
        )
    rows = concatenate_rows(parts)
    # readers with no target book in their pool teach nothing about order
    rows = rows.readers(_positive_groups(rows))
    logger.info(
        "ranker rows: %s readers, %s rows, %s features, %.3f positive (%.1fs)",
        len(rows.group),
        len(rows.labels),
        len(names),
        float(rows.labels.mean()) if len(rows.labels) else 0.0,
        time.perf_counter() - started,
    )

    # choose the objective and the rounds on held-out readers
    held_out = np.random.default_rng(seed).random(len(rows.group)) < 0.2
    inner, outer = rows.readers(~held_out), rows.readers(held_out)
    base = {
        **DEFAULT_PARAMS,
        **dict(params or {}),
        "seed": seed,
        "nthread": nthread,
        "eval_metric": f"ndcg@{k}",
    }
    trials = {}
    for objective in objectives:
        trial = {**base, "objective": objective}
        booster = _booster(
            trial, _matrix(inner, names), MAX_ROUNDS, _matrix(outer, names)
        )
        rounds = booster.best_iteration + 1
        predicted = booster.predict(_matrix(outer, names), iteration_range=(0, rounds))
        trials[objective] = (rows_ndcg(outer, predicted, k), rounds)
        logger.info(
            "ranker %s: held-out ndcg@%s %.4f after %s rounds",
            objective,
            k,
            trials[objective][0],
            rounds,
        )
    objective = max(trials, key=lambda o: trials[o][0])

    # refit on every validation reader with the rounds found
    booster = _booster(
        {**base, "objective": objective}, _matrix(rows, names), trials[objective][1]
    )
    ranker = MetaRanker(names, base_models, pool)
    ranker.set_fitted(booster, compute_tables(final))
    logger.info(
        "meta-ranker trained (%s, %s rounds) in %.1fs",
        objective,
        trials[objective][1],
        time.perf_counter() - started,
    )
    return ranker


def fit_meta_ranker(
    base_specs: Mapping[str, Mapping[str, Any]],
    train: Dataset,
    k: int = 10,
    seed: int = 0,
    *,
    validation_fraction: float = 0.2,
    n_folds: int | None = None,
    pool: int = 50,
    objectives: Sequence[str] = OBJECTIVES,
    max_readers: int | None = None,
    params: Mapping[str, Any] | None = None,
    nthread: int = 0,
) -> MetaRanker:
    """Fit base models on splits of ``train`` and train the ranker on the rest.

    ``train`` is split ``n_folds`` times per reader (``validation_fraction``
    to validation, seeds ``seed``, ``seed + 1``, ...); the base models of
    ``base_specs`` (registry name -> parameters) are fitted on each fit part,
    and ``train_ranker`` does the rest. Refit the same base models on the
    whole of ``train`` to serve or evaluate the returned ranker.

    Returns
    -------
    MetaRanker

    Raises
    ------
    ValueError
        As ``per_user_split``, ``create_model`` and ``train_ranker``.
    """
    folds = []
    for number in range(folds_for(train) if n_folds is None else n_folds):
        fit_part, validation = per_user_split(train, validation_fraction, seed + number)
        models = fit_base_models(base_specs, fit_part)
        folds.append(Fold(models, fit_part, validation))
    return train_ranker(
        folds,
        train,
        k=k,
        pool=pool,
        seed=seed,
        objectives=objectives,
        max_readers=max_readers,
        params=params,
        nthread=nthread,
    )


def folds_for(data: Dataset) -> int:
    """Validation folds for the ranker to learn from about ``FOLD_READERS``
    readers: one on a large data set, up to ``MAX_FOLDS`` on a small one
    (MovieLens-100k's 943 readers give 5)."""
    readers = max(int((data.user_items().getnnz(axis=1) > 0).sum()), 1)
    return int(min(MAX_FOLDS, max(1, math.ceil(FOLD_READERS / readers))))


def evaluate_meta_ranker(
    ranker: MetaRanker,
    models: Mapping[str, Model],
    train: Dataset,
    test: Dataset,
    k: int = 10,
    users: np.ndarray | None = None,
) -> dict[str, float]:
    """Top-k metrics of the ranker over the whole catalogue.

    Parameters
    ----------
    ranker : MetaRanker
        Trained with statistics of ``train``.
    models : dict of str to Model
        The ranker's base models, fitted on ``train``.
    train, test : Dataset
        A split of one data set.
    k : int, default 10
    users : (n,) int, optional
        Readers to score; default every reader with a test book.

    Returns
    -------
    dict
        ``precision@k``, ``recall@k``, ``ndcg@k``, ``map@k``, ``n_users``,
        ``pool_recall``, ``pool_size`` and ``seconds``.

    Raises
    ------
    ValueError
        If ``k`` < 1 or a base model is missing from ``models``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    missing = [m for m in ranker.base_models if m not in models]
    if missing:
        raise ValueError(f"models must hold base model(s) {missing}")
    started = time.perf_counter()
    if users is None:
        users = np.flatnonzero(test.user_items().getnnz(axis=1) > 0)
    users = np.asarray(users, dtype=np.int64)
    tables = ranker.tables_
    if tables is None:
        raise RuntimeError("meta_ranker is not fitted: train it or call load")
    rows = collect_rows(
        models,
        ranker.features,
        ranker.base_models,
        tables,
        train,
        test,
        users,
        ranker.pool,
    )
    scores = ranker.score(rows.features)
    result = ranking_metrics(_top_hits(rows, scores, k), rows.n_relevant)
    pooled = _per_reader(rows)
    scored = rows.n_relevant > 0
    result["pool_recall"] = float(
        (pooled[scored] / rows.n_relevant[scored]).mean() if scored.any() else np.nan
    )
    result["pool_size"] = float(rows.group.mean()) if len(rows.group) else 0.0
    result["seconds"] = time.perf_counter() - started
    logger.info(
        "evaluated meta-ranker on %s readers in %.1fs: ndcg@%s %.4f, "
        "pool recall %.4f over %.0f candidates",
        len(users),
        result["seconds"],
        k,
        result[f"ndcg@{k}"],
        result["pool_recall"],
        result["pool_size"],
    )
    return result


def concatenate_rows(parts: Sequence[RankingRows]) -> RankingRows:
    """The rows of several collections, one after the other."""
    fields = ("features", "labels", "items", "group", "users", "n_relevant")
    return RankingRows(
        *(np.concatenate([getattr(part, f) for part in parts]) for f in fields)
    )


def _per_reader(rows: RankingRows) -> np.ndarray:
    """Target books in each reader's pool: (n_readers,) float64."""
    return np.bincount(rows.qid, weights=rows.labels, minlength=len(rows.group))


def _positive_groups(rows: RankingRows) -> np.ndarray:
    return _per_reader(rows) > 0


def _sample_readers(
    validation: Dataset, max_readers: int | None, seed: int
) -> np.ndarray:
    users = np.flatnonzero(validation.user_items().getnnz(axis=1) > 0)
    if max_readers is not None and len(users) > max_readers:
        rng = np.random.default_rng(seed)
        users = np.sort(rng.choice(users, size=max_readers, replace=False))
    return users.astype(np.int64)


def _check_training(
    folds: Sequence[Fold], objectives: Sequence[str], k: int, pool: int
) -> None:
    if not folds:
        raise ValueError("folds must hold at least one fold, got none")
    names = [list(fold.models) for fold in folds]
    if not names[0] or any(n != names[0] for n in names):
        raise ValueError(f"folds must fit the same non-empty base models, got {names}")
    if not objectives:
        raise ValueError("objectives must name at least one, got none")
    for objective in objectives:
        if not objective.startswith("rank:"):
            raise ValueError(
                f"objectives must be XGBoost ranking objectives (rank:*), "
                f"got {objective!r}"
            )
    for name, value in (("k", k), ("pool", pool)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
