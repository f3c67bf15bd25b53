"""Our rows beside the public MovieLens-100k table, under its protocol.

The Microsoft Recommenders project publishes MAP, nDCG@10, precision@10 and
recall@10 on MovieLens-100k with every rating an interaction, a per-reader
stratified random 75/25 split and top-10 lists ranked over every book the
reader has not rated in training (``shared/DATA.md``). ``run_public_table``
computes our rows on the same protocol over several split seeds and prints
mean +- standard deviation (and the range) beside the published rows.

Per seed nothing is tuned or trained on the test part:

1. split 75/25 per reader (the seed); carve a validation split (80/20 per
   reader) out of the training part;
2. pick each base model's hyperparameters from a small grid by validation
   nDCG@10 (models fitted on the fit part), then the blend weights;
3. train the meta-ranker (``bookverse.training.ranker``) on validation pools
   of those models, with ``folds - 1`` more validation splits for more rows;
4. refit every model on the whole training part and score the test part.

``main(argv)`` is the command-line entry (``bookverse-train public-table``).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bookverse.models.base import Model
from bookverse.models.dataset import Dataset
from bookverse.training.evaluate import (
    evaluate_blend,
    evaluate_model,
    fit_blend_weights,
)
from bookverse.training.loaders import load_movielens100k
from bookverse.training.ranker import (
    Fold,
    evaluate_meta_ranker,
    fit_base_models,
    train_ranker,
)
from bookverse.training.split import per_user_split

logger = logging.getLogger(__name__)

K = 10
TEST_FRACTION = 0.25
VALIDATION_FRACTION = 0.2
METRICS = ("map@10", "ndcg@10", "precision@10", "recall@10")
PUBLISHED: dict[str, tuple[float, float, float, float]] = {
    "BiVAE": (0.146, 0.475, 0.412, 0.219),
    "BPR": (0.132, 0.442, 0.388, 0.213),
    "LightGCN": (0.089, 0.420, 0.380, 0.144),
    "NCF": (0.108, 0.396, 0.347, 0.181),
    "SAR": (0.111, 0.382, 0.331, 0.176),
    "SVD": (0.013, 0.096, 0.091, 0.033),
}
"""Published rows: MAP, nDCG@10, precision@10, recall@10."""

THREADS = 2
GRIDS: dict[str, list[dict[str, Any]]] = {
    "popularity": [{}],
    "ease": [{"regularization": r} for r in (200.0, 400.0, 800.0)],
    "als": [
        {"factors": f, "alpha": a, "iterations": 15, "num_threads": THREADS}
        for f, a in ((32, 10.0), (64, 10.0), (64, 20.0))
    ],
    "bpr": [
        {"factors": f, "learning_rate": lr, "iterations": 100, "num_threads": THREADS}
        for f, lr in ((64, 0.01), (64, 0.05), (128, 0.05))
    ],
    "item_knn": [{"k": k, "num_threads": THREADS} for k in (50, 100, 200)],
    "user_knn": [{"k": k} for k in (30, 50, 100)],
}
"""Base models and the hyperparameters tried on the validation split."""
NEURAL_PARAMS: dict[str, Any] = {"embedding_dim": 32, "layers": [64, 32], "epochs": 8}
DEFAULT_OUTPUT = Path("docs/results/movielens100k_public_table.md")


@dataclass(frozen=True)
class PublicTableOptions:
    """What one public-table run does."""

    data_dir: Path = Path("data")
    seeds: Sequence[int] = (1, 2, 3, 4, 5)
    output: Path | None = DEFAULT_OUTPUT
    neural: bool = True
    pool: int = 50
    folds: int = 3
    command: str = "bookverse-train public-table"
    grids: Mapping[str, list[dict[str, Any]]] = field(default_factory=lambda: GRIDS)


def tune_base_models(
    grids: Mapping[str, list[dict[str, Any]]], fit_part: Dataset, validation: Dataset
) -> tuple[dict[str, dict[str, Any]], dict[str, Model]]:
    """Best parameters per model family by validation nDCG@10.

    Returns
    -------
    specs : dict of str to dict
        Family -> chosen parameters.
    models : dict of str to Model
        The chosen models, fitted on ``fit_part``.
    """
    specs: dict[str, dict[str, Any]] = {}
    models: dict[str, Model] = {}
    for name, grid in grids.items():
        best = -np.inf
        for params in grid:
            model = fit_base_models({name: params}, fit_part)[name]
            score = evaluate_model(model, fit_part, validation, k=K)[f"ndcg@{K}"]
            logger.debug("%s %s: validation ndcg@%s %.4f", name, params, K, score)
            if score > best:
                best, specs[name], models[name] = score, dict(params), model
        logger.info(
            "%s: chose %s (validation ndcg@%s %.4f)", name, specs[name], K, best
        )
    return specs, models


def run_seed(
    data: Dataset, seed: int, options: PublicTableOptions
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Every row's test metrics for one split seed, and step timings (s)."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    train, test = per_user_split(data, TEST_FRACTION, seed)
    fit_part, validation = per_user_split(train, VALIDATION_FRACTION, seed + 1000)

    # hyperparameters, blend weights and the ranker: validation only
    specs, valid_models = tune_base_models(options.grids, fit_part, validation)
    weights = fit_blend_weights(valid_models, fit_part, validation, k=K)
    timings["tune"] = time.perf_counter() - started
    folds = [Fold(valid_models, fit_part, validation)]
    for number in range(1, options.folds):
        extra_fit, extra_valid = per_user_split(
            train, VALIDATION_FRACTION, seed + 1000 + number
        )
        folds.append(Fold(fit_base_models(specs, extra_fit), extra_fit, extra_valid))
    ranker = train_ranker(folds, train, k=K, pool=options.pool, seed=seed)
    timings["ranker"] = time.perf_counter() - started - timings["tune"]

    # refit on the whole training part, score the test part
    mark = time.perf_counter()
    models = fit_base_models(specs, train)
    rows = {
        name: evaluate_model(model, train, test, k=K) for name, model in models.items()
    }
    if options.neural and _has_tensorflow():
        from bookverse.models.neural import NeuralCF

        neural = NeuralCF(**NEURAL_PARAMS).fit(train)
        rows["neural"] = evaluate_model(neural, train, test, k=K)
    rows["weighted_blend"] = evaluate_blend(models, weights, train, test, k=K)
    rows["meta_ranker"] = evaluate_meta_ranker(ranker, models, train, test, k=K)
    timings["test"] = time.perf_counter() - mark
    timings["total"] = time.perf_counter() - started
    logger.info(
        "seed %s: ease %.4f, blend %.4f, meta-ranker %.4f (%.0fs)",
        seed,
        rows["ease"][f"ndcg@{K}"],
        rows["weighted_blend"][f"ndcg@{K}"],
        rows["meta_ranker"][f"ndcg@{K}"],
        timings["total"],
    )
    return rows, timings


def _has_tensorflow() -> bool:
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


def format_markdown(
    per_seed: Mapping[int, Mapping[str, Mapping[str, float]]],
    timings: Mapping[int, Mapping[str, float]],
    options: PublicTableOptions,
) -> str:
    """The comparison as Markdown: our rows (mean +- std, range) beside the
    published ones, the pool recall of the meta-ranker, timings and the
    command that made it."""
    seeds = sorted(per_seed)
    names = list(next(iter(per_seed.values())))
    header = "| row | MAP | nDCG@10 | Precision@10 | Recall@10 | nDCG@10 range |"
    lines = [
        "# MovieLens-100k beside the public table",
        "",
        f"Per-reader stratified random 75/25 split, seeds {seeds}; every rating "
        "an interaction; top-10 over every item not rated in training. Our rows "
        "are mean ± standard deviation over the seeds (range of nDCG@10 "
        "beside); hyperparameters, blend weights and the meta-ranker were "
        "chosen on a validation split of each training part only.",
        "",
        header,
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        values = {m: np.array([per_seed[s][name][m] for s in seeds]) for m in METRICS}
        cells = " | ".join(_mean_std(values[m]) for m in METRICS)
        ndcg = values["ndcg@10"]
        lines.append(f"| {name} | {cells} | {ndcg.min():.3f}–{ndcg.max():.3f} |")
    for name, published in PUBLISHED.items():
        cells = " | ".join(f"{v:.3f}" for v in published)
        lines.append(f"| {name} (published) | {cells} | |")
    pool = np.array([per_seed[s]["meta_ranker"]["pool_recall"] for s in seeds])
    size = np.array([per_seed[s]["meta_ranker"]["pool_size"] for s in seeds])
    total = sum(t["total"] for t in timings.values())
    lines += [
        "",
        f"The meta-ranker re-orders a pool of {size.mean():.0f} candidates per "
        f"reader (the union of each base model's top {options.pool}); the pool "
        f"holds {pool.mean():.3f} of the readers' test items on average, which "
        "bounds its recall.",
        "",
        "Seconds per seed (tuning, ranker training, test): "
        + "; ".join(
            f"seed {s}: {t['tune']:.0f} + {t['ranker']:.0f} + {t['test']:.0f}"
            for s, t in sorted(timings.items())
        )
        + f"; total {total:.0f} s.",
        "",
        "Made by:",
        "",
        f"    {options.command}",
        "",
    ]
    return "\n".join(lines)


def _mean_std(values: np.ndarray) -> str:
    spread = values.std(ddof=1) if len(values) > 1 else 0.0
    return f"{values.mean():.3f} ± {spread:.3f}"


def run_public_table(options: PublicTableOptions) -> str:
    """Run every seed, write the Markdown to ``options.output`` (if set) and
    return it.

    Raises
    ------
    ValueError
        If ``options.seeds`` is empty or ``folds``/``pool`` < 1.
    bookverse.training.loaders.DataLoadError
        If MovieLens-100k is not under ``options.data_dir / "ml-100k"``.
    """
    if not options.seeds:
        raise ValueError("seeds must name at least one split seed, got none")
    for name, value in (("folds", options.folds), ("pool", options.pool)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    data, _ = load_movielens100k(options.data_dir / "ml-100k")
    per_seed, timings = {}, {}
    for seed in options.seeds:
        per_seed[seed], timings[seed] = run_seed(data, seed, options)
    markdown = format_markdown(per_seed, timings, options)
    if options.output is not None:
        options.output.parent.mkdir(parents=True, exist_ok=True)
        options.output.write_text(markdown, encoding="utf-8")
        logger.info("wrote %s", options.output)
    return markdown


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bookverse-train public-table",
        description="MovieLens-100k rows beside the public table.",
    )
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument(
        "--quick", action="store_true", help="seeds 1 and 2, one ranker fold"
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--no-neural", action="store_true")
    parser.add_argument("--pool", type=int, default=50)
    parser.add_argument("--folds", type=int, default=3)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: parse ``argv``, run, print the Markdown; returns 0."""
    import sys

    args = build_parser().parse_args(argv)
    words = list(sys.argv[1:] if argv is None else argv)
    options = PublicTableOptions(
        data_dir=args.data_dir,
        seeds=[1, 2] if args.quick else args.seeds,
        output=args.output,
        neural=not args.no_neural,
        pool=args.pool,
        folds=1 if args.quick else args.folds,
        command=shlex.join(["bookverse-train", "public-table", *words]),
    )
    print(run_public_table(options))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(main())
