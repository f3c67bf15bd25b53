"""One published bundle, loaded and verified whole before it may serve.

:meth:`ServingBundle.load` reads a folder written by
``bookverse.training.publish`` and checks, in this order, that

1. the manifest parses and its version is the folder's name;
2. the libraries it was written with are compatible with the installed ones
   (:data:`CHECKED_LIBRARIES`: same major version; a library the manifest
   does not name, or one not installed here, is not compared), and the
   meta-ranker's feature list, when the manifest has one, is a list of
   distinct names that agrees with the ranker model's own ``features``;
3. every listed file has its recorded size and sha256;
4. every array has the shape the manifest records, and the counts agree
   everywhere: ``dataset.n_items`` = ``item_ids.npy`` = ``catalogue.json`` =
   columns of ``user_items.npz`` = rows of every per-book model array
   (factors, embeddings, biases, similarity, TF-IDF, popularity), and
   ``dataset.n_users`` = ``user_ids.npy`` = rows of ``user_items.npz`` = rows
   of every per-reader model array (recognised by the families' file names);
5. every floating-point array and sparse matrix holds finite numbers only;
6. every model named by the manifest loads through the registry, and a
   warm-up query (the first and the last training reader, a folded-in
   reader and an empty one, whole catalogue and a few items) gives finite
   scores of length ``n_items`` from each, which also proves that every
   model's per-book and per-reader state covers the counts.

Anything else raises :class:`~bookverse.models.bundle.BundleError` naming the
file and the reason, and the bundle is never served. Dense arrays are
memory-mapped (the models load them so), so processes serving the same bundle
share their pages; ``user_items.npz`` is compressed and read into memory.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from bookverse.models.base import Model, UserProfile
from bookverse.models.bundle import (
    ITEM_IDS,
    USER_IDS,
    USER_ITEMS,
    BundleError,
    Manifest,
    read_aliases,
    read_catalogue,
    read_manifest,
    verify_checksums,
)
from bookverse.models.dataset import Catalogue
from bookverse.models.ids import ID_SCHEMES, IdScheme, normalize_book_id
from bookverse.models.registry import load_model

logger = logging.getLogger(__name__)

_WARMUP_ITEMS = 16

CHECKED_LIBRARIES: dict[str, tuple[str, ...]] = {
    "numpy": ("numpy",),
    "faiss-cpu": ("faiss-cpu", "faiss"),
    "xgboost-cpu": ("xgboost-cpu", "xgboost"),
    "xgboost": ("xgboost", "xgboost-cpu"),
}
"""Manifest ``libraries`` key -> installed distributions that stand for it.

