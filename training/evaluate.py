"""Offline evaluation of models and of their weighted blend.

Protocol (the reference one, ``DATA.md``): for every reader with at least one
test book, rank the *whole* catalogue, with the reader's training books
removed (never a sample of negatives), take the top k, and score it against
the test books with ``bookverse.training.metrics``. Readers are scored in
batches through ``Model.score_users`` (one dense (batch, n_items) block at a
time) and cut to k with ``argpartition``.

The blend is evaluated the way serving uses it: each model proposes its
``pool`` best unseen books, the union of those proposals is the candidate set,
each model's scores are min-max normalised over that set and blended
(``WeightedBlend``). ``pool=None`` blends over the whole catalogue instead.
Blend weights are fitted here, on a validation split, never in serving.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import scipy.sparse as sp

from bookverse.models.base import Model
from bookverse.models.dataset import Dataset
from bookverse.models.hybrid import WeightedBlend, min_max
from bookverse.training.metrics import (
    catalogue_coverage,
    gini_index,
    intra_list_diversity,
    mean_pairwise_overlap,
    ndcg_at_k,
    ranking_metrics,
)

logger = logging.getLogger(__name__)

BATCH_SIZE = 512
DEFAULT_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)


def _batches(users: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(users), size):
        yield users[start : start + size]


def _test_readers(
    train: Dataset, test: Dataset, users: np.ndarray | None
) -> tuple[sp.csr_matrix, sp.csr_matrix, np.ndarray]:
    """Training and test matrices, and the readers to score (default: all with
    a test book)."""
    if train.n_users != test.n_users or train.n_items != test.n_items:
        raise ValueError(
            "train and test must share readers and catalogue, got "
            f"{train.n_users}x{train.n_items} and {test.n_users}x{test.n_items}"
        )
    train_items, test_items = train.user_items(), test.user_items()
    if users is None:
        users = np.flatnonzero(test_items.getnnz(axis=1) > 0)
    return train_items, test_items, np.asarray(users, dtype=np.int64)


def _mask_seen(scores: np.ndarray, seen: sp.csr_matrix) -> np.ndarray:
    """Set each row's training items to -inf, in place; (batch, n_items)."""
    rows = np.repeat(np.arange(seen.shape[0]), np.diff(seen.indptr))
    scores[rows, seen.indices] = -np.inf
    return scores


def _top_k_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's k best finite scores, best first.

    Returns
    -------
    (n_rows, k) int64, ``-1`` where a row has fewer than k finite scores.
    """
    k_part = min(k, scores.shape[1])
    part = np.argpartition(-scores, k_part - 1, axis=1)[:, :k_part]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    top = np.take_along_axis(part, order, axis=1).astype(np.int64)
    top[~np.isfinite(np.take_along_axis(part_scores, order, axis=1))] = -1
    if k_part < k:
        top = np.pad(top, ((0, 0), (0, k - k_part)), constant_values=-1)
    return top


def _hits(top: np.ndarray, relevant: sp.csr_matrix) -> np.ndarray:
    """(batch, k) bool: is ``top[u, i]`` among reader u's test books."""
    dense = relevant.toarray().astype(bool)
    found = np.take_along_axis(dense, np.maximum(top, 0), axis=1)
    return found & (top >= 0)


def _summary(
    top: np.ndarray,
    hits: np.ndarray,
    n_relevant: np.ndarray,
    n_items: int,
    similarity: Callable[[np.ndarray], np.ndarray] | None,
) -> dict[str, float]:
    result = ranking_metrics(hits, n_relevant)
    result["coverage"] = catalogue_coverage(top, n_items)
    result["gini"] = gini_index(top, n_items)
    result["overlap"] = mean_pairwise_overlap(top)
    if similarity is not None:
        result["diversity"] = intra_list_diversity(top, similarity)
    return result


