"""One evaluation of every model on one split, as a Markdown table and a chart.

``run_report`` is what ``bookverse-train evaluate`` runs. On the prepared
data set (as the training run prepares it) and one per-reader split (80/20,
``seed``), it fits and scores, over the whole catalogue:

- every model family of ``models.registry`` (and the neural one when
  TensorFlow can be imported), with the training run's parameters;
- the ``implicit`` library's ALS and BPR built with that library's defaults,
  untuned, as references;
- the weighted blend (weights fitted on a validation split of the training
  part), and the XGBoost meta-ranker (``training.ranker.fit_meta_ranker``);
  each one plain and re-ranked by maximal marginal relevance
  (``models.rerank.mmr``).

The re-ranking setting is chosen on the validation split (never the test
part), over every validation reader: a grid of exposure-ledger settings
(``models.rerank.ExposureLedger``: places kept in relevance order x how deep
the other places may reach), each list arranged against the lists before it
as the server does. Of the settings meeting the target (coverage
``COVERAGE_GAIN`` x the plain blend's, keeping ``NDCG_KEPT`` of its nDCG@k)
the one farthest inside both bounds wins (``_margin``), so that the test
split, which it has not seen, is likely to meet them too; failing any, the
best coverage that keeps ``NDCG_KEPT``. Similarity, for intra-list
diversity, is the cosine of the ALS item factors.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp

from bookverse.models.als import ALS
from bookverse.models.base import Model
from bookverse.models.dataset import Dataset
from bookverse.models.registry import MODEL_CLASSES
from bookverse.models.rerank import ExposureLedger, ExposureSettings, mmr
from bookverse.training import pipeline
from bookverse.training.evaluate import (
    _blend_candidates,
    _blend_objective,
    _hits,
    _top_k_rows,
    fit_blend_weights,
)
from bookverse.training.metrics import (
    catalogue_coverage,
    cosine_similarity_fn,
    gini_index,
    intra_list_diversity,
    mean_pairwise_overlap,
    ranking_metrics,
)
from bookverse.training.split import per_user_split
from bookverse.training.tune import make_model

logger = logging.getLogger(__name__)

COVERAGE_GAIN = 2.0
NDCG_KEPT = 0.95
EXPOSURE_HEADS = (3, 5, 7, 8)
EXPOSURE_DEPTHS = (50, 100, 200)
SELECTION_READERS = 2000
POOL = 100
BATCH = 512

MODEL_PARAMS: dict[str, dict[str, Any]] = {
    **{name: {} for name in MODEL_CLASSES},
    **pipeline.DEFAULT_MODELS,
}
"""Every registered family with the training run's parameters."""


@dataclass
class Lists:
    """Top-k lists of the readers scored and their hits."""

    top: np.ndarray  # (n_readers, k) int64, -1 for an empty slot
    hits: np.ndarray  # (n_readers, k) bool
    n_relevant: np.ndarray  # (n_readers,) int64


@dataclass
class Report:
    """What one ``run_report`` measured; ``rows`` is model -> metric -> value."""

    dataset: str
    command: str
    k: int
    sizes: dict[str, int]
    rows: dict[str, dict[str, float]] = field(default_factory=dict)
    kind: dict[str, str] = field(default_factory=dict)
    rerank: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


# -- lists and their metrics ---------------------------------------------------


def _readers(
    train: Dataset, test: Dataset
) -> tuple[sp.csr_matrix, sp.csr_matrix, np.ndarray]:
    train_items, test_items = train.user_items(), test.user_items()
    users = np.flatnonzero(test_items.getnnz(axis=1) > 0).astype(np.int64)
    return train_items, test_items, users


def _batches(users: np.ndarray) -> Iterator[np.ndarray]:
    for start in range(0, len(users), BATCH):
        yield users[start : start + BATCH]


class Scorer(Protocol):
    """What ``model_lists`` needs of a model."""

    def score_users(
        self, user_items: sp.csr_matrix, users: np.ndarray
    ) -> np.ndarray: ...