These write the files the server reads (``.npy``, FAISS index, XGBoost JSON);
a file written under another major version may not read back the same, so
such a bundle is refused. Minor and patch versions may differ."""


@dataclass(frozen=True)
class ServingBundle:
    """Everything one model version needs to answer calls; never modified.

    Build it with :meth:`load` (a published folder) or :meth:`from_parts`
    (already loaded pieces, e.g. in tests); both derive the look-up tables.

    Attributes
    ----------
    version : str
        The manifest's version id.
    catalogue : Catalogue
        Metadata by item row, ``n_items`` long.
    user_items : (n_users, n_items) float32 CSR
        Training histories.
    models : dict of str to Model
        Loaded models by manifest name.
    weights : dict of str to float
        The manifest's blend weights.
    id_scheme : {"isbn", "plain"}
        How book ids of requests are normalised.
    rating_scale : (low, high)
    book_index, user_index : dict of str to int
        Canonical id -> row.
    readers_per_item : (n_items,) int64
        Training readers of each book; 0 means unknown to the models.
    popular_order : (n_items,) int64
        Every item, most popular first (the fallback ranking).
    author_keys : (n_items,) str
        Case-folded author of each item ("" where unknown).
    aliases : dict of str to str
        Canonical id of an edition merged into a work -> the work's id in the
        catalogue (empty when the bundle groups no editions).
    """

    version: str
    catalogue: Catalogue
    user_items: sp.csr_matrix
    models: dict[str, Model]
    weights: dict[str, float]
    id_scheme: IdScheme
    rating_scale: tuple[float, float]
    book_index: dict[str, int]
    user_index: dict[str, int]
    readers_per_item: np.ndarray
    popular_order: np.ndarray
    author_keys: np.ndarray
    aliases: dict[str, str]
    folder: Path | None = None

    @property
    def n_items(self) -> int:
        return len(self.catalogue)

    @property
    def n_users(self) -> int:
        return int(self.user_items.shape[0])

    def canonical_book(self, raw: str) -> str:
        """The catalogue id a client's spelling of a book id stands for.

        Normalised under the bundle's id scheme, then an edition merged into a
        work resolves to the work's id. May be empty (nothing id-like left).
        """
        canonical = normalize_book_id(raw, self.id_scheme)
        return self.aliases.get(canonical, canonical)

    def book_row(self, canonical: str) -> int | None:
        """The catalogue row of a canonical (or aliased) book id, if any."""
        return self.book_index.get(self.aliases.get(canonical, canonical))

    def history(self, user: int) -> tuple[np.ndarray, np.ndarray]:
        """A training reader's items (int64) and weights (float32), by row."""
        start, stop = self.user_items.indptr[user], self.user_items.indptr[user + 1]
        items = np.asarray(self.user_items.indices[start:stop], dtype=np.int64)
        weights = np.asarray(self.user_items.data[start:stop], dtype=np.float32)
        return items, weights

    @classmethod
    def from_parts(
        cls,
        *,
        version: str,
        catalogue: Catalogue,
        user_ids: np.ndarray,
        user_items: sp.csr_matrix,
        models: Mapping[str, Model],
        weights: Mapping[str, float],
        id_scheme: IdScheme,
        rating_scale: tuple[float, float],
        aliases: Mapping[str, str] | None = None,
        folder: Path | None = None,
    ) -> ServingBundle:
        """Assemble a bundle from loaded pieces and derive its look-up tables.

        Raises
        ------
        BundleError
            If ids repeat, or ``user_items`` disagrees with the id arrays.
        """
        book_index = _index(catalogue.item_ids, ITEM_IDS)
        user_index = _index(user_ids, USER_IDS)
        expected = (len(user_index), len(book_index))
        if user_items.shape != expected:
            raise BundleError(
                f"{USER_ITEMS}: shape {user_items.shape} must be "
                f"(len({USER_IDS}), len({ITEM_IDS})) = {expected}"
            )
        readers = np.asarray(user_items.getnnz(axis=0), dtype=np.int64)
        return cls(
            version=version,
            catalogue=catalogue,
            user_items=user_items,
            models=dict(models),
            weights=dict(weights),
            id_scheme=id_scheme,
            rating_scale=rating_scale,
            book_index=book_index,
            user_index=user_index,
            readers_per_item=readers,
            popular_order=_popular_order(models, readers),
            author_keys=np.array([a.strip().casefold() for a in catalogue.authors]),
            aliases=dict(aliases or {}),
            folder=folder,
        )

    @classmethod
    def load(cls, folder: Path) -> ServingBundle:
        """Load the bundle in ``folder`` and verify it whole (module docstring).

        Parameters
        ----------
        folder : Path
            ``<root>/versions/<version>``.

        Returns
        -------
        ServingBundle

        Raises
        ------
        BundleError
            Naming the file and the reason, if any check fails.
        """
        started = time.perf_counter()
        manifest = read_manifest(folder)
        if manifest.version != folder.name:
            raise BundleError(
                f"manifest.json: version {manifest.version!r} differs from "
                f"its folder name {folder.name!r}"
            )
        _check_libraries(manifest)
        _check_ranker_features(manifest)
        verify_checksums(manifest)
        _check_arrays(manifest, _counts(manifest))

        catalogue = _catalogue(folder)
        bundle = cls.from_parts(
            version=manifest.version,
            catalogue=catalogue,
            user_ids=_array(folder, USER_IDS),
            user_items=_csr(folder / USER_ITEMS),
            models=_models(manifest),
            weights=_weights(manifest),
            id_scheme=_id_scheme(manifest),
            rating_scale=_rating_scale(manifest),
            aliases=read_aliases(folder, catalogue.item_ids),
            folder=folder,
        )
        _warm_up(bundle)
        logger.info(
            "bundle %s verified: %s books, %s readers, models %s in %.2f s",
            bundle.version,
            bundle.n_items,
            bundle.n_users,
            ",".join(bundle.models),
            time.perf_counter() - started,
        )
        return bundle


