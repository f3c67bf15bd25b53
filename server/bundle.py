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
   model's per-book and per-reader state covers the counts;
7. when the manifest has ``ranker``, the meta-ranker (not one of
   ``models``) loads from ``meta_ranker/``: its files are checksummed
   bundle files, its base models are all models of the bundle, its
   ``params.features`` equal ``ranker.features`` (and the booster's own,
   which ``MetaRanker.load`` checks), its statistics have one row per book
   and per reader, and one warm-up call (pool, features, scores) gives a
   finite score per candidate. Its statistics may hold NaN (a missing
   feature value), never infinity;
8. ``rerank``, when present, is a valid :class:`RerankSettings` (each key's
   range below); a key that :func:`~bookverse.models.rerank.mmr` does not
   take is ignored with one warning, and a warm-up ``mmr`` call with the
   settings must succeed. Without ``rerank`` nothing is re-ranked.

Anything else raises :class:`~bookverse.models.bundle.BundleError` naming the
file and the reason, and the bundle is never served. Dense arrays are
memory-mapped (the models load them so), so processes serving the same bundle
share their pages; ``user_items.npz`` is compressed and read into memory.
"""

from __future__ import annotations

import inspect
import logging
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from bookverse.models.features import RequestContext
from bookverse.models.ids import ID_SCHEMES, IdScheme, normalize_book_id
from bookverse.models.registry import load_model
from bookverse.models.rerank import ExposureLedger, ExposureSettings, mmr

if TYPE_CHECKING:
    from bookverse.models.ranker import MetaRanker

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

RANKER_DIR = "meta_ranker"
"""Folder of the meta-ranker's files inside a bundle."""

EMBEDDINGS = ("als", "content")
"""Item vectors the re-ranking's similarity may come from."""

_MMR_SET_BY_SERVER = (
    "candidates",
    "relevance",
    "similarity",
    "n",
    "authors",
    "popularity",
)
"""Arguments of ``mmr`` that each call fills in; the manifest may not."""


