"""Resident memory of one process across many hot reloads.

Fits the served model families once, then publishes ``--reloads`` versions of
that model set one after another under a temporary artifacts root and lets
the real :class:`~bookverse.server.model_store.ModelStore` load, verify, warm
up (one real recommendation, as the server does) and swap in each one. After
each swap it prints the process's resident memory, read from ``VmRSS`` in
``/proc/self/status``, and at the end the growth from reload 5 to the last::

    python bench/reload_memory.py [--reloads 30] [--synthetic]

The data is the Book-Crossing slice the tests use (``data/bookcrossing``)
unless ``--synthetic`` is given or the data is absent. Nothing forces a
garbage collection: the figures are what a serving process would see.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bookverse.models.dataset import Catalogue, Dataset
from bookverse.models.registry import create_model
from bookverse.server.app import limit_threads, warm_up
from bookverse.server.config import ExperimentConfig
from bookverse.server.metrics import create_metrics
from bookverse.server.model_store import ModelStore
from bookverse.server.recommender import Recommender
from bookverse.training.publish import publish, write_bundle

DATA = Path(__file__).resolve().parents[1] / "data" / "bookcrossing"
SLICE_READERS = 2000
PARAMS = {
    "popularity": {},
    "als": {"factors": 32, "iterations": 12, "num_threads": 1},
    "item_knn": {"k": 50, "num_threads": 1},
    "content": {},
}
WEIGHTS = {"als": 0.45, "item_knn": 0.3, "content": 0.1, "popularity": 0.15}
BASELINE_RELOAD = 5


def resident_mib() -> float:
    """This process's resident set size in MiB (``VmRSS``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def bookcrossing_slice() -> Dataset:
    """The 5-core of Book-Crossing, its first readers, then a 3-core."""
    from bookverse.training import loaders, prepare

    raw, _ = loaders.load_bookcrossing(DATA)
    core = prepare.kcore(prepare.drop_duplicate_pairs(raw), 5, 5)
    return prepare.kcore(prepare.first_users(core, SLICE_READERS), 3, 3)


def synthetic(n_books: int = 3000, n_readers: int = 2000, seed: int = 0) -> Dataset:
    """Random readers of random books, shaped like the real slice."""
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_readers), 12)
    items = rng.integers(0, n_books, size=len(users))
    pairs = np.unique(np.stack([users, items], axis=1), axis=0)
    catalogue = Catalogue(
        item_ids=np.array([f"{9780000000000 + i}" for i in range(n_books)]),
        titles=[f"Book {i} of words {i % 97}" for i in range(n_books)],
        authors=[f"Author {i % 300}" for i in range(n_books)],
        years=np.full(n_books, 2000, dtype=np.int32),
        publishers=["Press"] * n_books,
        genres=[()] * n_books,
    )
    return Dataset(
        name="synthetic",
        user_ids=np.array([str(u) for u in range(n_readers)]),
        catalogue=catalogue,
        users=pairs[:, 0].astype(np.int32),
        items=pairs[:, 1].astype(np.int32),
        ratings=np.zeros(len(pairs), dtype=np.float32),
        timestamps=np.zeros(len(pairs), dtype=np.int64),
        rating_scale=(1.0, 10.0),
        id_scheme="plain",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reloads", type=int, default=30)
    parser.add_argument("--synthetic", action="store_true")
    args = parser.parse_args(argv)
    if args.reloads <= BASELINE_RELOAD:
        parser.error(f"--reloads must be > {BASELINE_RELOAD}")

    limit_threads(1)
    real = not args.synthetic and DATA.is_dir()
    dataset = bookcrossing_slice() if real else synthetic()
    models = {name: create_model(name, p).fit(dataset) for name, p in PARAMS.items()}
    print(
        f"data: {'Book-Crossing slice' if real else 'synthetic'}, "
        f"{dataset.n_users} readers x {dataset.n_items} books; "
        f"fitted, RSS {resident_mib():.1f} MiB"
    )

    def build(folder: Path, version: str) -> None:
        write_bundle(
            folder,
            dataset,
            models,
            version=version,
            blend_weights=WEIGHTS,
            fingerprint="reload-memory",
        )

    recommender = Recommender(None, ExperimentConfig(), 0.0)
    with tempfile.TemporaryDirectory(prefix="reload-memory-") as tmp:
        root = Path(tmp)
        store = ModelStore(
            root,
            interval_s=1.0,
            metrics=create_metrics(),
            warm_up=lambda bundle: warm_up(recommender, bundle, 1),
        )
        rss: list[float] = []
        for reload in range(1, args.reloads + 1):
            version = publish(root, build, f"v{reload:03d}")
            started = time.perf_counter()
            if not store.poll() or store.current().version != version:
                print(f"reload {reload}: bundle {version} was refused")
                return 1
            rss.append(resident_mib())
            print(
                f"reload {reload:3d}  version {version}  "
                f"load {time.perf_counter() - started:5.2f} s  RSS {rss[-1]:7.1f} MiB"
            )

    growth = rss[-1] - rss[BASELINE_RELOAD - 1]
    per_reload = growth / (args.reloads - BASELINE_RELOAD)
    print(
        f"growth from reload {BASELINE_RELOAD} to {args.reloads}: "
        f"{growth:+.1f} MiB ({per_reload:+.2f} MiB per reload)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