def _major(version: str) -> int | None:
    """The leading number of a version string ("2.1.3" -> 2), if it has one."""
    found = re.match(r"\s*(\d+)", version)
    return int(found.group(1)) if found else None


def _installed(names: tuple[str, ...]) -> str | None:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def _check_libraries(manifest: Manifest) -> None:
    """Each checked library the manifest names has the installed major version.

    Raises
    ------
    BundleError
        If ``libraries`` is not an object, a version is unreadable, or a
        major version differs from the installed one.
    """
    libraries = manifest.data.get("libraries", {})
    if not isinstance(libraries, dict):
        raise BundleError("manifest.json: libraries must be an object")
    for key, distributions in CHECKED_LIBRARIES.items():
        if key not in libraries:
            continue
        installed = _installed(distributions)
        if installed is None:
            continue
        wanted = _major(str(libraries[key]))
        if wanted is None:
            raise BundleError(f"manifest.json: libraries.{key} has no version number")
        if wanted != _major(installed):
            raise BundleError(
                f"manifest.json: written with {key} major version {wanted}, "
                f"installed is {installed}; the major versions must agree"
            )


def _check_ranker_features(manifest: Manifest) -> None:
    """The manifest's ranker feature list is sound and agrees with the model's.

    Raises
    ------
    BundleError
        If ``ranker.features`` is not a non-empty list of distinct names, or a
        model's ``params.features`` differs from it.
    """
    ranker = manifest.data.get("ranker")
    if ranker is None:
        return
    features = ranker.get("features") if isinstance(ranker, dict) else None
    if (
        not isinstance(features, list)
        or not features
        or not all(isinstance(f, str) and f for f in features)
        or len(set(features)) != len(features)
    ):
        raise BundleError(
            "manifest.json: ranker.features must be a non-empty list of "
            "distinct feature names"
        )
    for name, spec in sorted(manifest.models.items()):
        params = spec.get("params", {}) if isinstance(spec, dict) else {}
        own = params.get("features") if isinstance(params, dict) else None
        if own is not None and list(own) != features:
            raise BundleError(
                f"{name}/: params.features differ from manifest ranker.features"
            )


def _counts(manifest: Manifest) -> tuple[int, int]:
    """``(n_users, n_items)`` from the manifest's dataset section."""
    try:
        n_users = int(manifest.dataset["n_users"])
        n_items = int(manifest.dataset["n_items"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"manifest.json: dataset counts unreadable ({exc})") from exc
    return n_users, n_items


# array files whose rows are readers or books, by the families' file names
_READER_MARKERS = (
    "user_ids",
    "user_items",
    "user_factors",
    "user_embedding",
    "user_bias",
)
_BOOK_MARKERS = (
    "item_ids",
    "item_factors",
    "item_embedding",
    "item_bias",
    "similarity",
    "tfidf",
    "popularity.scores",
    "popularity.trending",
)


def _expected_rows(name: str, counts: tuple[int, int]) -> int | None:
    """Rows an array file must have, when its name says (else None)."""
    n_users, n_items = counts
    stem = name.rsplit("/", 1)[-1]
    if any(marker in stem for marker in _READER_MARKERS):
        return n_users
    if any(marker in stem for marker in _BOOK_MARKERS):
        return n_items
    return None


def _check_arrays(manifest: Manifest, counts: tuple[int, int]) -> None:
    """Each array has the manifest's shape and the count's rows, and is finite.

    Raises
    ------
    BundleError
        Naming the first array that breaks a rule.
    """
    recorded = manifest.shapes
    for name in sorted(manifest.files):
        path = manifest.folder / name
        if name.endswith(".npy"):
            array = _array(path.parent, path.name)
            shape, values = list(array.shape), array
        elif name.endswith(".npz"):
            matrix = _csr(path)
            shape, values = list(matrix.shape), matrix.data
        else:
            continue

        # shapes: as recorded, and rows matching the data set's counts
        if name in recorded and recorded[name] != shape:
            raise BundleError(f"{name}: shape {shape}, manifest says {recorded[name]}")
        rows = _expected_rows(name, counts)
        if rows is not None and (not shape or shape[0] != rows):
            raise BundleError(f"{name}: shape {shape} must have {rows} rows")
        if name == USER_ITEMS and shape[1:] != [counts[1]]:
            raise BundleError(f"{name}: must have dataset.n_items={counts[1]} columns")

        # numbers: no NaN or infinity in any floating-point array
        if values.dtype.kind in "fc" and not np.all(np.isfinite(values)):
            raise BundleError(f"{name}: holds NaN or infinite values")


def _array(folder: Path, name: str) -> np.ndarray:
    try:
        return np.load(folder / name, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise BundleError(f"{name}: cannot read array ({exc})") from exc


def _csr(path: Path) -> sp.csr_matrix:
    try:
        return sp.csr_matrix(sp.load_npz(path), dtype=np.float32)
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path.name}: cannot read sparse matrix ({exc})") from exc


def _catalogue(folder: Path) -> Catalogue:
    try:
        return read_catalogue(folder)
    except BundleError:
        raise
    except (OSError, ValueError) as exc:
        raise BundleError(f"{ITEM_IDS}: cannot read ({exc})") from exc


def _models(manifest: Manifest) -> dict[str, Model]:
    models: dict[str, Model] = {}
    for name, spec in sorted(manifest.models.items()):
        try:
            models[name] = load_model(
                name, manifest.folder / name, dict(spec.get("params", {}))
            )
        except (OSError, ValueError, RuntimeError) as exc:
            raise BundleError(f"{name}/: model does not load ({exc})") from exc
    if not models:
        raise BundleError("manifest.json: names no model")
    return models


def _weights(manifest: Manifest) -> dict[str, float]:
    try:
        weights = manifest.blend_weights
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"manifest.json: blend weights unreadable ({exc})") from exc
    for name, weight in weights.items():
        if name not in manifest.models:
            raise BundleError(f"manifest.json: blend weight for unknown model {name}")
        if not np.isfinite(weight) or weight < 0:
            raise BundleError(f"manifest.json: blend weight of {name} must be >= 0")
    return weights