def model_lists(model: Scorer, train: Dataset, test: Dataset, k: int) -> Lists:
    """Each test reader's k best unseen books by ``model.score_users``."""
    train_items, test_items, users = _readers(train, test)
    tops = []
    for batch in _batches(users):
        scores = np.array(model.score_users(train_items, batch), dtype=np.float32)
        seen = train_items[batch]
        rows = np.repeat(np.arange(len(batch)), np.diff(seen.indptr))
        scores[rows, seen.indices] = -np.inf
        tops.append(_top_k_rows(scores, k))
    return _finish(np.concatenate(tops), test_items, users)


def _finish(top: np.ndarray, test_items: sp.csr_matrix, users: np.ndarray) -> Lists:
    return Lists(top, _hits(top, test_items[users]), test_items.getnnz(axis=1)[users])


def summarise(
    lists: Lists, n_items: int, similarity: Callable[[np.ndarray], np.ndarray]
) -> dict[str, float]:
    """Accuracy at k and the list measures of ``lists``."""
    result = ranking_metrics(lists.hits, lists.n_relevant)
    result["coverage"] = catalogue_coverage(lists.top, n_items)
    result["diversity"] = intra_list_diversity(lists.top, similarity)
    result["gini"] = gini_index(lists.top, n_items)
    result["overlap"] = mean_pairwise_overlap(lists.top)
    return result


@dataclass(frozen=True)
class Rerank:
    """The re-ranking setting applied to each reader's scored candidates."""

    embeddings: np.ndarray  # (n_items, d) item vectors
    diversity: float
    threshold: float | None
    readers: np.ndarray | None = None  # (n_items,) training readers per book
    penalty: float = 0.0
    pool: int | None = None
    head: int = 0
    exposure: ExposureSettings | None = None
    authors: np.ndarray | None = None  # (n_items,) case-folded, for the cap
    max_per_author: int | None = None

    def ledger(self) -> ExposureLedger | None:
        """A fresh ledger for one pass over the readers (None without exposure)."""
        if self.exposure is None:
            return None
        return ExposureLedger(len(self.embeddings), self.exposure)

    def apply(
        self,
        candidates: np.ndarray,
        scores: np.ndarray,
        k: int,
        ledger: ExposureLedger | None = None,
    ) -> np.ndarray:
        """(k,) int64 list (``-1`` padded) re-ranked from one reader's pool;
        with a ``ledger``, arranged against (and recorded in) it."""
        keep = (candidates >= 0) & np.isfinite(scores)
        items, relevance = candidates[keep], scores[keep]
        depth = k if ledger is None else max(k, ledger.settings.depth)
        chosen, _ = mmr(
            items,
            relevance,
            self.embeddings[items],
            n=depth,
            diversity=self.diversity,
            similarity_threshold=self.threshold,
            popularity=None if self.readers is None else self.readers[items],
            popularity_penalty=self.penalty,
            pool=self.pool,
            head=self.head,
            authors=None if self.authors is None else list(self.authors[items]),
            max_per_author=self.max_per_author,
        )
        if ledger is not None:
            chosen = chosen[ledger.arrange(chosen, k)]
        return np.pad(chosen, (0, k - len(chosen)), constant_values=-1)


