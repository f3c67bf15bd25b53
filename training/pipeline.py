"""The default training run: load, prepare, evaluate, refit, publish.

``train(options)`` is what ``bookverse-train train`` runs. Each step is timed
and its duration printed, so a slow step shows itself:

1. load the data set (``bookverse.training.loaders``) and report bad rows;
2. prepare it (Book-Crossing editions grouped into works, duplicate pairs
   dropped, k-core filter, DATA.md protocol), then add the interactions the
   server tracked when an events database is given;
3. split per reader (80/20, seed 42), fit every model on the training part
   and evaluate it over the whole catalogue; fit the blend's weights on a
   validation split carved out of the training part, never on the test part;
   train the XGBoost meta-ranker the same way (its own validation split of
   the training part) and evaluate it on the test part;
4. refit every model on all prepared data, train the served meta-ranker on
   it, and publish the bundle with the evaluation table, the blend weights
   and the re-ranking settings in its manifest.

Steps 1, 2 and 4 are what the served hybrid needs; step 3 (``--no-eval``
skips it) only measures.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from bookverse.models.base import Model
from bookverse.models.dataset import Dataset
from bookverse.models.ranker import MetaRanker
from bookverse.models.registry import MODEL_CLASSES
from bookverse.training import events, loaders, prepare, works
from bookverse.training.evaluate import (
    evaluate_blend,
    evaluate_model,
    fit_blend_weights,
)
from bookverse.training.publish import publish, write_bundle
from bookverse.training.ranker import evaluate_meta_ranker, fit_meta_ranker
from bookverse.training.split import per_user_split

logger = logging.getLogger(__name__)

DEFAULT_MODELS: dict[str, dict[str, Any]] = {
    "popularity": {},
    "als": {"factors": 64, "alpha": 10.0, "iterations": 15},
    "item_knn": {"k": 100},
    "content": {},
    "user_knn": {"k": 50},
    # a dense item-item matrix: capped to the most-read books (144 MB at 6000)
    "ease": {"regularization": 400.0, "max_items": 6000},
    "quality": {},
}

# base models whose scores the meta-ranker learns from
RANKER_BASES = ("popularity", "als", "item_knn", "user_knn", "ease", "content")

# re-ranking the server applies after the hybrid (manifest "rerank"), by data
# set: the exposure-ledger setting `bookverse-train evaluate` chose on each
# one's validation split (docs/results/<dataset>.md). No author cap: on
# Book-Crossing a cap of 2 books per author cost 6% of the blend's test
# nDCG@10 on its own (3: 2%, 4: 1%), since series readers read on in series
# (docs/ARCHITECTURE.md); `max_per_author` in a manifest still sets one
RERANK_BY_DATASET: dict[str, dict[str, Any]] = {
    "bookcrossing": {
        "diversity": 0.0,
        "similarity_threshold": None,
        "max_per_author": None,
        "embedding": "als",
        "exposure": {"head": 5, "depth": 200, "limit": 1, "window": 20000},
    },
    "movielens100k": {
        "diversity": 0.0,
        "similarity_threshold": None,
        "max_per_author": None,
        "embedding": "als",
        "exposure": {"head": 8, "depth": 200, "limit": 1, "window": 20000},
    },
}
DEFAULT_RERANK = RERANK_BY_DATASET["bookcrossing"]


@dataclass(frozen=True)
class TrainOptions:
    """What one training run does; every field has the default run's value."""

    dataset: str = "bookcrossing"
    data_dir: Path = Path("data")
    artifacts: Path = Path("artifacts")
    models: Mapping[str, Mapping[str, Any]] = field(
        default_factory=lambda: DEFAULT_MODELS
    )
    min_interactions: int = 5
    test_fraction: float = 0.2
    seed: int = 42
    k: int = 10
    evaluate: bool = True
    max_users: int | None = None
    events_db: Path | None = None
    ranker: bool = True
    ranker_bases: tuple[str, ...] = RANKER_BASES
    ranker_pool: int = 50
    ranker_readers: int = 3000
    ranker_objectives: tuple[str, ...] = ("rank:pairwise",)
    rerank: Mapping[str, Any] | None = None

    def rerank_settings(self) -> Mapping[str, Any]:
        """``rerank`` if given, else the data set's chosen setting."""
        if self.rerank is not None:
            return self.rerank
        return RERANK_BY_DATASET.get(self.dataset, DEFAULT_RERANK)

    def ranker_specs(self) -> dict[str, Mapping[str, Any]]:
        """The base models of the meta-ranker: ``ranker_bases`` that are fitted."""
        return {n: p for n, p in self.models.items() if n in self.ranker_bases}