def _id_scheme(manifest: Manifest) -> IdScheme:
    scheme = manifest.dataset.get("id_scheme", "isbn")
    for known in ID_SCHEMES:
        if scheme == known:
            return known
    raise BundleError(f"manifest.json: dataset.id_scheme must be one of {ID_SCHEMES}")


def _rating_scale(manifest: Manifest) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in manifest.dataset["rating_scale"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"manifest.json: dataset.rating_scale ({exc})") from exc
    if not (np.isfinite(low) and np.isfinite(high) and low <= high):
        raise BundleError(
            "manifest.json: dataset.rating_scale must be finite, low<=high"
        )
    return low, high


def _index(ids: np.ndarray, file: str) -> dict[str, int]:
    index = {str(value): row for row, value in enumerate(ids)}
    if len(index) != len(ids):
        raise BundleError(f"{file}: ids must be unique")
    return index


def _popular_order(models: Mapping[str, Model], readers: np.ndarray) -> np.ndarray:
    """Every item by descending popularity score (reader counts without one)."""
    scores: Any = readers.astype(np.float32)
    popularity = models.get("popularity")
    if popularity is not None:
        scores = popularity.score(UserProfile.empty(), None)
    items = np.arange(len(readers), dtype=np.int64)
    return np.asarray(np.lexsort((items, -np.asarray(scores))), dtype=np.int64)


def _warm_up(bundle: ServingBundle) -> None:
    """Ask every model once for a training reader and an empty reader.

    Raises
    ------
    BundleError
        If a model fails, or its scores are of the wrong length or not finite.
    """
    profiles = [UserProfile.empty()]
    for user in sorted({0, bundle.n_users - 1}):
        if user >= 0:
            items, weights = bundle.history(user)
            profiles.append(UserProfile(user, items, weights))
            profiles.append(UserProfile(None, items, weights))
    some = np.arange(min(_WARMUP_ITEMS, bundle.n_items), dtype=np.int64)
    for name, model in bundle.models.items():
        for profile in profiles:
            try:
                whole = np.asarray(model.score(profile, None))
                part = np.asarray(model.score(profile, some))
            except (ValueError, IndexError, RuntimeError) as exc:
                raise BundleError(f"{name}/: warm-up query failed ({exc})") from exc
            if whole.shape != (bundle.n_items,) or part.shape != some.shape:
                raise BundleError(
                    f"{name}/: warm-up scores have shape {whole.shape}, "
                    f"must be ({bundle.n_items},)"
                )
            if not (np.all(np.isfinite(whole)) and np.all(np.isfinite(part))):
                raise BundleError(f"{name}/: warm-up scores are not finite")
