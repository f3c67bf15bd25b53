"""Export fitted models as a versioned bundle and publish it atomically.

Steps (see ``bookverse.models.bundle`` for the format):

1. write every file into ``<root>/versions/.tmp-<version>/``;
2. fsync each file, write ``manifest.json`` last (checksums of all others);
3. fsync the folder, rename it to ``<root>/versions/<version>/``;
4. write ``<root>/CURRENT.tmp``, fsync, ``os.replace`` it onto ``CURRENT``.

A reader of ``CURRENT`` therefore only ever sees a complete bundle.
"""

from __future__ import annotations

import logging
import os
import platform
import secrets
import shutil
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from bookverse.models.base import Model
from bookverse.models.bundle import (
    ALIASES,
    MANIFEST,
    POINTER,
    SCHEMA_VERSION,
    USER_IDS,
    USER_ITEMS,
    VERSIONS,
    sha256_file,
    write_aliases,
    write_catalogue,
    write_json,
)
from bookverse.models.dataset import Dataset
from bookverse.models.ranker import MetaRanker
from bookverse.training.works import WORK_ALIASES_KEY

logger = logging.getLogger(__name__)

RANKER_DIR = "meta_ranker"
LIBRARIES = ("numpy", "scipy", "faiss-cpu", "xgboost-cpu", "implicit", "scikit-learn")


def new_version(now: datetime | None = None) -> str:
    """A sortable, unique version id such as ``20261204T160501Z-3fa2``."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{secrets.token_hex(2)}"


def library_versions() -> dict[str, str]:
    """Versions of the numeric libraries the bundle was written with."""
    found = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bundle(
    folder: Path,
    dataset: Dataset,
    models: Mapping[str, Model],
    *,
    version: str,
    blend_weights: Mapping[str, float],
    fingerprint: str,
    metrics: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    ranker: MetaRanker | None = None,
    rerank: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a complete bundle into the empty or new ``folder``; returns the
    manifest. ``dataset`` is what the served models were fitted on: its
    readers' histories are what serving knows about them. ``ranker`` (its
    files under ``meta_ranker/``, its parameters as ``manifest["ranker"]``)
    and ``rerank`` (the re-ranking settings, ``manifest["rerank"]``) are
    optional."""
    folder.mkdir(parents=True, exist_ok=True)
    files = write_catalogue(folder, dataset.catalogue)
    np.save(folder / USER_IDS, np.asarray(dataset.user_ids, dtype=str))
    sp.save_npz(folder / USER_ITEMS, dataset.user_items().tocsr(), compressed=True)
    files += [USER_IDS, USER_ITEMS]
    aliases = dataset.extras.get(WORK_ALIASES_KEY)
    if isinstance(aliases, dict) and write_aliases(
        folder, aliases, dataset.catalogue.item_ids
    ):
        files.append(ALIASES)

    described: dict[str, Any] = {}
    for name, model in models.items():
        sub = folder / name
        sub.mkdir(exist_ok=True)
        written = [f"{name}/{f}" for f in model.save(sub)]
        described[name] = {"params": model.params(), "files": written}
        files += written

    sections: dict[str, Any] = dict(extra or {})
    if ranker is not None:
        sub = folder / RANKER_DIR
        sub.mkdir(exist_ok=True)
        written = [f"{RANKER_DIR}/{f}" for f in ranker.save(sub)]
        params = ranker.params()
        sections["ranker"] = {
            "params": params,
            "files": written,
            "features": list(params["features"]),
        }
        files += written
    if rerank is not None:
        sections["rerank"] = dict(rerank)

    for name in files:
        _fsync_path(folder / name)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "version": version,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "dataset": {
            "name": dataset.name,
            "fingerprint": fingerprint,
            "n_users": dataset.n_users,
            "n_items": dataset.n_items,
            "n_interactions": dataset.n_interactions,
            "rating_scale": list(dataset.rating_scale),
            "id_scheme": dataset.id_scheme,
        },
        "files": {name: _describe(folder / name) for name in sorted(files)},
        "shapes": _shapes(folder, files),
        "models": described,
        "blend": {"weights": dict(blend_weights)},
        "metrics": dict(metrics or {}),
        "libraries": library_versions(),
        **sections,
    }
    write_json(folder / MANIFEST, manifest)
    _fsync_path(folder)
    return manifest


def _describe(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def _shapes(folder: Path, files: list[str]) -> dict[str, list[int]]:
    """Shape of every ``.npy`` (memory-mapped header read) and ``.npz`` matrix."""
    shapes: dict[str, list[int]] = {}
    for name in files:
        path = folder / name
        if name.endswith(".npy"):
            shapes[name] = list(np.load(path, mmap_mode="r", allow_pickle=False).shape)
        elif name.endswith(".npz"):
            shapes[name] = list(sp.load_npz(path).shape)
    return shapes


def publish(root: Path, build: Any, version: str | None = None) -> str:
    """Build a bundle with ``build(folder, version)`` and publish it atomically.

    ``build`` writes the bundle into the temporary folder it is given (for
    example ``functools.partial(write_bundle, dataset=..., ...)`` wrapped to
    take ``folder`` and ``version``). Returns the published version.
    """
    version = version or new_version()
    versions = root / VERSIONS
    versions.mkdir(parents=True, exist_ok=True)
    temp = versions / f".tmp-{version}"
    final = versions / version
    if final.exists():
        raise FileExistsError(f"{final}: version already published")
    shutil.rmtree(temp, ignore_errors=True)
    try:
        build(temp, version)
        os.rename(temp, final)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    _fsync_path(versions)
    point_to(root, version)
    logger.info("published bundle %s under %s", version, root)
    return version


def point_to(root: Path, version: str) -> None:
    """Atomically make ``version`` the current one (temp file, fsync, replace)."""
    temp = root / f"{POINTER}.tmp"
    with temp.open("w", encoding="utf-8") as handle:
        handle.write(version + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, root / POINTER)
    _fsync_path(root)
