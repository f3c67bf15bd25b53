"""Bundle verification and hot reload: good bundles swap in, bad ones never do."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import fit_models, publish_bundle, synthetic_dataset

from bookverse.models.base import Model
from bookverse.models.bundle import MANIFEST, VERSIONS, BundleError, sha256_file
from bookverse.models.dataset import Dataset
from bookverse.server.bundle import ServingBundle
from bookverse.server.errors import Unavailable
from bookverse.server.metrics import create_metrics
from bookverse.server.model_store import ModelStore
from bookverse.training.publish import point_to


@pytest.fixture(scope="module")
def small() -> tuple[Dataset, dict[str, Model]]:
    dataset = synthetic_dataset(n_books=120, n_readers=150, seed=3)
    return dataset, fit_models(dataset)


def publish(root: Path, small: tuple[Dataset, dict[str, Model]]) -> str:
    dataset, models = small
    return publish_bundle(root, dataset, models)


def tamper(folder: Path, name: str, array: np.ndarray) -> None:
    """Replace one array file and make the manifest's checksum agree with it."""
    np.save(folder / name, array, allow_pickle=False)
    edit_manifest(
        folder,
        lambda m: m["files"].update(
            {
                name: {
                    "sha256": sha256_file(folder / name),
                    "bytes": (folder / name).stat().st_size,
                }
            }
        ),
    )


def edit_manifest(folder: Path, change: Any) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    change(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest))


def store_for(root: Path) -> ModelStore:
    return ModelStore(root, interval_s=0.05, metrics=create_metrics())


def failures(store: ModelStore) -> float:
    return store.metrics.model_reloads.labels(result="failure")._value.get()


# ServingBundle.load


def test_a_published_bundle_loads_whole(tmp_path: Path, small: Any) -> None:
    version = publish(tmp_path, small)
    bundle = ServingBundle.load(tmp_path / VERSIONS / version)
    dataset, _ = small
    assert bundle.version == version
    assert bundle.n_items == dataset.n_items and bundle.n_users == dataset.n_users
    assert set(bundle.models) == {"als", "content", "item_knn", "popularity"}
    assert bundle.id_scheme == "isbn" and bundle.rating_scale == (1.0, 10.0)
    assert sorted(bundle.popular_order.tolist()) == list(range(dataset.n_items))
    als = bundle.models["als"]
    assert isinstance(als.item_factors, np.memmap)  # type: ignore[attr-defined]


def test_a_changed_file_fails_its_checksum(tmp_path: Path, small: Any) -> None:
    folder = tmp_path / VERSIONS / publish(tmp_path, small)
    with (folder / "user_ids.npy").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(BundleError, match=r"user_ids\.npy"):
        ServingBundle.load(folder)


def test_non_finite_numbers_are_refused(tmp_path: Path, small: Any) -> None:
    folder = tmp_path / VERSIONS / publish(tmp_path, small)
    name = "als/als.item_factors.npy"
    factors = np.load(folder / name)
    factors[3, 1] = np.nan
    tamper(folder, name, factors)
    with pytest.raises(BundleError, match=r"als/als.item_factors.npy: holds NaN"):
        ServingBundle.load(folder)


def test_a_model_array_of_the_wrong_length_is_refused(
    tmp_path: Path, small: Any
) -> None:
    folder = tmp_path / VERSIONS / publish(tmp_path, small)
    name = "als/als.user_factors.npy"
    shorter = np.load(folder / name)[:-1]
    tamper(folder, name, shorter)
    edit_manifest(folder, lambda m: m["shapes"].update({name: list(shorter.shape)}))
    with pytest.raises(BundleError, match=r"als/als.user_factors.npy: shape"):
        ServingBundle.load(folder)


def test_manifest_shapes_must_match_the_files(tmp_path: Path, small: Any) -> None:
    folder = tmp_path / VERSIONS / publish(tmp_path, small)
    edit_manifest(folder, lambda m: m["shapes"].update({"item_ids.npy": [7]}))
    with pytest.raises(BundleError, match=r"item_ids.npy: shape .* manifest says"):
        ServingBundle.load(folder)


def test_counts_must_agree_with_the_arrays(tmp_path: Path, small: Any) -> None:
    folder = tmp_path / VERSIONS / publish(tmp_path, small)
    edit_manifest(folder, lambda m: m["dataset"].update({"n_items": 5}))
    with pytest.raises(BundleError, match=r"\.npy: shape \[120.*must have 5 rows"):
        ServingBundle.load(folder)