def evaluate_model(
    model: Model,
    train: Dataset,
    test: Dataset,
    k: int = 10,
    users: np.ndarray | None = None,
    batch_size: int = BATCH_SIZE,
    similarity: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict[str, float]:
    """Top-k accuracy and list measures of one fitted model.

    Parameters
    ----------
    model : Model
        Fitted on ``train``.
    train, test : Dataset
        A split of one data set (same readers and catalogue).
    k : int, default 10
    users : (n,) int, optional
        Reader indices to score; default every reader with a test book.
    batch_size : int, default 512
        Readers per ``score_users`` call; memory is ~4 * batch * n_items bytes.
    similarity : callable, optional
        ``similarity(items) -> (n, n)`` for intra-list diversity
        (``metrics.cosine_similarity_fn``); omitted: no ``diversity`` key.

    Returns
    -------
    dict
        ``precision@k``, ``recall@k``, ``ndcg@k``, ``map@k``, ``n_users``,
        ``coverage``, ``gini``, ``overlap``, optionally ``diversity``, and
        ``seconds`` (wall time of the evaluation).

    Raises
    ------
    ValueError
        If ``k`` < 1 or train and test do not share readers and catalogue.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    started = time.perf_counter()
    train_items, test_items, users = _test_readers(train, test, users)

    tops, hits = [], []
    for batch in _batches(users, batch_size):
        scores = np.array(model.score_users(train_items, batch), dtype=np.float32)
        top = _top_k_rows(_mask_seen(scores, train_items[batch]), k)
        tops.append(top)
        hits.append(_hits(top, test_items[batch]))

    top = np.concatenate(tops) if tops else np.zeros((0, k), np.int64)
    hit = np.concatenate(hits) if hits else np.zeros((0, k), bool)
    n_relevant = test_items.getnnz(axis=1)[users]
    result = _summary(top, hit, n_relevant, train.n_items, similarity)
    result["seconds"] = time.perf_counter() - started
    logger.info(
        "evaluated %s on %s readers in %.1fs: ndcg@%s %.4f",
        model.name,
        len(users),
        result["seconds"],
        k,
        result[f"ndcg@{k}"],
    )
    return result


def _blend_candidates(
    models: Mapping[str, Model],
    train_items: sp.csr_matrix,
    batch: np.ndarray,
    pool: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Candidate sets of a batch of readers and each model's normalised scores.

    Returns
    -------
    candidates : (batch, c) int64
        Item indices; ``-1`` for an empty slot (a repeat or a seen book).
    normalised : (n_models, batch, c) float32
        Min-max over each reader's candidates, in ``models`` order; 0 in
        empty slots.
    """
    seen = train_items[batch]
    raw = [
        _mask_seen(np.array(m.score_users(train_items, batch), np.float32), seen)
        for m in models.values()
    ]
    n_items = train_items.shape[1]
    if pool is None:
        candidates = np.tile(np.arange(n_items, dtype=np.int64), (len(batch), 1))
    else:
        proposals = np.concatenate([_top_k_rows(s, min(pool, n_items)) for s in raw], 1)
        candidates = np.sort(proposals, axis=1)
        candidates[:, 1:][candidates[:, 1:] == candidates[:, :-1]] = -1

    # a seen book is -inf for every model; an empty slot is NaN, i.e. ignored
    empty = candidates < 0
    empty |= np.isneginf(np.take_along_axis(raw[0], np.maximum(candidates, 0), 1))
    candidates[empty] = -1
    normalised = np.empty((len(raw), *candidates.shape), dtype=np.float32)
    for m, scores in enumerate(raw):
        values = np.take_along_axis(scores, np.maximum(candidates, 0), axis=1)
        normalised[m] = min_max(np.where(empty, np.nan, values))
    return candidates, normalised


def _blend_top(
    candidates: np.ndarray, normalised: np.ndarray, weights: np.ndarray, k: int
) -> np.ndarray:
    """Items of the k best blended candidates per reader: (batch, k) int64."""
    best = _top_k_rows(_blend_objective(candidates, normalised, weights), k)
    top = np.take_along_axis(candidates, np.maximum(best, 0), axis=1)
    return np.where(best >= 0, top, -1)


def evaluate_blend(
    models: Mapping[str, Model],
    weights: Mapping[str, float],
    train: Dataset,
    test: Dataset,
    k: int = 10,
    users: np.ndarray | None = None,
    pool: int | None = 100,
    batch_size: int = BATCH_SIZE,
) -> dict[str, float]:
    """Top-k metrics of the weighted blend of fitted models.

    Parameters
    ----------
    models : dict of str to Model
        Fitted on ``train``, keyed by the names used in ``weights``.
    weights : dict of str to float
        Blend weights (a model without one gets 0).
    pool : int or None, default 100
        Candidates proposed by each model (their union is blended, as in
        serving); ``None`` blends over the whole catalogue, which needs
        ``len(models)`` times the memory of ``evaluate_model``.

    Other parameters and the result are those of ``evaluate_model``.

    Raises
    ------
    ValueError
        If ``k`` < 1, a weight is negative or not finite, or train and test do
        not share readers and catalogue.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    WeightedBlend(weights).check()
    started = time.perf_counter()
    train_items, test_items, users = _test_readers(train, test, users)
    vector = np.array([weights.get(name, 0.0) for name in models], dtype=np.float32)

    tops, hits = [], []
    for batch in _batches(users, batch_size):
        candidates, normalised = _blend_candidates(models, train_items, batch, pool)
        top = _blend_top(candidates, normalised, vector, k)
        tops.append(top)
        hits.append(_hits(top, test_items[batch]))

    top = np.concatenate(tops) if tops else np.zeros((0, k), np.int64)
    hit = np.concatenate(hits) if hits else np.zeros((0, k), bool)
    n_relevant = test_items.getnnz(axis=1)[users]
    result = _summary(top, hit, n_relevant, train.n_items, None)
    result["seconds"] = time.perf_counter() - started
    logger.info(
        "evaluated blend %s in %.1fs: ndcg@%s %.4f",
        dict(weights),
        result["seconds"],
        k,
        result[f"ndcg@{k}"],
    )
    return result


def fit_blend_weights(
    models: Mapping[str, Model],
    train: Dataset,
    validation: Dataset,
    k: int = 10,
    grid: Sequence[float] = DEFAULT_GRID,
    rounds: int = 3,
    max_users: int = 3000,
    pool: int | None = 100,
    seed: int = 0,
) -> dict[str, float]:
    """Blend weights that maximise validation nDCG@k, by coordinate search.

    Starting from equal weights, each round tries every ``grid`` value for one
    model at a time, the others fixed, and keeps the best (a tie keeps the
    current value); it stops after ``rounds`` rounds or a round without
    change. Candidates and normalised scores are computed once, so each trial
    only re-blends. Scale does not change a ranking, so the result is scaled
    to sum to 1.

    Parameters
    ----------
    models : dict of str to Model
        Fitted on ``train`` only: ``validation`` must be unseen by them.
    train, validation : Dataset
        A split of the training part (never the test part).
    k : int, default 10
    grid : sequence of float
        Weights tried per model; each finite and >= 0.
    rounds : int, default 3
    max_users : int, default 3000
        Validation readers sampled (with ``seed``) to keep the search fast.
    pool : int or None, default 100
        As in ``evaluate_blend``.

    Returns
    -------
    dict of str to float
        Model name -> weight, summing to 1.

    Raises
    ------
    ValueError
        If ``models`` is empty, ``grid`` has a negative or non-finite value or
        no positive one, or ``k``/``rounds``/``max_users`` is < 1.
    """
    _check_search(models, grid, k, rounds, max_users)
    train_items, valid_items, users = _test_readers(train, validation, None)
    rng = np.random.default_rng(seed)
    if len(users) > max_users:
        users = np.sort(rng.choice(users, size=max_users, replace=False))

    # candidates, normalised scores and relevance, once
    parts, relevance = [], []
    for batch in _batches(users, BATCH_SIZE):
        parts.append(_blend_candidates(models, train_items, batch, pool))
        relevance.append(_hits(parts[-1][0], valid_items[batch]))
    candidates = np.concatenate([c for c, _ in parts])
    normalised = np.concatenate([n for _, n in parts], axis=1)
    relevant = np.concatenate(relevance)
    n_relevant = valid_items.getnnz(axis=1)[users]

    def objective(weights: np.ndarray) -> float:
        best = _top_k_rows(_blend_objective(candidates, normalised, weights), k)
        hits = np.take_along_axis(relevant, np.maximum(best, 0), axis=1) & (best >= 0)
        return float(ndcg_at_k(hits, n_relevant).mean())

    weights = np.ones(len(models))
    score = objective(weights)
    for _ in range(rounds):
        changed = False
        for m, value in itertools.product(range(len(models)), grid):
            trial = weights.copy()
            trial[m] = value
            if trial.sum() == 0 or trial[m] == weights[m]:
                continue
            trial_score = objective(trial)
            if trial_score > score:
                weights, score, changed = trial, trial_score, True
        if not changed:
            break

    result = dict(zip(models, (weights / weights.sum()).tolist(), strict=True))
    logger.info("blend weights %s: validation ndcg@%s %.4f", result, k, score)
    return result


def _blend_objective(
    candidates: np.ndarray, normalised: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """Blended candidate scores, -inf in empty slots: (n_readers, c)."""
    blended = np.tensordot(weights.astype(np.float32), normalised, axes=1)
    blended[candidates < 0] = -np.inf
    return blended


def _check_search(
    models: Mapping[str, Model],
    grid: Sequence[float],
    k: int,
    rounds: int,
    max_users: int,
) -> None:
    if not models:
        raise ValueError("models must name at least one fitted model, got none")
    values = np.asarray(grid, dtype=np.float64)
    if not (np.all(np.isfinite(values)) and np.all(values >= 0) and values.any()):
        raise ValueError(
            f"grid must be finite, >= 0, with a positive value; got {list(grid)}"
        )
    for name, value in (("k", k), ("rounds", rounds), ("max_users", max_users)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