@dataclass
class StepTimer:
    """Prints and keeps the duration of each named step."""

    durations: dict[str, float] = field(default_factory=dict)
    echo: Callable[[str], None] = print

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.echo(f"-- {name} ...")
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        self.durations[name] = round(seconds, 2)
        self.echo(f"   {name}: {seconds:.1f} s")


LOADERS: dict[str, Callable[[Path], tuple[Dataset, Any]]] = {
    "bookcrossing": lambda d: loaders.load_bookcrossing(d / "bookcrossing"),
    "movielens100k": lambda d: loaders.load_movielens100k(d / "ml-100k"),
    "goodbooks": lambda d: loaders.load_goodbooks(d / "goodbooks-10k"),
}


def load_prepared(options: TrainOptions, timer: StepTimer) -> Dataset:
    """Load the named data set and prepare it as the reference protocol says."""
    if options.dataset not in LOADERS:
        raise ValueError(
            f"dataset must be one of {sorted(LOADERS)}, got {options.dataset!r}"
        )
    with timer.step("load"):
        raw, report = LOADERS[options.dataset](options.data_dir)
        timer.echo(report.summary())
    with timer.step("prepare"):
        data = raw
        if options.dataset == "bookcrossing":
            # editions of one book become one work; the edition -> work ids
            # travel in extras[works.WORK_ALIASES_KEY] for the bundle
            data, work_map = works.group_works(raw)
            timer.echo(
                f"   {work_map.n_grouped_editions} editions grouped into "
                f"{work_map.n_grouped_works} works"
            )
        data = prepare.drop_duplicate_pairs(data)
        if options.max_users is not None:
            data = prepare.first_users(data, options.max_users)
        data = prepare.kcore(data, options.min_interactions, options.min_interactions)
        if options.events_db is not None:
            # after the filters: a view and a purchase of one book stay two
            # rows (their kinds weigh differently), and new readers stay
            data = events.merge_events(data, options.events_db)
        timer.echo(
            f"   {data.n_interactions} interactions, {data.n_users} readers, "
            f"{data.n_items} books after the {options.min_interactions}-core filter"
        )
    return data


def fit_models(
    data: Dataset, specs: Mapping[str, Mapping[str, Any]], timer: StepTimer, tag: str
) -> dict[str, Model]:
    """Fit one model per entry of ``specs`` (name -> constructor parameters)."""
    fitted: dict[str, Model] = {}
    for name, params in specs.items():
        with timer.step(f"fit {name} ({tag})"):
            fitted[name] = MODEL_CLASSES[name](**params).fit(data)
    return fitted