def test_the_version_must_be_the_folder_name(tmp_path: Path, small: Any) -> None:
    folder = tmp_path / VERSIONS / publish(tmp_path, small)
    edit_manifest(folder, lambda m: m.update({"version": "something-else"}))
    with pytest.raises(BundleError, match="version"):
        ServingBundle.load(folder)


def test_a_missing_model_file_is_named(tmp_path: Path, small: Any) -> None:
    folder = tmp_path / VERSIONS / publish(tmp_path, small)
    (folder / "item_knn" / "item_knn.similarity.npz").unlink()
    with pytest.raises(BundleError, match=r"item_knn\.similarity\.npz"):
        ServingBundle.load(folder)


# ModelStore


def test_nothing_is_served_before_a_bundle_loads(tmp_path: Path) -> None:
    store = store_for(tmp_path)
    with pytest.raises(Unavailable):
        store.current()
    assert not store.poll()
    assert not store.ready


def test_a_new_version_swaps_in_and_calls_keep_theirs(
    tmp_path: Path, small: Any
) -> None:
    first = publish(tmp_path, small)
    store = store_for(tmp_path)
    assert store.poll()
    held = store.current()
    assert held.version == first
    assert not store.poll()  # the same pointer is not loaded twice

    second = publish(tmp_path, small)
    assert store.poll()
    assert store.current().version == second
    assert held.version == first  # a call's bundle is never changed under it
    info = store.metrics.model_info.labels(version=second)._value.get()
    assert info == 1


def test_a_broken_bundle_is_refused_and_retried_only_when_the_pointer_moves(
    tmp_path: Path, small: Any, caplog: pytest.LogCaptureFixture
) -> None:
    good = publish(tmp_path, small)
    store = store_for(tmp_path)
    store.poll()

    broken = publish(tmp_path, small)
    folder = tmp_path / VERSIONS / broken
    (folder / "catalogue.json").write_text("{}")
    with caplog.at_level(logging.ERROR, logger="bookverse.server.model_store"):
        assert not store.poll()
    assert store.current().version == good
    assert failures(store) == 1
    assert "catalogue.json" in caplog.text and broken in caplog.text

    assert not store.poll()  # not tried again for the same pointer
    assert failures(store) == 1

    point_to(tmp_path, good)
    assert not store.poll() or store.current().version == good
    fixed = publish(tmp_path, small)
    assert store.poll()
    assert store.current().version == fixed


def test_a_failing_warm_up_refuses_the_bundle(tmp_path: Path, small: Any) -> None:
    publish(tmp_path, small)

    def warm_up(bundle: ServingBundle) -> None:
        raise RuntimeError("warm-up query failed")

    store = ModelStore(tmp_path, 0.05, create_metrics(), warm_up=warm_up)
    assert not store.poll()
    assert not store.ready
    assert failures(store) == 1


def test_the_poller_thread_picks_up_a_publish(tmp_path: Path, small: Any) -> None:
    swapped: list[str] = []
    store = ModelStore(
        tmp_path, 0.05, create_metrics(), on_swap=lambda b: swapped.append(b.version)
    )
    store.start()
    try:
        version = publish(tmp_path, small)
        for _ in range(200):
            if swapped:
                break
            time.sleep(0.02)
        assert swapped == [version]
    finally:
        store.stop(timeout=5)


def test_an_unreadable_pointer_is_refused_once_and_counted(
    tmp_path: Path, small: Any, caplog: pytest.LogCaptureFixture
) -> None:
    good = publish(tmp_path, small)
    store = store_for(tmp_path)
    store.poll()

    (tmp_path / "CURRENT").write_bytes(b"\xff\xfe\x00bad\n")
    with caplog.at_level(logging.ERROR, logger="bookverse.server.model_store"):
        assert not store.poll()
        assert not store.poll()
    assert failures(store) == 1
    assert "CURRENT" in caplog.text and "Traceback" not in caplog.text
    assert store.current().version == good

    fixed = publish(tmp_path, small)
    assert store.poll()
    assert store.current().version == fixed


def test_a_bundle_whose_blend_weights_are_all_zero_is_refused(
    tmp_path: Path, small: Any
) -> None:
    version = publish(tmp_path, small)
    folder = tmp_path / VERSIONS / version

    def zero(manifest: dict[str, Any]) -> None:
        manifest["blend"]["weights"] = dict.fromkeys(manifest["blend"]["weights"], 0.0)

    edit_manifest(folder, zero)
    with pytest.raises(BundleError, match="at least one blend weight must be > 0"):
        ServingBundle.load(folder)
