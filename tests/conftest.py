"""Shared fixtures: a small but real published bundle, and a real server.

The bundle is fitted with the real model classes and published with
``bookverse.training.publish``. Its data is a slice of the real Book-Crossing
data when ``data/bookcrossing`` has been fetched (``bookverse-train fetch``):
the 5-core of the whole set, then its first readers, then a 3-core of those.
Without the data (no network is needed either way) it is a synthetic set
shaped like books: ISBN ids, titles, authors and years, readers who favour
one genre.

The server fixture starts the real server in-process with ``create_server``
on 127.0.0.1, port 0, with a temporary events database, and yields a channel
and stubs.

``ranker_published`` is the same data and models with a small real
meta-ranker beside them (``training.ranker.fit_meta_ranker`` with small
settings), published without re-ranking.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
import pytest

from bookverse.models.base import Model
from bookverse.models.dataset import Catalogue, Dataset
from bookverse.models.ids import isbn13_check_digit
from bookverse.models.registry import create_model
from bookverse.recommendations.v1 import recommendations_pb2_grpc as pb_grpc
from bookverse.server.app import Runtime, create_server
from bookverse.server.config import ServerConfig

if TYPE_CHECKING:
    from bookverse.models.ranker import MetaRanker

BOOKCROSSING = Path(__file__).resolve().parents[1] / "data" / "bookcrossing"
SLICE_READERS = 2000

MODEL_PARAMS: dict[str, dict[str, Any]] = {
    "popularity": {},
    "als": {"factors": 32, "iterations": 12, "num_threads": 1},
    "item_knn": {"k": 50, "num_threads": 1},
    "content": {},
}
BLEND_WEIGHTS = {"als": 0.45, "item_knn": 0.3, "content": 0.1, "popularity": 0.15}

RANKER_SETTINGS: dict[str, Any] = {
    "max_readers": 300,
    "pool": 30,
    "objectives": ("rank:ndcg",),
    "n_folds": 1,
    "nthread": 1,
}
"""A small real meta-ranker: few readers, one objective, one fold."""

GENRES = ("mystery", "romance", "science fiction", "history", "fantasy", "poetry")
WORDS = {
    "mystery": ("murder", "detective", "shadow", "alibi"),
    "romance": ("love", "heart", "summer", "kiss"),
    "science fiction": ("star", "robot", "planet", "galaxy"),
    "history": ("empire", "war", "king", "revolution"),
    "fantasy": ("dragon", "wizard", "sword", "kingdom"),
    "poetry": ("verse", "song", "sonnet", "rhyme"),
}


@dataclass(frozen=True)
class ServingData:
    """The data set a test bundle was fitted on, and where it came from."""

    dataset: Dataset
    real: bool


@dataclass(frozen=True)
class Published:
    """A published artifacts root."""

    root: Path
    version: str
    data: ServingData


@dataclass(frozen=True)
class LiveServer:
    """A started server and a client connected to it."""

    address: str
    port: int
    channel: grpc.Channel
    stub: pb_grpc.RecommendationServiceStub
    runtime: Runtime


def isbn13(number: int) -> str:
    """A valid ISBN-13 built from ``number`` (for synthetic books)."""
    body = f"978{number:09d}"
    return body + isbn13_check_digit(body)


def synthetic_dataset(
    n_books: int = 240, n_readers: int = 300, seed: int = 0
) -> Dataset:
    """Readers who mostly read one genre; books with ISBNs, titles and years.

    Book ``i`` is of genre ``i % 6``; about one year in twenty is unknown (0).
    """
    rng = np.random.default_rng(seed)
    genre_of = np.arange(n_books) % len(GENRES)
    titles = [
        f"The {rng.choice(WORDS[GENRES[g]])} of {rng.choice(WORDS[GENRES[g]])} {i}"
        for i, g in enumerate(genre_of)
    ]
    authors = [f"Author {GENRES[g].title()} {i % 5}" for i, g in enumerate(genre_of)]
    years = rng.integers(1950, 2021, size=n_books).astype(np.int32)
    years[rng.random(n_books) < 0.05] = 0

    # popular books are read more; each reader favours one genre
    appeal = rng.pareto(1.5, size=n_books) + 0.1
    users, items = [], []
    for reader in range(n_readers):
        liked = np.flatnonzero(genre_of == reader % len(GENRES))
        weights = appeal[liked] / appeal[liked].sum()
        size = min(int(rng.integers(5, 15)), len(liked))
        picks = rng.choice(liked, size=size, replace=False, p=weights)
        extra = rng.choice(n_books, size=2, replace=False)
        chosen = np.unique(np.concatenate([picks, extra]))
        users += [reader] * len(chosen)
        items += chosen.tolist()

    catalogue = Catalogue(
        item_ids=np.array([isbn13(100_000 + i) for i in range(n_books)]),
        titles=titles,
        authors=authors,
        years=years,
        publishers=["BookVerse Press"] * n_books,
        genres=[(GENRES[g],) for g in genre_of],
    )
    n = len(users)
    return Dataset(
        name="synthetic-books",
        user_ids=np.array([str(1000 + r) for r in range(n_readers)]),
        catalogue=catalogue,
        users=np.asarray(users, dtype=np.int32),
        items=np.asarray(items, dtype=np.int32),
        ratings=np.zeros(n, dtype=np.float32),
        timestamps=np.zeros(n, dtype=np.int64),
        rating_scale=(1.0, 10.0),
        id_scheme="isbn",
    )


def bookcrossing_slice() -> Dataset | None:
    """A slice of the real Book-Crossing data, or None when it is absent."""
    files = ("BX-Book-Ratings.csv", "BX-Books.csv", "BX-Users.csv")
    if not all((BOOKCROSSING / f).is_file() for f in files):
        return None
    try:
        from bookverse.training import loaders, prepare, works
    except ImportError:
        return None
    raw, _ = loaders.load_bookcrossing(BOOKCROSSING)
    grouped, _ = works.group_works(raw)  # as the default training run does
    core = prepare.kcore(prepare.drop_duplicate_pairs(grouped), 5, 5)
    return prepare.kcore(prepare.first_users(core, SLICE_READERS), 3, 3)


def fit_models(dataset: Dataset) -> dict[str, Model]:
    """The served model families, fitted on ``dataset``."""
    return {
        name: create_model(name, params).fit(dataset)
        for name, params in MODEL_PARAMS.items()
    }


def publish_bundle(
    root: Path,
    dataset: Dataset,
    models: dict[str, Model],
    version: str | None = None,
    *,
    ranker: MetaRanker | None = None,
    rerank: Mapping[str, Any] | None = None,
) -> str:
    """Write and atomically publish a bundle under ``root``; its version.

    ``ranker`` and ``rerank`` go into the bundle as the training pipeline
    writes them (``meta_ranker/``, ``manifest["ranker"]``, ``["rerank"]``).
    """
    from bookverse.training.publish import publish, write_bundle

    sections: dict[str, Any] = {}
    if ranker is not None:
        sections["ranker"] = ranker
    if rerank is not None:
        sections["rerank"] = rerank

    def build(folder: Path, version: str) -> None:
        write_bundle(
            folder,
            dataset,
            models,
            version=version,
            blend_weights=BLEND_WEIGHTS,
            fingerprint=f"test-{dataset.name}-{dataset.n_interactions}",
            **sections,
        )

    return publish(root, build, version)


def fit_ranker(dataset: Dataset) -> MetaRanker:
    """A small real meta-ranker over the served model families."""
    from bookverse.training.ranker import fit_meta_ranker

    return fit_meta_ranker(MODEL_PARAMS, dataset, **RANKER_SETTINGS)


@pytest.fixture(scope="session")
def serving_data() -> ServingData:
    """The real Book-Crossing slice when fetched, else the synthetic set."""
    real = bookcrossing_slice()
    if real is not None:
        return ServingData(real, True)
    return ServingData(synthetic_dataset(), False)


@pytest.fixture(scope="session")
def fitted_models(serving_data: ServingData) -> dict[str, Model]:
    return fit_models(serving_data.dataset)


@pytest.fixture(scope="session")
def published(
    tmp_path_factory: pytest.TempPathFactory,
    serving_data: ServingData,
    fitted_models: dict[str, Model],
) -> Published:
    """A bundle of the real model classes, published under a temp root."""
    root = tmp_path_factory.mktemp("artifacts")
    version = publish_bundle(root, serving_data.dataset, fitted_models)
    return Published(root, version, serving_data)


@pytest.fixture(scope="session")
def meta_ranker(serving_data: ServingData) -> MetaRanker:
    """A small meta-ranker trained on the serving data (its base models are
    the served ones, refitted on all the data by ``fitted_models``)."""
    return fit_ranker(serving_data.dataset)


@pytest.fixture(scope="session")
def ranker_published(
    tmp_path_factory: pytest.TempPathFactory,
    serving_data: ServingData,
    fitted_models: dict[str, Model],
    meta_ranker: MetaRanker,
) -> Published:
    """``published`` with the meta-ranker beside the models; no re-ranking."""
    root = tmp_path_factory.mktemp("ranker-artifacts")
    version = publish_bundle(
        root, serving_data.dataset, fitted_models, ranker=meta_ranker
    )
    return Published(root, version, serving_data)


def server_config(root: Path, events_db: Path, **overrides: Any) -> ServerConfig:
    """A loopback, ephemeral-port configuration for tests."""
    settings: dict[str, Any] = {
        "artifacts": root,
        "events_db": events_db,
        "host": "127.0.0.1",
        "port": 0,
        "metrics_port": 0,
        "reload_interval_s": 0.2,
        "shutdown_grace_s": 1.0,
        "worker_threads": 8,
        **overrides,
    }
    return ServerConfig(**settings)


@contextmanager
def serving(root: Path, events_db: Path) -> Iterator[LiveServer]:
    """The real server on 127.0.0.1:0 over the bundles under ``root``, serving
    (its first bundle loaded), and a channel to it; stopped on exit."""
    server, port, runtime = create_server(server_config(root, events_db))
    server.start()
    runtime.start()
    try:
        if not runtime.wait_until_serving(timeout=60):
            raise RuntimeError(f"no bundle under {root} loaded within 60 s")
        address = f"127.0.0.1:{port}"
        channel = grpc.insecure_channel(address)
        stub = pb_grpc.RecommendationServiceStub(channel)
        yield LiveServer(address, port, channel, stub, runtime)
        channel.close()
    finally:
        runtime.stop(grace=1.0)


@pytest.fixture(scope="module")
def live_server(
    published: Published, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """The real server over ``published``, and a channel to it."""
    events_db = tmp_path_factory.mktemp("events") / "events.db"
    with serving(published.root, events_db) as live:
        yield live