@dataclass(frozen=True)
class RerankSettings:
    """Diversity re-ranking of a bundle: the manifest's ``rerank`` object.

    Attributes
    ----------
    diversity : float in [0, 1], default 0.3
        MMR's ``lambda``; 0 keeps the relevance order.
    similarity_threshold : float or None, default None
        In [-1, 1] (a cosine); ``None`` skips nothing.
    max_per_author : int >= 1 or None, default None
        At most this many books of one author per answer.
    embedding : {"als", "content"}, default "als"
        Item vectors of the similarity: ALS item factors or TF-IDF rows (the
        other one when the bundle lacks it).
    extra : dict of str to value
        Further keys that ``mmr`` takes as keyword arguments.
    with_popularity : bool
        Whether ``mmr`` takes ``popularity`` (each candidate's training
        readers), which the server then passes.
    exposure : ExposureSettings or None, default None
        The manifest's ``rerank.exposure``: the places of each answer that
        go to books the server has shown least lately (an
        :class:`~bookverse.models.rerank.ExposureLedger` per bundle); None
        leaves the MMR order as it is.
    """

    diversity: float = 0.3
    similarity_threshold: float | None = None
    max_per_author: int | None = None
    embedding: str = "als"
    extra: Mapping[str, Any] = field(default_factory=dict)
    with_popularity: bool = False
    exposure: ExposureSettings | None = None


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
    titled : (n_items,) bool
        Whether the catalogue knows the item's title; untitled books (ratings
        of ISBNs with no metadata row) inform the models but are never
        recommended.
    aliases : dict of str to str
        Canonical id of an edition merged into a work -> the work's id in the
        catalogue (empty when the bundle groups no editions).
    folder : Path or None
        Where the bundle was loaded from.
    ranker : MetaRanker or None
        The meta-ranker over ``models``; None serves the weighted blend.
    rerank : RerankSettings or None
        Diversity re-ranking; None re-ranks nothing.
    ledger : ExposureLedger or None
        What this bundle has shown lately, when ``rerank`` has ``exposure``;
        each bundle starts a fresh one.
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
    titled: np.ndarray
    aliases: dict[str, str]
    folder: Path | None = None
    ranker: MetaRanker | None = None
    rerank: RerankSettings | None = None
    ledger: ExposureLedger | None = None

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
        ranker: MetaRanker | None = None,
        rerank: RerankSettings | None = None,
    ) -> ServingBundle:
        """Assemble a bundle from loaded pieces and derive its look-up tables.

        Raises
        ------
        BundleError
            If ids repeat, ``user_items`` disagrees with the id arrays, or the
            ranker's base models or statistics do not fit the bundle.
        """
        book_index = _index(catalogue.item_ids, ITEM_IDS)
        user_index = _index(user_ids, USER_IDS)
        expected = (len(user_index), len(book_index))
        if user_items.shape != expected:
            raise BundleError(
                f"{USER_ITEMS}: shape {user_items.shape} must be "
                f"(len({USER_IDS}), len({ITEM_IDS})) = {expected}"
            )
        if ranker is not None:
            _check_ranker_fits(ranker, models, expected)
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
            titled=np.array([bool(t.strip()) for t in catalogue.titles], dtype=bool),
            aliases=dict(aliases or {}),
            folder=folder,
            ranker=ranker,
            rerank=rerank,
            ledger=_ledger(rerank, len(book_index)),
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
        rerank = _rerank_settings(manifest)
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
            ranker=_ranker(manifest),
            rerank=rerank,
        )
        _warm_up(bundle)
        _warm_up_ranker(bundle)
        _warm_up_rerank(bundle)
        logger.info(
            "bundle %s verified: %s books, %s readers, models %s, ranker %s, "
            "rerank %s in %.2f s",
            bundle.version,
            bundle.n_items,
            bundle.n_users,
            ",".join(bundle.models),
            "yes" if bundle.ranker is not None else "no",
            "yes" if bundle.rerank is not None else "no",
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
        If ``ranker`` is not an object, ``ranker.features`` is not a
        non-empty list of distinct names, or ``ranker.params.features`` or a
        model's ``params.features`` differs from it.
    """
    ranker = manifest.data.get("ranker")
    if ranker is None:
        return
    if not isinstance(ranker, dict):
        raise BundleError("manifest.json: ranker must be an object")
    features = ranker.get("features")
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
    params = ranker.get("params")
    if params is None:
        return
    own = params.get("features") if isinstance(params, dict) else None
    if not isinstance(own, list) or own != features:
        raise BundleError(
            "manifest.json: ranker.params.features must equal ranker.features "
            "(same names, same order)"
        )


def _ranker(manifest: Manifest) -> MetaRanker | None:
    """The meta-ranker of ``manifest["ranker"]``, loaded; None without one.

    Raises
    ------
    BundleError
        If ``ranker.params`` or ``ranker.files`` is malformed, a ranker file
        is not a checksummed file under ``meta_ranker/``, or the ranker does
        not load (the message of ``MetaRanker.load`` names the feature or
        file).
    """
    spec = manifest.data.get("ranker")
    if spec is None:
        return None
    params, files = spec.get("params"), spec.get("files")
    if not isinstance(params, dict):
        raise BundleError("manifest.json: ranker.params must be an object")
    if not isinstance(files, list) or not files:
        raise BundleError("manifest.json: ranker.files must be a non-empty list")
    listed = manifest.files
    for name in files:
        if not isinstance(name, str) or not name.startswith(f"{RANKER_DIR}/"):
            raise BundleError(
                f"manifest.json: ranker.files entries must lie under "
                f"{RANKER_DIR}/, got {str(name)[:80]!r}"
            )
        if name not in listed:
            raise BundleError(
                f"manifest.json: ranker file {name} is not among the checksummed files"
            )
    # imported here: xgboost pulls in scikit-learn and pandas when they are
    # installed, which a bundle without a ranker should not pay for
    from bookverse.models.ranker import MetaRanker

    try:
        return MetaRanker.load(manifest.folder / RANKER_DIR, dict(params))
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as exc:
        raise BundleError(f"{RANKER_DIR}/: ranker does not load ({exc})") from exc


def _check_ranker_fits(
    ranker: MetaRanker, models: Mapping[str, Model], counts: tuple[int, int]
) -> None:
    """The ranker's base models are served and its statistics fit the counts.

    Raises
    ------
    BundleError
        Naming the missing base model or the table of the wrong length.
    """
    missing = sorted(set(ranker.base_models) - set(models))
    if missing:
        raise BundleError(
            f"manifest.json: ranker.params.base_models names {missing}, "
            "which the bundle's models do not include"
        )
    n_users, n_items = counts
    tables = ranker.tables_
    if tables is None:
        raise BundleError(f"{RANKER_DIR}/: ranker has no statistics")
    if tables.n_items != n_items:
        raise BundleError(
            f"{RANKER_DIR}/: statistics have {tables.n_items} books, "
            f"the bundle has {n_items}"
        )
    for name, values in tables.reader.items():
        if len(values) != n_users:
            raise BundleError(
                f"{RANKER_DIR}/: statistics {name} have {len(values)} readers, "
                f"the bundle has {n_users}"
            )


def _rerank_settings(manifest: Manifest) -> RerankSettings | None:
    """``manifest["rerank"]`` checked; None when absent.

    Raises
    ------
    BundleError
        Naming ``manifest.json`` and the key whose value breaks its rule.
    """
    spec = manifest.data.get("rerank")
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise BundleError("manifest.json: rerank must be an object")
    defaults = RerankSettings()
    diversity = spec.get("diversity", defaults.diversity)
    if not _is_number(diversity) or not 0.0 <= diversity <= 1.0:
        raise BundleError(
            f"manifest.json: rerank.diversity must be a number in [0, 1], "
            f"got {diversity!r}"
        )
    threshold = spec.get("similarity_threshold")
    if threshold is not None and (
        not _is_number(threshold) or not -1.0 <= threshold <= 1.0
    ):
        raise BundleError(
            "manifest.json: rerank.similarity_threshold must be null or a "
            f"number in [-1, 1], got {threshold!r}"
        )
    cap = spec.get("max_per_author")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int)):
        raise BundleError(
            f"manifest.json: rerank.max_per_author must be null or an integer "
            f">= 1, got {cap!r}"
        )
    if cap is not None and cap < 1:
        raise BundleError(
            f"manifest.json: rerank.max_per_author must be null or an integer "
            f">= 1, got {cap!r}"
        )
    embedding = spec.get("embedding", defaults.embedding)
    if embedding not in EMBEDDINGS:
        raise BundleError(
            f"manifest.json: rerank.embedding must be one of {EMBEDDINGS}, "
            f"got {str(embedding)[:40]!r}"
        )
    return RerankSettings(
        diversity=float(diversity),
        similarity_threshold=None if threshold is None else float(threshold),
        max_per_author=cap,
        embedding=embedding,
        extra=_mmr_extras(spec),
        with_popularity="popularity" in inspect.signature(mmr).parameters,
        exposure=_exposure_settings(spec.get("exposure")),
    )


def _exposure_settings(spec: object) -> ExposureSettings | None:
    """``rerank.exposure`` checked; None when absent or null.

    Raises
    ------
    BundleError
        Naming the key whose value breaks its rule, or an unknown key.
    """
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise BundleError("manifest.json: rerank.exposure must be an object or null")
    known = {"head", "depth", "limit", "window"}
    unknown = sorted(str(key)[:40] for key in spec if key not in known)
    if unknown:
        raise BundleError(
            f"manifest.json: rerank.exposure keys must be among {sorted(known)}, "
            f"got {unknown}"
        )
    missing = sorted({"head", "depth"} - set(spec))
    if missing:
        raise BundleError(f"manifest.json: rerank.exposure must give {missing}")
    try:
        return ExposureSettings(**spec)
    except ValueError as exc:
        raise BundleError(f"manifest.json: rerank.{exc}") from exc


def _ledger(rerank: RerankSettings | None, n_items: int) -> ExposureLedger | None:
    if rerank is None or rerank.exposure is None:
        return None
    return ExposureLedger(n_items, rerank.exposure)


def _mmr_extras(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Keys of ``rerank`` beyond the known ones that ``mmr`` takes by name.

    The others are ignored, with one warning naming them.
    """
    known = {
        "diversity",
        "similarity_threshold",
        "max_per_author",
        "embedding",
        "exposure",
    }
    accepted = set(inspect.signature(mmr).parameters) - set(_MMR_SET_BY_SERVER)
    extra = {k: v for k, v in spec.items() if k not in known and k in accepted}
    ignored = sorted(k for k in spec if k not in known and k not in accepted)
    if ignored:
        logger.warning(
            "manifest.json: rerank keys %s are not arguments of mmr; ignored",
            ", ".join(ignored),
        )
    return extra


def _is_number(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
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

        # numbers: no NaN or infinity in any floating-point array; the
        # ranker's statistics mark a missing value with NaN
        if values.dtype.kind not in "fc":
            continue
        if name.startswith(f"{RANKER_DIR}/"):
            if np.any(np.isinf(values)):
                raise BundleError(f"{name}: holds infinite values")
        elif not np.all(np.isfinite(values)):
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
            raise BundleError(
                f"manifest.json: blend weight of {name} must be finite and >= 0"
            )
    if not any(weight > 0 for weight in weights.values()):
        raise BundleError("manifest.json: at least one blend weight must be > 0")
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


def _warm_up_ranker(bundle: ServingBundle) -> None:
    """One ranker call (pool, feature rows, scores) for the first reader.

    Raises
    ------
    BundleError
        If the call fails or gives a score that is not finite.
    """
    ranker = bundle.ranker
    if ranker is None:
        return
    user = 0 if bundle.n_users else None
    items, weights = bundle.history(user) if user is not None else _nothing()
    profile = UserProfile(user, items, weights)
    context = RequestContext(hour=12, weekday=0, device=None)
    try:
        pool, scores = ranker.candidates(bundle.models, profile)
        features = ranker.build(pool, scores, profile, reader=user, context=context)
        values = ranker.score(features)
    except (ValueError, IndexError, RuntimeError) as exc:
        raise BundleError(f"{RANKER_DIR}/: warm-up call failed ({exc})") from exc
    if values.shape != pool.shape or not np.all(np.isfinite(values)):
        raise BundleError(
            f"{RANKER_DIR}/: warm-up gave {values.shape} scores for "
            f"{len(pool)} candidates, or scores that are not finite"
        )


def _warm_up_rerank(bundle: ServingBundle) -> None:
    """One ``mmr`` call with the bundle's settings on a few books.

    Raises
    ------
    BundleError
        If ``mmr`` refuses the settings (e.g. an extra key's value).
    """
    settings = bundle.rerank
    if settings is None:
        return
    rows = np.arange(min(_WARMUP_ITEMS, bundle.n_items), dtype=np.int64)
    extra = dict(settings.extra)
    if settings.with_popularity:
        extra["popularity"] = bundle.readers_per_item[rows].astype(np.float64)
    try:
        mmr(
            rows,
            np.linspace(1.0, 0.0, len(rows)),
            np.eye(len(rows), dtype=np.float32),
            len(rows),
            diversity=settings.diversity,
            similarity_threshold=settings.similarity_threshold,
            authors=list(bundle.author_keys[rows]),
            max_per_author=settings.max_per_author,
            **extra,
        )
    except (ValueError, TypeError) as exc:
        raise BundleError(f"manifest.json: rerank refused by mmr ({exc})") from exc


def _nothing() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(0, np.int64), np.zeros(0, np.float32)
