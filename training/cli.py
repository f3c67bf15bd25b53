"""``bookverse-train``: fetch data, train and publish bundles, list readers.

bookverse-train fetch [--data-dir data] [--dataset all]
bookverse-train train [--dataset bookcrossing] [--artifacts artifacts]
bookverse-train readers [--artifacts artifacts] [--count 3]
bookverse-train evaluate [--dataset bookcrossing] [--out docs/results]
bookverse-train tune [--dataset bookcrossing] [--model als] [--trials 20]
    [--timeout 300] [--storage var/tuning.db]
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bookverse.models.bundle import (
    USER_IDS,
    USER_ITEMS,
    BundleError,
    read_catalogue,
    read_pointer,
)
from bookverse.training import fetch, public_table, report
from bookverse.training.loaders import DataLoadError
from bookverse.training.pipeline import (
    LOADERS,
    StepTimer,
    TrainOptions,
    load_prepared,
    train,
)
from bookverse.training.tune import BLEND, SEARCH_SPACES, TuneOptions, tune

logger = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

FETCHERS = {
    "bookcrossing": fetch.fetch_bookcrossing,
    "movielens100k": fetch.fetch_movielens100k,
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bookverse-train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--log-level", default="INFO")
    commands = parser.add_subparsers(dest="command", required=True)

    get = commands.add_parser("fetch", help="fetch and check the real data sets")
    get.add_argument("--data-dir", type=Path, default=Path("data"))
    get.add_argument("--dataset", choices=[*FETCHERS, "all"], default="all")

    fit = commands.add_parser("train", help="train, evaluate and publish a bundle")
    fit.add_argument("--dataset", choices=sorted(LOADERS), default="bookcrossing")
    fit.add_argument("--data-dir", type=Path, default=Path("data"))
    fit.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    fit.add_argument("--no-eval", action="store_true", help="skip the evaluation")
    fit.add_argument(
        "--max-users",
        type=int,
        default=None,
        help="train on the first N readers only (a quick slice)",
    )
    fit.add_argument("--seed", type=int, default=42)
    fit.add_argument(
        "--no-ranker", action="store_true", help="serve the weighted blend only"
    )
    fit.add_argument(
        "--events-db",
        type=Path,
        default=None,
        help="also learn from the interactions a server tracked (read-only)",
    )

    who = commands.add_parser("readers", help="print active readers of the bundle")
    who.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    who.add_argument("--count", type=int, default=3)
    who.add_argument("--show", type=int, default=3, help="books shown per reader")

    rate = commands.add_parser(
        "evaluate", help="evaluate every model and hybrid; write a table and chart"
    )
    rate.add_argument("--dataset", choices=sorted(LOADERS), default="bookcrossing")
    rate.add_argument("--data-dir", type=Path, default=Path("data"))
    rate.add_argument("--out", type=Path, default=Path("docs/results"))
    rate.add_argument("--seed", type=int, default=42)

    search = commands.add_parser(
        "tune", help="search hyperparameters on a validation split (resumable)"
    )
    search.add_argument("--dataset", choices=sorted(LOADERS), default="bookcrossing")
    search.add_argument("--data-dir", type=Path, default=Path("data"))
    search.add_argument("--model", choices=[*SEARCH_SPACES, BLEND], default="als")
    search.add_argument("--trials", type=int, default=20, help="finished trials wanted")
    search.add_argument("--timeout", type=float, default=300.0, help="seconds")
    search.add_argument(
        "--storage",
        default="var/tuning.db",
        help="SQLite file (or an RDB URL) holding the study",
    )
    search.add_argument("--study", default=None, help="default <dataset>-<model>")
    search.add_argument("--seed", type=int, default=42)
    search.add_argument("--out", type=Path, default=None, help="write the result JSON")
    table = commands.add_parser(
        "public-table",
        help="MovieLens-100k under the public table's protocol, over split seeds",
        add_help=False,
    )
    table.add_argument("args", nargs=argparse.REMAINDER, help="see --help")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == ["public-table"]:
        # its own options (and --help) belong to bookverse.training.public_table
        logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
        return public_table.main(words[1:])
    args = _parser().parse_args(words)
    logging.basicConfig(
        level=args.log_level.upper(),
        format=LOG_FORMAT,
    )
    try:
        return _run(args)
    except (fetch.DataFetchError, DataLoadError, BundleError) as exc:
        print(f"bookverse-train {args.command}: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.command == "fetch":
        names = list(FETCHERS) if args.dataset == "all" else [args.dataset]
        for name in names:
            folder = FETCHERS[name](args.data_dir)
            print(f"{name}: {folder}")
        return 0
    if args.command == "train":
        options = TrainOptions(
            dataset=args.dataset,
            data_dir=args.data_dir,
            artifacts=args.artifacts,
            evaluate=not args.no_eval,
            max_users=args.max_users,
            seed=args.seed,
            ranker=not args.no_ranker,
            events_db=args.events_db,
        )
        train(options)
        return 0
    if args.command == "evaluate":
        return run_evaluate(args)
    if args.command == "tune":
        return run_tune(args)
    return print_readers(args.artifacts, args.count, args.show)


def run_evaluate(args: argparse.Namespace) -> int:
    """Evaluate everything on one split; print and write the table and chart."""
    words = ["bookverse-train", "evaluate", "--dataset", args.dataset]
    words += ["--data-dir", str(args.data_dir), "--out", str(args.out)]
    command = shlex.join([*words, "--seed", str(args.seed)])
    result = report.run_report(args.dataset, args.data_dir, command, seed=args.seed)
    page, picture = report.write(result, args.out)
    print(report.markdown(result))
    for line in report.summary_lines(result):
        print(line)
    print(f"wrote {page} and {picture}")
    return 0


def run_tune(args: argparse.Namespace) -> int:
    """Run (or resume) a search and print its result as JSON."""
    storage = args.storage
    if "://" not in storage:
        Path(storage).parent.mkdir(parents=True, exist_ok=True)
        storage = f"sqlite:///{storage}"
    options = TrainOptions(dataset=args.dataset, data_dir=args.data_dir)
    data = load_prepared(options, StepTimer())
    search = TuneOptions(
        model=args.model,
        n_trials=args.trials,
        timeout=args.timeout,
        storage=storage,
        study_name=args.study,
        seed=args.seed,
    )
    text = json.dumps(tune(data, search), indent=2, sort_keys=True)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


def print_readers(artifacts: Path, count: int, show: int) -> int:
    """Print ``count`` readers of the current bundle with a middling history
    (ids on the first line, for scripts), then a few of each one's books."""
    import scipy.sparse as sp

    version = read_pointer(artifacts)
    if version is None:
        print(f"{artifacts}: no published bundle", file=sys.stderr)
        return 1
    folder = artifacts / "versions" / version
    user_ids = np.load(folder / USER_IDS, allow_pickle=False)
    matrix = sp.load_npz(folder / USER_ITEMS).tocsr()
    catalogue = read_catalogue(folder)
    sizes = np.diff(matrix.indptr)
    # readers with 20-60 books: enough history to personalise, easy to read
    chosen = np.flatnonzero((sizes >= 20) & (sizes <= 60))[:count]
    print(" ".join(str(user_ids[u]) for u in chosen))
    for user in chosen:
        books = matrix.indices[matrix.indptr[user] : matrix.indptr[user + 1]][:show]
        titles = "; ".join(
            f"{catalogue.titles[b]} ({catalogue.authors[b]})" for b in books
        )
        print(
            f"# reader {user_ids[user]} ({sizes[user]} books), read e.g.: {titles}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
