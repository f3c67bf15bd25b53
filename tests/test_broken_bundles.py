"""Broken bundles are refused whole while the old one serves; odd indexes are safe.

Each broken bundle is published over a good one through the real
``ModelStore``, polled by hand (no timing): it must be refused with a log
line naming the file, counted as a failed reload, and the good bundle must
keep serving; a good bundle published afterwards must swap in. Every damage
but the first keeps the manifest's checksums (and shapes, where it says)
consistent with the damaged file, so that only the check under test can
catch it.

The second half feeds the request pipeline nearest-neighbour indexes that pad
missing neighbours with -1 or repeat ids, and reader vectors that are not
finite: never a fake hit, never one book twice, never a NaN score.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest
from conftest import BLEND_WEIGHTS, fit_models, publish_bundle, synthetic_dataset

from bookverse.models.base import Model, UserProfile
from bookverse.models.bundle import MANIFEST, VERSIONS, sha256_file
from bookverse.models.dataset import Dataset
from bookverse.server.bundle import ServingBundle
from bookverse.server.config import ExperimentConfig
from bookverse.server.metrics import create_metrics
from bookverse.server.model_store import ModelStore
from bookverse.server.recommender import Recommender
from bookverse.server.validation import Filters, RecommendQuery
from bookverse.training.publish import point_to, publish, write_bundle

ITEM_FACTORS = "als/als.item_factors.npy"
USER_FACTORS = "als/als.user_factors.npy"
INDEX = "als/als.item_factors.faiss"

Small = tuple[Dataset, dict[str, Model]]


@pytest.fixture(scope="module")
def small() -> Small:
    dataset = synthetic_dataset(n_books=90, n_readers=120, seed=11)
    return dataset, fit_models(dataset)


def manifest_of(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / MANIFEST).read_text())
    return data


def rewrite_manifest(folder: Path, change: Callable[[dict[str, Any]], None]) -> None:
    manifest = manifest_of(folder)
    change(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest))


def resum(folder: Path, name: str, shape: list[int] | None = None) -> None:
    """Make the manifest agree with the file ``name`` as it is now."""

    def change(manifest: dict[str, Any]) -> None:
        path = folder / name
        manifest["files"][name] = {
            "sha256": sha256_file(path),
            "bytes": path.stat().st_size,
        }
        if shape is not None:
            manifest["shapes"][name] = shape

    rewrite_manifest(folder, change)


def save_array(folder: Path, name: str, array: np.ndarray) -> None:
    np.save(folder / name, array, allow_pickle=False)
    resum(folder, name, list(array.shape))


# damages: each takes a published folder and breaks one thing


def truncate_factors(folder: Path) -> None:
    path = folder / ITEM_FACTORS
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def one_row_fewer(folder: Path) -> None:
    save_array(folder, ITEM_FACTORS, np.load(folder / ITEM_FACTORS)[:-1])


def nan_in_factors(folder: Path) -> None:
    factors = np.load(folder / ITEM_FACTORS)
    factors[2, 3] = np.nan
    save_array(folder, ITEM_FACTORS, factors)


def wider_user_factors(folder: Path) -> None:
    factors = np.load(folder / USER_FACTORS)
    wider = np.hstack([factors, np.ones((len(factors), 1), factors.dtype)])
    save_array(folder, USER_FACTORS, wider)


def index_of_other_dimension(folder: Path) -> None:
    factors = np.load(folder / ITEM_FACTORS)
    index = faiss.IndexFlatIP(factors.shape[1] + 1)
    index.add(np.ones((len(factors), factors.shape[1] + 1), np.float32))
    faiss.write_index(index, str(folder / INDEX))
    resum(folder, INDEX)


def index_missing_a_row(folder: Path) -> None:
    factors = np.load(folder / ITEM_FACTORS)
    index = faiss.IndexFlatIP(factors.shape[1])
    index.add(np.ascontiguousarray(factors[:-1], np.float32))
    faiss.write_index(index, str(folder / INDEX))
    resum(folder, INDEX)


def no_manifest(folder: Path) -> None:
    (folder / MANIFEST).unlink()


def other_version(folder: Path) -> None:
    rewrite_manifest(folder, lambda m: m.update(version=m["version"] + "-x"))


def duplicate_item_ids(folder: Path) -> None:
    ids = np.load(folder / "item_ids.npy")
    ids[1] = ids[0]
    save_array(folder, "item_ids.npy", ids)


def numpy_of_another_major(folder: Path) -> None:
    major = int(np.__version__.split(".")[0])
    rewrite_manifest(folder, lambda m: m["libraries"].update(numpy=f"{major + 1}.0.0"))


def faiss_of_another_major(folder: Path) -> None:
    major = int(faiss.__version__.split(".")[0])
    rewrite_manifest(
        folder, lambda m: m["libraries"].update({"faiss-cpu": f"{major + 1}.0"})
    )


def repeated_ranker_feature(folder: Path) -> None:
    rewrite_manifest(folder, lambda m: m.update(ranker={"features": ["a", "a"]}))


DAMAGES = {
    # name: (damage, what the log line must name)
    "truncated file": (truncate_factors, ITEM_FACTORS),
    "one factor row fewer": (one_row_fewer, ITEM_FACTORS),
    "NaN in factors": (nan_in_factors, ITEM_FACTORS),
    "factor dimensions disagree": (wider_user_factors, "als.user_factors.npy"),
    "index of another dimension": (index_of_other_dimension, "als.item_factors.faiss"),
    "index missing a row": (index_missing_a_row, "als.item_factors.faiss"),
    "missing manifest": (no_manifest, MANIFEST),
    "manifest version mismatch": (other_version, MANIFEST),
    "duplicate item ids": (duplicate_item_ids, "item_ids.npy"),
    "numpy of another major": (numpy_of_another_major, "numpy"),
    "faiss of another major": (faiss_of_another_major, "faiss-cpu"),
    "ranker feature listed twice": (repeated_ranker_feature, "ranker.features"),
}

REASONS = {
    "truncated file": "bytes, manifest says",
    "one factor row fewer": "shape",
    "NaN in factors": "NaN",
    "factor dimensions disagree": "shape",
    "index of another dimension": "dims",
    "index missing a row": "must hold",
    "missing manifest": "missing manifest",
    "manifest version mismatch": "differs from its folder name",
    "duplicate item ids": "unique",
    "numpy of another major": "major",
    "faiss of another major": "major",
    "ranker feature listed twice": "distinct",
}


def publish_broken(root: Path, small: Small, damage: Callable[[Path], None]) -> str:
    """Publish a bundle that ``damage`` breaks before the pointer moves to it."""
    dataset, models = small

    def build(folder: Path, version: str) -> None:
        write_bundle(
            folder,
            dataset,
            models,
            version=version,
            blend_weights=BLEND_WEIGHTS,
            fingerprint="broken-test",
        )
        damage(folder)

    return publish(root, build)


def failures(store: ModelStore) -> float:
    value: float = store.metrics.model_reloads.labels(result="failure")._value.get()
    return value


@pytest.mark.parametrize("case", sorted(DAMAGES))
def test_a_broken_bundle_is_refused_and_the_old_one_serves(
    case: str, tmp_path: Path, small: Small, caplog: pytest.LogCaptureFixture
) -> None:
    damage, named = DAMAGES[case]
    good = publish_bundle(tmp_path, *small)
    store = ModelStore(tmp_path, 0.05, create_metrics())
    assert store.poll()
    held = store.current()

    broken = publish_broken(tmp_path, small, damage)
    with caplog.at_level(logging.ERROR, logger="bookverse.server.model_store"):
        assert not store.poll()
    assert store.current() is held and held.version == good
    assert failures(store) == 1
    refusals = [r.getMessage() for r in caplog.records if broken in r.getMessage()]
    assert len(refusals) == 1, caplog.text
    assert named in refusals[0] and REASONS[case] in refusals[0], refusals[0]

    # the next good bundle is loaded
    fixed = publish_bundle(tmp_path, *small)
    assert store.poll()
    assert store.current().version == fixed
    assert failures(store) == 1


def test_the_bundle_refused_is_retried_when_the_pointer_names_it_again(
    tmp_path: Path, small: Small
) -> None:
    good = publish_bundle(tmp_path, *small)
    store = ModelStore(tmp_path, 0.05, create_metrics())
    store.poll()
    broken = publish_broken(tmp_path, small, nan_in_factors)
    assert not store.poll()
    assert not store.poll()  # the same pointer: not tried again
    assert failures(store) == 1

    point_to(tmp_path, good)
    store.poll()
    point_to(tmp_path, broken)
    assert not store.poll()
    assert failures(store) == 2
    assert store.current().version == good


def test_a_published_version_is_never_written_again(
    tmp_path: Path, small: Small
) -> None:
    version = publish_bundle(tmp_path, *small)
    folder = tmp_path / VERSIONS / version
    before = {p.name: sha256_file(p) for p in folder.rglob("*") if p.is_file()}
    with pytest.raises(FileExistsError):
        publish_bundle(tmp_path, *small, version=version)
    after = {p.name: sha256_file(p) for p in folder.rglob("*") if p.is_file()}
    assert after == before
    assert not any(p.name.startswith(".tmp") for p in (tmp_path / VERSIONS).iterdir())


def test_a_manifest_without_checked_libraries_still_loads(
    tmp_path: Path, small: Small
) -> None:
    folder = (
        tmp_path
        / VERSIONS
        / publish_broken(
            tmp_path, small, lambda f: rewrite_manifest(f, lambda m: m.pop("libraries"))
        )
    )
    assert ServingBundle.load(folder).n_items == small[0].n_items


# indexes that pad, indexes that repeat, vectors that are not finite


class OddIndex:
    """A stand-in FAISS index answering with -1 padding and repeated ids."""

    def __init__(self, ntotal: int, labels: list[int]) -> None:
        self.ntotal = ntotal
        self.labels = labels

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.full((len(queries), k), -1, dtype=np.int64)
        found = self.labels[:k]
        labels[:, : len(found)] = found
        scores = np.where(labels >= 0, 1.0, -np.inf).astype(np.float32)
        return scores, labels


@pytest.fixture()
def loaded(tmp_path: Path, small: Small) -> ServingBundle:
    version = publish_bundle(tmp_path, *small)
    return ServingBundle.load(tmp_path / VERSIONS / version)


def check_answer(bundle: ServingBundle, items: list[Any], n: int) -> None:
    ids = [item.book_id for item in items]
    assert len(ids) <= n
    assert len(set(ids)) == len(ids), "a book appears twice"
    assert all(book in bundle.book_index for book in ids)
    assert all(math.isfinite(item.score) for item in items)
    assert all(0.0 <= item.confidence <= 1.0 for item in items)


def recommend(bundle: ServingBundle, user: str, n: int = 20) -> list[Any]:
    recommender = Recommender(None, ExperimentConfig(), 0.0)
    query = RecommendQuery(user, n, Filters(), (), "odd-index")
    answer = recommender.recommend(bundle, query)
    check_answer(bundle, answer.items, n)
    return answer.items


def test_an_index_padding_with_minus_one_gives_no_fake_hit(
    loaded: ServingBundle,
) -> None:
    als: Any = loaded.models["als"]
    als._state = _with_index(als._state, OddIndex(loaded.n_items, [5]))
    user = str(next(iter(loaded.user_index)))
    profile = UserProfile(loaded.user_index[user], *loaded.history(0))
    items, scores = als.candidates(profile, 50)
    assert items.tolist() == [5]  # padding dropped, never read as the last book
    assert np.all(np.isfinite(scores))
    recommend(loaded, user)


def test_an_index_repeating_ids_gives_each_book_once(loaded: ServingBundle) -> None:
    als: Any = loaded.models["als"]
    repeats = [3, 3, 7, 3, 7, 9, 9, 9] * 4
    als._state = _with_index(als._state, OddIndex(loaded.n_items, repeats))
    for user in list(loaded.user_index)[:5]:
        recommend(loaded, user, n=loaded.n_items)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_a_reader_vector_that_is_not_finite_gives_finite_scores(
    loaded: ServingBundle,
) -> None:
    als: Any = loaded.models["als"]
    poisoned = np.array(als.user_factors, dtype=np.float32)
    poisoned[0, :] = np.nan
    poisoned[1, :] = np.inf
    als._state = _with_factors(als._state, poisoned)
    users = list(loaded.user_index)
    for user in users[:2]:
        assert all(math.isfinite(item.score) for item in recommend(loaded, user))

    # a folded-in reader whose solve is not finite falls back to zeros
    assert np.all(np.isfinite(als.fold_in(np.array([0]), np.array([np.inf]))))


def _with_index(state: Any, index: Any) -> Any:
    return replace(state, index=index)


def _with_factors(state: Any, user_factors: np.ndarray) -> Any:
    return replace(state, user_factors=user_factors)