def _plain(candidates: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """(k,) the k best candidates by score, ties by lower item."""
    keep = (candidates >= 0) & np.isfinite(scores)
    items, values = candidates[keep], scores[keep]
    order = np.lexsort((items, -values))[:k]
    return np.pad(items[order], (0, k - len(order)), constant_values=-1)


@dataclass(frozen=True)
class Pools:
    """Scored candidate pools of many readers (rows padded with -1 / -inf)."""

    users: np.ndarray  # (n,) int64
    candidates: np.ndarray  # (n, c) int64
    scores: np.ndarray  # (n, c) float32

    def lists(
        self, test_items: sp.csr_matrix, k: int, rerank: Rerank | None = None
    ) -> Lists:
        pairs = zip(self.candidates, self.scores, strict=True)
        if rerank is None:
            top = np.stack([_plain(c, s, k) for c, s in pairs])
        else:
            ledger = rerank.ledger()
            top = np.stack([rerank.apply(c, s, k, ledger) for c, s in pairs])
        return _finish(top.astype(np.int64), test_items, self.users)


def blend_pools(
    models: Mapping[str, Model],
    weights: Mapping[str, float],
    train: Dataset,
    users: np.ndarray,
) -> Pools:
    """Blended candidate pools, as ``evaluate.evaluate_blend`` builds them."""
    train_items = train.user_items()
    vector = np.array([weights.get(m, 0.0) for m in models], dtype=np.float32)
    candidates, scores = [], []
    for batch in _batches(users):
        pool, normalised = _blend_candidates(models, train_items, batch, POOL)
        candidates.append(pool)
        scores.append(_blend_objective(pool, normalised, vector))
    width = max(c.shape[1] for c in candidates)
    return Pools(
        users,
        np.concatenate([_pad(c, width, -1) for c in candidates]),
        np.concatenate([_pad(s, width, -np.inf) for s in scores]),
    )


def _pad(array: np.ndarray, width: int, value: float) -> np.ndarray:
    return np.pad(array, ((0, 0), (0, width - array.shape[1])), constant_values=value)


# -- the re-ranking setting, chosen on validation ------------------------------


def _margin(setting: Mapping[str, Any]) -> float:
    """How far inside both bounds a setting is: the smaller of its coverage
    gain beyond ``COVERAGE_GAIN`` and its nDCG beyond ``NDCG_KEPT``, each
    relative to its bound's room."""
    coverage = setting["coverage_ratio"] / COVERAGE_GAIN - 1.0
    ndcg = (setting["ndcg_ratio"] - NDCG_KEPT) / (1.0 - NDCG_KEPT)
    return min(coverage, ndcg)


def choose_rerank(
    pools: Pools,
    valid_items: sp.csr_matrix,
    embeddings: np.ndarray,
    k: int,
    authors: np.ndarray | None = None,
    max_per_author: int | None = None,
) -> dict[str, Any]:
    """Grid search of exposure-ledger settings on validation pools.

    Every setting arranges the readers' lists, in pool order under the
    author cap the server applies (``max_per_author`` books of one of
    ``authors``, (n_items,) case-folded; None caps nothing), against a fresh
    ledger; the lists of the plain relevance order are the base.

    Returns
    -------
    dict
        ``diversity``, ``penalty``, ``pool``, ``head`` (the MMR step: none),
        ``threshold`` and ``exposure`` (an ``ExposureSettings``) of the chosen
        setting (see the module notes); ``met`` (the target reached on
        validation); the plain ``base`` (ndcg, coverage); the ``grid`` tried.
    """
    n_items = len(embeddings)
    metric = f"ndcg@{k}"
    base_lists = pools.lists(valid_items, k)
    base = ranking_metrics(base_lists.hits, base_lists.n_relevant)[metric]
    base_cov = catalogue_coverage(base_lists.top, n_items)
    grid = []
    for head, depth in itertools.product(EXPOSURE_HEADS, EXPOSURE_DEPTHS):
        exposure = ExposureSettings(head=head, depth=depth)
        setting = Rerank(
            embeddings,
            0.0,
            None,
            exposure=exposure,
            authors=authors,
            max_per_author=max_per_author,
        )
        lists = pools.lists(valid_items, k, setting)
        ndcg = ranking_metrics(lists.hits, lists.n_relevant)[metric]
        coverage = catalogue_coverage(lists.top, n_items)
        grid.append(
            {
                "exposure": exposure,
                "ndcg_ratio": ndcg / base,
                "coverage_ratio": coverage / base_cov,
            }
        )
        logger.info("re-ranking validation %s", grid[-1])

    kept = [g for g in grid if g["ndcg_ratio"] >= NDCG_KEPT]
    met = [g for g in kept if g["coverage_ratio"] >= COVERAGE_GAIN]
    if met:
        best = max(met, key=_margin)
    elif kept:
        best = max(kept, key=lambda g: (g["coverage_ratio"], g["ndcg_ratio"]))
    else:
        best = max(grid, key=lambda g: g["ndcg_ratio"])
    return {
        "diversity": 0.0,
        "penalty": 0.0,
        "pool": None,
        "head": 0,
        "threshold": None,
        "exposure": best["exposure"],
        "max_per_author": max_per_author,
        "met": bool(met),
        "base": {"ndcg": base, "coverage": base_cov},
        "grid": grid,
    }


# -- the run --------------------------------------------------------------------


def run_report(
    dataset: str,
    data_dir: Path,
    command: str,
    k: int = 10,
    seed: int = 42,
    echo: Callable[[str], None] = print,
) -> Report:
    """Fit and evaluate every model, both hybrids and the references on one split.

    Raises
    ------
    ValueError
        If ``dataset`` is not a known data set.
    """
    timer = pipeline.StepTimer(echo=echo)
    options = pipeline.TrainOptions(dataset=dataset, data_dir=data_dir, seed=seed, k=k)
    data = pipeline.load_prepared(options, timer)
    train, test = per_user_split(data, options.test_fraction, seed=seed)
    fit_part, valid = per_user_split(train, options.test_fraction, seed=seed + 1)
    report = Report(
        dataset,
        command,
        k,
        {
            "interactions": data.n_interactions,
            "readers": data.n_users,
            "books": data.n_items,
            "test_readers": int((test.user_items().getnnz(axis=1) > 0).sum()),
        },
    )

    # single models, beside the untuned implicit references
    specs = dict(MODEL_PARAMS)
    if _tensorflow_available():
        specs["neural"] = {}
    else:
        report.notes.append("neural left out: tensorflow cannot be imported")
    fitted: dict[str, Model] = {}
    for name, params in specs.items():
        with timer.step(f"fit {name}"):
            fitted[name] = make_model(name, params).fit(train)
    als = fitted["als"]
    assert isinstance(als, ALS)
    embeddings = als.item_factors
    similarity = cosine_similarity_fn(embeddings)
    scorers: dict[str, Scorer] = {**fitted, **_references(train, timer)}
    for name, model in scorers.items():
        with timer.step(f"evaluate {name}"):
            lists = model_lists(model, train, test, k)
            report.rows[name] = summarise(lists, data.n_items, similarity)
        report.kind[name] = "reference" if name.startswith("implicit") else "model"

    _hybrids(report, fitted, train, test, fit_part, valid, embeddings, timer, seed)
    report.seconds = dict(timer.durations)
    return report


def _hybrids(
    report: Report,
    fitted: Mapping[str, Model],
    train: Dataset,
    test: Dataset,
    fit_part: Dataset,
    valid: Dataset,
    embeddings: np.ndarray,
    timer: pipeline.StepTimer,
    seed: int,
) -> None:
    """Blend and meta-ranker rows, plain and re-ranked."""
    k, n_items = report.k, train.n_items
    similarity = cosine_similarity_fn(embeddings)
    components = pipeline.DEFAULT_MODELS
    test_items = test.user_items()
    _, _, test_users = _readers(train, test)

    # the served author cap (training's setting for the data set) is applied
    # when choosing and when measuring, so the figures are of what serves
    cap = pipeline.RERANK_BY_DATASET.get(report.dataset, {}).get("max_per_author")
    authors = np.array([a.strip().casefold() for a in train.catalogue.authors])
    with timer.step("blend weights and re-ranking setting (validation split)"):
        valid_models = {
            n: make_model(n, p).fit(fit_part) for n, p in components.items()
        }
        weights = fit_blend_weights(valid_models, fit_part, valid, k=k, seed=seed)
        valid_als = valid_models["als"]
        assert isinstance(valid_als, ALS)
        _, valid_items, valid_users = _readers(fit_part, valid)
        pools = blend_pools(valid_models, weights, fit_part, valid_users)
        choice = choose_rerank(
            pools, valid_items, valid_als.item_factors, k, authors, cap
        )
    report.rerank = {"weights": weights, **choice}
    setting = Rerank(
        embeddings,
        choice["diversity"],
        choice["threshold"],
        _reader_counts(train),
        choice["penalty"],
        choice["pool"],
        choice["head"],
        choice["exposure"],
        authors,
        cap,
    )

    with timer.step("evaluate weighted blend, plain and re-ranked"):
        models = {n: fitted[n] for n in components}
        pools = blend_pools(models, weights, train, test_users)
        for name, rerank in (
            ("weighted_blend", None),
            ("weighted_blend+rerank", setting),
        ):
            lists = pools.lists(test_items, k, rerank)
            report.rows[name] = summarise(lists, n_items, similarity)
            report.kind[name] = "hybrid"

    ranker = _meta_ranker_api()
    if ranker is None:
        report.notes.append(
            "meta-ranker left out: training.ranker.fit_meta_ranker is not available"
        )
        return
    fit_meta_ranker, collect_rows = ranker
    with timer.step("fit and evaluate meta-ranker, plain and re-ranked"):
        meta = fit_meta_ranker(
            components, train, k=k, seed=seed, max_readers=SELECTION_READERS
        )
        rows = collect_rows(
            models,
            meta.features,
            meta.base_models,
            meta.tables_,
            train,
            test,
            test_users,
            meta.pool,
        )
        pools = _ranker_pools(rows, meta.score(rows.features))
        for name, rerank in (("meta_ranker", None), ("meta_ranker+rerank", setting)):
            lists = pools.lists(test_items, k, rerank)
            report.rows[name] = summarise(lists, n_items, similarity)
            report.kind[name] = "hybrid"


def _reader_counts(data: Dataset) -> np.ndarray:
    """(n_items,) float64 readers of each book in ``data``."""
    return data.user_items().getnnz(axis=0).astype(np.float64)


def _ranker_pools(rows: Any, scores: np.ndarray) -> Pools:
    """Pools from the ranker's rows (grouped by reader) and its scores."""
    width = int(rows.group.max()) if len(rows.group) else 0
    candidates = np.full((len(rows.group), width), -1, dtype=np.int64)
    values = np.full((len(rows.group), width), -np.inf, dtype=np.float32)
    starts = np.concatenate(([0], np.cumsum(rows.group)[:-1]))
    for reader, (start, size) in enumerate(zip(starts, rows.group, strict=True)):
        candidates[reader, :size] = rows.items[start : start + size]
        values[reader, :size] = scores[start : start + size]
    return Pools(np.asarray(rows.users, dtype=np.int64), candidates, values)


def _meta_ranker_api() -> tuple[Callable[..., Any], Callable[..., Any]] | None:
    """``fit_meta_ranker`` and ``collect_rows`` of ``training.ranker``, if there.

    This is the hook for the XGBoost meta-ranker: without that module the
    report lists the blend only.
    """
    try:
        from bookverse.training.ranker import collect_rows, fit_meta_ranker
    except ImportError:
        return None
    return fit_meta_ranker, collect_rows


def _tensorflow_available() -> bool:
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


class _ImplicitModel:
    """An ``implicit`` CPU model behind ``score_users`` (reference rows only)."""

    def __init__(self, name: str, model: Any) -> None:
        self.name = name
        self.model = model

    def fit(self, dataset: Dataset) -> _ImplicitModel:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            self.model.fit(dataset.user_items(), show_progress=False)
        return self

    def score_users(self, user_items: sp.csr_matrix, users: np.ndarray) -> np.ndarray:
        user_factors = np.asarray(self.model.user_factors, dtype=np.float32)
        item_factors = np.asarray(self.model.item_factors, dtype=np.float32)
        return user_factors[users] @ item_factors.T


def _references(train: Dataset, timer: pipeline.StepTimer) -> dict[str, Scorer]:
    """``implicit``'s ALS and BPR with that library's default parameters."""
    from implicit.cpu.als import AlternatingLeastSquares
    from implicit.cpu.bpr import BayesianPersonalizedRanking

    references: dict[str, Scorer] = {}
    for name, model in (
        ("implicit_als_defaults", AlternatingLeastSquares(random_state=0)),
        ("implicit_bpr_defaults", BayesianPersonalizedRanking(random_state=0)),
    ):
        with timer.step(f"fit {name}"):
            references[name] = _ImplicitModel(name, model).fit(train)
    return references


# -- writing --------------------------------------------------------------------

COLUMNS = (
    "precision",
    "recall",
    "ndcg",
    "map",
    "coverage",
    "diversity",
    "gini",
    "overlap",
)


def _column_keys(k: int) -> list[str]:
    at_k = {"precision", "recall", "ndcg", "map"}
    return [f"{c}@{k}" if c in at_k else c for c in COLUMNS]


def markdown(report: Report) -> str:
    """The report as a Markdown page, the command that made it on top."""
    keys = _column_keys(report.k)
    sizes = report.sizes
    lines = [
        f"# Evaluation: {report.dataset}",
        "",
        "Made by:",
        "",
        "```",
        report.command,
        "```",
        "",
        f"{sizes['interactions']} interactions, {sizes['readers']} readers, "
        f"{sizes['books']} books after preparation; one per-reader 80/20 split, "
        f"{sizes['test_readers']} test readers; top {report.k} over the whole "
        "catalogue, books read in training left out. Coverage, gini and overlap "
        "are over every test reader's list; diversity is the mean pairwise "
        "(1 - cosine) of ALS item factors within a list.",
        "",
        "| model | kind | " + " | ".join(keys) + " |",
        "|---|---|" + "---:|" * len(keys),
    ]
    for name, row in report.rows.items():
        cells = " | ".join(_cell(row.get(key)) for key in keys)
        lines.append(f"| {name} | {report.kind.get(name, '')} | {cells} |")
    lines += ["", *_rerank_lines(report)]
    if report.notes:
        lines += ["", "Notes:", "", *[f"- {note}" for note in report.notes]]
    total = sum(report.seconds.values())
    lines += ["", f"Wall time of the run: {total:.0f} s.", ""]
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.4f}"


