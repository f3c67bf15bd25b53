"""The artifact bundle: the one format between training and serving.

A published bundle is a folder ``<root>/versions/<version>/`` holding::

    manifest.json      written last; describes and checksums everything else
    item_ids.npy       (n_items,) unicode, canonical book ids
    user_ids.npy       (n_users,) unicode, canonical reader ids of training
    user_items.npz     (n_users, n_items) CSR, the training interactions
    catalogue.json     titles, authors, years, publishers, genres by item row
    aliases.json       optional: edition id -> id of the work served for it
    <model>/...        each model's own files (see ``bookverse.models``)

and ``<root>/CURRENT`` names the version being served. Training writes a
bundle into a temporary folder, syncs it, renames it into ``versions/`` and
only then replaces ``CURRENT`` (``bookverse.training.publish``). Published
folders are never modified.

The manifest (``SCHEMA_VERSION`` 1) is a JSON object with: ``schema_version``,
``version``, ``created_at``, ``dataset`` (name, fingerprint, counts,
``rating_scale``, ``id_scheme``), ``files`` (relative path -> ``sha256``,
``bytes``), ``shapes`` (array name -> shape), ``models`` (name -> ``params``,
``files``), ``blend`` (``weights`` by model name), ``ranker`` (``features``:
the meta-ranker's ordered feature names, or absent), ``metrics`` and
``libraries`` (package -> version used to write it).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bookverse.models.dataset import Catalogue

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
POINTER = "CURRENT"
VERSIONS = "versions"
CATALOGUE = "catalogue.json"
ITEM_IDS = "item_ids.npy"
USER_IDS = "user_ids.npy"
USER_ITEMS = "user_items.npz"
ALIASES = "aliases.json"


class BundleError(ValueError):
    """A bundle that must not be served; the message names the file and why."""


@dataclass(frozen=True)
class Manifest:
    """The parsed ``manifest.json`` of one bundle."""

    path: Path
    data: dict[str, Any]

    @property
    def version(self) -> str:
        return str(self.data["version"])

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        return dict(self.data["files"])

    @property
    def models(self) -> dict[str, dict[str, Any]]:
        return dict(self.data["models"])

    @property
    def blend_weights(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.data["blend"]["weights"].items()}

    @property
    def dataset(self) -> dict[str, Any]:
        return dict(self.data["dataset"])

    @property
    def shapes(self) -> dict[str, list[int]]:
        return {k: list(v) for k, v in self.data.get("shapes", {}).items()}


REQUIRED_KEYS = ("schema_version", "version", "dataset", "files", "models", "blend")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(folder: Path) -> Manifest:
    """Parse and structurally check ``folder/manifest.json``.

    Raises
    ------
    BundleError
        The manifest is missing, not JSON, of another schema version, or lacks
        a required key.
    """
    path = folder / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise BundleError(f"{path}: missing manifest") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: unreadable manifest ({exc})") from exc
    if not isinstance(data, dict):
        raise BundleError(f"{path}: manifest must be a JSON object")
    missing = [key for key in REQUIRED_KEYS if key not in data]
    if missing:
        raise BundleError(f"{path}: manifest lacks {', '.join(missing)}")
    if data["schema_version"] != SCHEMA_VERSION:
        raise BundleError(
            f"{path}: schema_version must be {SCHEMA_VERSION}, "
            f"got {data['schema_version']!r}"
        )
    return Manifest(path=path, data=data)


def verify_checksums(manifest: Manifest) -> None:
    """Check that every file the manifest lists exists with its size and sha256.

    Raises ``BundleError`` naming the first file that differs.
    """
    folder = manifest.folder
    for name, meta in sorted(manifest.files.items()):
        path = folder / name
        if not path.is_file():
            raise BundleError(f"{name}: listed in the manifest but missing")
        size = path.stat().st_size
        if size != meta.get("bytes"):
            expected = meta.get("bytes")
            raise BundleError(f"{name}: {size} bytes, manifest says {expected}")
        actual = sha256_file(path)
        if actual != meta.get("sha256"):
            raise BundleError(f"{name}: sha256 {actual} differs from the manifest")


def read_pointer(root: Path) -> str | None:
    """The version named by ``root/CURRENT``, or None when there is none."""
    try:
        text = (root / POINTER).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except UnicodeDecodeError as exc:
        raise BundleError(f"{POINTER}: not UTF-8 text ({exc.reason})") from exc
    return text or None


def version_folder(root: Path, version: str) -> Path:
    """``root/versions/<version>``; refuses a version that is not a plain name."""
    if not version or "/" in version or version in (".", "..") or os.sep in version:
        raise BundleError(f"{POINTER}: invalid version name {version!r}")
    return root / VERSIONS / version


def write_json(path: Path, payload: Any) -> None:
    """Write ``payload`` as UTF-8 JSON and fsync it."""
    with path.open("w", encoding="utf-8") as handle:
        json.dump(payload, handle, ensure_ascii=False, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())


def write_catalogue(folder: Path, catalogue: Catalogue) -> list[str]:
    """Write ``catalogue.json`` and ``item_ids.npy``; returns the file names."""
    np.save(folder / ITEM_IDS, np.asarray(catalogue.item_ids, dtype=str))
    write_json(
        folder / CATALOGUE,
        {
            "titles": list(catalogue.titles),
            "authors": list(catalogue.authors),
            "years": [int(y) for y in catalogue.years],
            "publishers": list(catalogue.publishers),
            "genres": [list(g) for g in catalogue.genres],
        },
    )
    return [ITEM_IDS, CATALOGUE]


def read_catalogue(folder: Path) -> Catalogue:
    """Read what ``write_catalogue`` wrote; raises ``BundleError`` naming the file
    when the two files disagree in length or a field is missing."""
    item_ids = np.load(folder / ITEM_IDS, allow_pickle=False)
    try:
        data = json.loads((folder / CATALOGUE).read_text(encoding="utf-8"))
        fields = [data[k] for k in ("titles", "authors", "years", "publishers")]
        genres = [tuple(g) for g in data["genres"]]
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{CATALOGUE}: unreadable ({exc})") from exc
    lengths = {len(f) for f in fields} | {len(genres)}
    if lengths != {len(item_ids)}:
        raise BundleError(
            f"{CATALOGUE}: field lengths {sorted(lengths)} differ from "
            f"{ITEM_IDS} length {len(item_ids)}"
        )
    titles, authors, years, publishers = fields
    return Catalogue(
        item_ids=item_ids,
        titles=[str(t) for t in titles],
        authors=[str(a) for a in authors],
        years=np.asarray(years, dtype=np.int32),
        publishers=[str(p) for p in publishers],
        genres=genres,
    )


def write_aliases(folder: Path, aliases: dict[str, str], item_ids: np.ndarray) -> bool:
    """Write ``aliases.json``: the edition ids that resolve to a served work.

    Only aliases whose target is in ``item_ids`` and that differ from their
    target are kept. Returns whether a file was written.
    """
    served = set(np.asarray(item_ids, dtype=str).tolist())
    kept = {k: v for k, v in aliases.items() if k != v and v in served}
    if not kept:
        return False
    write_json(folder / ALIASES, kept)
    return True


def read_aliases(folder: Path, item_ids: np.ndarray) -> dict[str, str]:
    """Read ``aliases.json`` when present (else no aliases).

    Raises ``BundleError`` when the file is not a JSON object of strings or an
    alias points at a book the catalogue does not hold.
    """
    path = folder / ALIASES
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{ALIASES}: unreadable ({exc})") from exc
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise BundleError(f"{ALIASES}: must map edition ids to work ids (strings)")
    served = set(np.asarray(item_ids, dtype=str).tolist())
    stray = next((v for v in data.values() if v not in served), None)
    if stray is not None:
        raise BundleError(f"{ALIASES}: an alias points outside {ITEM_IDS}")
    return data
