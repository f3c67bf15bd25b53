"""Preparation of a loaded ``Dataset`` as the reference protocol describes.

The reference protocol (``shared/DATA.md``) counts every rating row as an
interaction, drops repeated (reader, book) pairs, then removes readers and
books with fewer than 5 interactions until none is left (the 5-core):

>>> data = kcore(drop_duplicate_pairs(raw))  # doctest: +SKIP

Each function returns a new ``Dataset``; the input is never changed. Filters
that remove readers or books re-index both compactly (in their old order) and
keep the catalogue and the extras aligned: an extra whose key starts with
``user_`` is a sequence aligned with ``user_ids``, one starting with ``item_``
a sequence aligned with the catalogue; other extras are carried unchanged.

``dataset_fingerprint`` names the prepared data in a bundle's manifest.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from bookverse.models.dataset import Catalogue, Dataset

logger = logging.getLogger(__name__)


def drop_duplicate_pairs(dataset: Dataset) -> Dataset:
    """Keep one interaction per (reader, book) pair.

    Of the rows of one pair, an explicit rating is preferred to an implicit
    interaction (rating 0), then the latest timestamp, then the earliest row.
    Kept rows stay in their original order.

    Returns
    -------
    Dataset
        Same readers and catalogue, (n_kept,) interactions.
    """
    users, items = dataset.users, dataset.items
    if dataset.n_interactions < 2:
        return dataset

    # sort by pair, then by preference; np.lexsort's last key is the primary
    rows = np.arange(dataset.n_interactions)
    implicit = dataset.ratings == 0
    order = np.lexsort((rows, -dataset.timestamps, implicit, items, users))
    sorted_users, sorted_items = users[order], items[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = (sorted_users[1:] != sorted_users[:-1]) | (
        sorted_items[1:] != sorted_items[:-1]
    )
    if first.all():
        return dataset

    keep = np.zeros(dataset.n_interactions, dtype=bool)
    keep[order[first]] = True
    logger.debug("dropped %s repeated pairs", int((~keep).sum()))
    return dataset.subset(keep)


def kcore(dataset: Dataset, min_user: int = 5, min_item: int = 5) -> Dataset:
    """Remove readers with fewer than ``min_user`` and books with fewer than
    ``min_item`` interactions, repeatedly, until every one left has enough.

    Every interaction row counts, so drop repeated pairs first if a pair
    should count once. The result is the unique largest subset of
    interactions in which all readers and books meet their minimum. Readers
    and books without interactions are removed from ``user_ids``, the
    catalogue and the extras, and the rest re-indexed compactly.

    Parameters
    ----------
    dataset : the interactions to filter.
    min_user, min_item : minimum interactions per reader and per book (>= 1).

    Returns
    -------
    Dataset
        A new dataset with (n_users',) readers, (n_items',) books.

    Raises
    ------
    ValueError
        When ``min_user`` or ``min_item`` is below 1.
    """
    for name, value in (("min_user", min_user), ("min_item", min_item)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")

    users, items = dataset.users, dataset.items
    keep = np.ones(dataset.n_interactions, dtype=bool)
    rounds = 0
    while True:
        rounds += 1
        user_counts = np.bincount(users[keep], minlength=dataset.n_users)
        item_counts = np.bincount(items[keep], minlength=dataset.n_items)
        enough = (user_counts[users] >= min_user) & (item_counts[items] >= min_item)
        still = keep & enough
        if still.sum() == keep.sum():
            break
        keep = still

    logger.debug("k-core stable after %s rounds", rounds)
    return drop_unused(dataset.subset(keep))


def first_users(dataset: Dataset, n_users: int) -> Dataset:
    """Only the interactions of the first ``n_users`` readers (a quick slice).

    Readers are taken in index order; books left without interactions are
    removed and both re-indexed compactly.

    Raises
    ------
    ValueError
        When ``n_users`` is below 1.
    """
    if n_users < 1:
        raise ValueError(f"n_users must be >= 1, got {n_users}")
    return drop_unused(dataset.subset(dataset.users < n_users))


def drop_unused(dataset: Dataset) -> Dataset:
    """Remove readers and books without interactions; re-index compactly.

    Kept readers and books keep their relative order; the catalogue and the
    ``user_`` and ``item_`` extras are cut to match.

    Raises
    ------
    ValueError
        When a ``user_`` or ``item_`` extra is not as long as what it is
        aligned with.
    """
    used_users = np.bincount(dataset.users, minlength=dataset.n_users) > 0
    used_items = np.bincount(dataset.items, minlength=dataset.n_items) > 0

    # old index -> new compact index (-1 for removed ones)
    user_map = np.cumsum(used_users, dtype=np.int64) - 1
    item_map = np.cumsum(used_items, dtype=np.int64) - 1
    kept_users, kept_items = np.flatnonzero(used_users), np.flatnonzero(used_items)

    return replace(
        dataset,
        user_ids=dataset.user_ids[kept_users],
        catalogue=subset_catalogue(dataset.catalogue, kept_items),
        users=user_map[dataset.users].astype(np.int32),
        items=item_map[dataset.items].astype(np.int32),
        extras=_subset_extras(dataset, kept_users, kept_items),
    )


def subset_catalogue(catalogue: Catalogue, index: np.ndarray) -> Catalogue:
    """The catalogue rows at ``index`` ((n,) int), in that order."""
    rows = index.tolist()
    return Catalogue(
        item_ids=catalogue.item_ids[index],
        titles=[catalogue.titles[i] for i in rows],
        authors=[catalogue.authors[i] for i in rows],
        years=catalogue.years[index],
        publishers=[catalogue.publishers[i] for i in rows],
        genres=[catalogue.genres[i] for i in rows],
        descriptions=None
        if catalogue.descriptions is None
        else [catalogue.descriptions[i] for i in rows],
    )


def _subset_extras(
    dataset: Dataset, kept_users: np.ndarray, kept_items: np.ndarray
) -> dict[str, object]:
    """Cut ``user_`` and ``item_`` extras to the kept readers and books."""
    extras: dict[str, object] = {}
    for key, value in dataset.extras.items():
        if key.startswith("user_"):
            extras[key] = _take(value, kept_users, dataset.n_users, key)
        elif key.startswith("item_"):
            extras[key] = _take(value, kept_items, dataset.n_items, key)
        else:
            extras[key] = value
    return extras


def _take(value: Any, index: np.ndarray, expected: int, key: str) -> Any:
    """``value[index]`` for an array, a list of the picked items otherwise."""
    if len(value) != expected:
        raise ValueError(
            f"extras[{key!r}] must have one entry per "
            f"{'reader' if key.startswith('user_') else 'book'} ({expected}), "
            f"got {len(value)}"
        )
    if isinstance(value, np.ndarray):
        return value[index]
    return [value[i] for i in index.tolist()]


def prepare(dataset: Dataset, min_user: int = 5, min_item: int = 5) -> Dataset:
    """The reference protocol: repeated pairs dropped, then the k-core filter.

    Raises
    ------
    ValueError
        See ``kcore``.
    """
    prepared = kcore(drop_duplicate_pairs(dataset), min_user, min_item)
    logger.info(
        "prepared %s: %s interactions, %s readers, %s books",
        dataset.name,
        prepared.n_interactions,
        prepared.n_users,
        prepared.n_items,
    )
    return prepared


def dataset_fingerprint(dataset: Dataset) -> str:
    """A sha256 (hex) of what a model learns from: the interactions, the reader
    and book ids they point at, the rating scale and the id scheme.

    The name, metadata and extras are left out, so a renamed data set or a
    corrected title keeps its fingerprint. Arrays are hashed with fixed
    little-endian dtypes, so the value is the same on every platform.
    """
    digest = hashlib.sha256(b"bookverse-dataset-v1\0")
    digest.update(f"{dataset.id_scheme}\0{dataset.rating_scale!r}\0".encode())
    for ids in (dataset.user_ids, dataset.catalogue.item_ids):
        _update_with_ids(digest, ids.tolist())
    for array, dtype in (
        (dataset.users, "<i4"),
        (dataset.items, "<i4"),
        (dataset.ratings, "<f4"),
        (dataset.timestamps, "<i8"),
    ):
        data = np.ascontiguousarray(array, dtype=dtype)
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data.tobytes())
    return digest.hexdigest()


def _update_with_ids(digest: Any, ids: Sequence[str]) -> None:
    """Feed ids to ``digest``: their count, each one's length, then the text."""
    encoded = [str(value).encode("utf-8") for value in ids]
    digest.update(len(encoded).to_bytes(8, "little"))
    digest.update(np.array([len(e) for e in encoded], dtype="<u4").tobytes())
    digest.update(b"".join(encoded))