def rerank_ratios(report: Report, base: str = "weighted_blend") -> tuple[float, float]:
    """(coverage ratio, nDCG@k ratio) of ``base+rerank`` over ``base`` on test."""
    plain, reranked = report.rows[base], report.rows[f"{base}+rerank"]
    metric = f"ndcg@{report.k}"
    return (
        reranked["coverage"] / plain["coverage"],
        reranked[metric] / plain[metric],
    )


def _rerank_lines(report: Report) -> list[str]:
    choice = report.rerank
    if not choice:
        return []
    weights = ", ".join(f"{m} {w:.3f}" for m, w in choice["weights"].items())
    plain = report.rows["weighted_blend"]["coverage"]
    lines = [
        "## Re-ranking",
        "",
        f"Blend weights (validation): {weights}. Re-ranking chosen on the "
        "validation split: of the exposure-ledger settings reaching "
        f"{COVERAGE_GAIN:g}x coverage with nDCG@{report.k} >= {NDCG_KEPT:.0%} of "
        "the plain blend's, the one farthest inside both bounds (the smaller of "
        "its coverage gain beyond the target and its nDCG beyond the bound, each "
        "relative to the room the bound leaves); failing any, the best "
        f"coverage keeping {NDCG_KEPT:.0%}. Chosen: {_exposure_words(choice)} "
        f"(target {'met' if choice['met'] else 'NOT met'} on validation).",
        "",
        "The manifest's re-ranking section for it:",
        "",
        "```",
        json.dumps(manifest_rerank(choice)),
        "```",
        "",
    ]
    if plain * COVERAGE_GAIN > 1.0:
        lines += [
            f"The plain blend's test coverage is already {plain:.3f} of the "
            f"catalogue, so {COVERAGE_GAIN:g}x coverage ({plain * COVERAGE_GAIN:.2f})"
            " is arithmetically out of reach here; the ratios are measured anyway.",
            "",
        ]
    lines += [
        "| hybrid | coverage ratio | nDCG ratio |",
        "|---|---:|---:|",
    ]
    for base in ("weighted_blend", "meta_ranker"):
        if f"{base}+rerank" in report.rows:
            coverage, ndcg = rerank_ratios(report, base)
            lines.append(f"| {base} (test) | {coverage:.2f}x | {ndcg:.3f} |")
    lines += [
        "",
        "Validation grid (ratios over the plain blend), best coverage first:",
        "",
        "| head | depth | limit | coverage ratio | nDCG ratio |",
        "|---:|---:|---:|---:|---:|",
    ]
    for g in sorted(choice["grid"], key=lambda g: -g["coverage_ratio"]):
        exposure = g["exposure"]
        lines.append(
            f"| {exposure.head} | {exposure.depth} | {exposure.limit} | "
            f"{g['coverage_ratio']:.2f} | {g['ndcg_ratio']:.3f} |"
        )
    return lines