def evaluation_table(
    data: Dataset, options: TrainOptions, timer: StepTimer
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Evaluate every model and the blend on a held-out split; returns the
    table (row name -> metric -> value) and the blend weights chosen on a
    validation split of the training part."""
    train, test = per_user_split(data, options.test_fraction, seed=options.seed)
    fit_part, valid = per_user_split(
        train, options.test_fraction, seed=options.seed + 1
    )

    with timer.step("blend weights (validation split)"):
        valid_models = fit_models(fit_part, options.models, timer, "validation")
        weights = fit_blend_weights(valid_models, fit_part, valid, k=options.k)
        timer.echo(f"   weights {weights}")

    test_models = fit_models(train, options.models, timer, "evaluation")
    table: dict[str, dict[str, float]] = {}
    for name, model in test_models.items():
        with timer.step(f"evaluate {name}"):
            table[name] = evaluate_model(model, train, test, k=options.k)
    with timer.step("evaluate weighted blend"):
        table["weighted_blend"] = evaluate_blend(
            test_models, weights, train, test, k=options.k
        )
    if options.ranker:
        ranker = fit_ranker(train, options, timer, "evaluation")
        with timer.step("evaluate meta-ranker"):
            table["meta_ranker"] = evaluate_meta_ranker(
                ranker, test_models, train, test, k=options.k
            )
    return table, weights


def fit_ranker(
    data: Dataset, options: TrainOptions, timer: StepTimer, tag: str
) -> MetaRanker:
    """Train the meta-ranker on validation splits of ``data`` (never a test
    part); serve or evaluate it with base models refitted on all of ``data``."""
    with timer.step(f"fit meta-ranker ({tag})"):
        return fit_meta_ranker(
            options.ranker_specs(),
            data,
            k=options.k,
            seed=options.seed,
            pool=options.ranker_pool,
            objectives=options.ranker_objectives,
            max_readers=options.ranker_readers,
        )


def format_table(table: Mapping[str, Mapping[str, float]], k: int) -> str:
    """The evaluation table as Markdown."""
    columns = [f"precision@{k}", f"recall@{k}", f"ndcg@{k}", f"map@{k}"]
    lines = [
        "| model | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for name, row in table.items():
        cells = " | ".join(f"{row.get(c, float('nan')):.4f}" for c in columns)
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines)


def train(options: TrainOptions, timer: StepTimer | None = None) -> str:
    """Run the whole default training; returns the published version."""
    timer = timer or StepTimer()
    data = load_prepared(options, timer)
    fingerprint = prepare.dataset_fingerprint(data)

    table: dict[str, dict[str, float]] = {}
    weights = {name: 1.0 for name in options.models}
    if options.evaluate:
        table, weights = evaluation_table(data, options, timer)
        timer.echo(format_table(table, options.k))

    served = fit_models(data, options.models, timer, "all data")
    ranker = None
    if options.ranker and _ranker_earns_its_place(table, options.k, timer):
        ranker = fit_ranker(data, options, timer, "all data")
    with timer.step("publish"):
        build = partial(
            _build,
            dataset=data,
            models=served,
            weights=weights,
            fingerprint=fingerprint,
            metrics={"k": options.k, "table": table, "step_seconds": timer.durations},
            ranker=ranker,
            rerank=options.rerank_settings(),
        )
        version = publish(options.artifacts, build)
    served_steps = sum(
        seconds
        for name, seconds in timer.durations.items()
        if name in ("load", "prepare", "publish") or name.endswith("(all data)")
    )
    timer.echo(
        f"published {version} to {options.artifacts}; the served hybrid's steps "
        f"took {served_steps:.0f} s, all steps {sum(timer.durations.values()):.0f} s"
    )
    return version


def _ranker_earns_its_place(
    table: Mapping[str, Mapping[str, float]], k: int, timer: StepTimer
) -> bool:
    """Serve the meta-ranker only where the evaluation (when it ran) shows it
    ranking better than the weighted blend it replaces."""
    metric = f"ndcg@{k}"
    if "meta_ranker" not in table or "weighted_blend" not in table:
        return True
    ranker, blend = table["meta_ranker"][metric], table["weighted_blend"][metric]
    if ranker > blend:
        return True
    timer.echo(
        f"   the meta-ranker ({metric} {ranker:.4f}) does not beat the weighted "
        f"blend ({blend:.4f}) here: serving the blend"
    )
    return False


def _build(
    folder: Path,
    version: str,
    *,
    dataset: Dataset,
    models: Mapping[str, Model],
    weights: Mapping[str, float],
    fingerprint: str,
    metrics: Mapping[str, Any],
    ranker: MetaRanker | None,
    rerank: Mapping[str, Any],
) -> None:
    write_bundle(
        folder,
        dataset,
        models,
        version=version,
        blend_weights=weights,
        fingerprint=fingerprint,
        metrics=metrics,
        ranker=ranker,
        rerank=rerank,
    )