def _exposure_words(choice: Mapping[str, Any]) -> str:
    exposure, cap = choice["exposure"], choice.get("max_per_author")
    capped = "no author cap" if cap is None else f"at most {cap} books per author"
    return (
        f"the first {exposure.head} places by relevance, the others to the best "
        f"of the reader's {exposure.depth} shown fewer than {exposure.limit} "
        f"time(s) in the last {exposure.window} lists, {capped} (as served)"
    )


def manifest_rerank(choice: Mapping[str, Any]) -> dict[str, Any]:
    """The chosen setting as the bundle manifest's ``rerank`` section."""
    exposure = choice["exposure"]
    return {
        "diversity": choice["diversity"],
        "similarity_threshold": choice["threshold"],
        "max_per_author": choice.get("max_per_author"),
        "popularity_penalty": choice["penalty"],
        "pool": choice["pool"],
        "head": choice["head"],
        "exposure": None if exposure is None else dataclasses.asdict(exposure),
    }


def chart(report: Report, path: Path) -> None:
    """Bars of nDCG@k, coverage and gini per row, written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report.rows)
    colours = {"model": "#4C72B0", "reference": "#999999", "hybrid": "#DD8452"}
    panels = (f"ndcg@{report.k}", "coverage", "diversity", "gini")
    figure, axes = plt.subplots(
        1, len(panels), figsize=(16, 0.42 * len(names) + 1.8), sharey=True
    )
    positions = np.arange(len(names))[::-1]
    for axis, metric in zip(axes, panels, strict=True):
        values = [report.rows[n].get(metric, float("nan")) for n in names]
        axis.barh(positions, values, color=[colours[report.kind[n]] for n in names])
        axis.set_title(metric)
        axis.grid(axis="x", alpha=0.3)
        for y, value in zip(positions, values, strict=True):
            if not math.isnan(value):
                axis.text(value, y, f" {value:.3f}", va="center", fontsize=8)
        axis.set_xlim(0, np.nanmax(values) * 1.25 if values else 1)
    axes[0].set_yticks(positions, names)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()]
    figure.legend(handles, list(colours), loc="lower right", ncol=3, frameon=False)
    figure.suptitle(
        f"{report.dataset}: top {report.k}, one per-reader 80/20 split "
        f"({report.sizes['test_readers']} test readers)"
    )
    figure.tight_layout(rect=(0, 0.04, 1, 0.95))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write(report: Report, out: Path) -> tuple[Path, Path]:
    """Write ``<dataset>.md`` and ``<dataset>.png`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    page, picture = out / f"{report.dataset}.md", out / f"{report.dataset}.png"
    page.write_text(markdown(report), encoding="utf-8")
    chart(report, picture)
    return page, picture


def summary_lines(report: Report) -> Sequence[str]:
    """The re-ranking ratios for a terminal."""
    lines = []
    for base in ("weighted_blend", "meta_ranker"):
        if f"{base}+rerank" in report.rows:
            coverage, ndcg = rerank_ratios(report, base)
            lines.append(
                f"{base}+rerank vs {base}: coverage x{coverage:.2f}, "
                f"ndcg@{report.k} x{ndcg:.3f}"
            )
    return lines
