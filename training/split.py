"""Train/test splits of a ``Dataset``, without leakage.

Every split works on distinct (reader, book) pairs: all rows of one pair go to
the same side, so no pair is ever in both. Each returns ``(train, test)``, two
``Dataset.subset`` views over the same readers and catalogue.

- ``per_user_split``: for each reader, a random ``test_fraction`` of their
  books to test (stratified by reader), the rest to train;
- ``time_split``: one global cut in time, everything at or after it to test;
- ``leave_last_out``: each reader's most recent book to test.
"""

from __future__ import annotations

import logging

import numpy as np

from bookverse.models.dataset import Dataset

logger = logging.getLogger(__name__)


def _pairs(dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Pair id of every row, numbered in order of first appearance.

    Returns
    -------
    pair_of_row : (n_interactions,) int64
    first_row : (n_pairs,) int64
        The first row of each pair, increasing.
    """
    keys = dataset.users.astype(np.int64) * dataset.n_items + dataset.items
    _, first_row, inverse = np.unique(keys, return_index=True, return_inverse=True)

    # renumber pairs by first appearance so that rows keep their data-set order
    order = np.argsort(first_row, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[inverse.ravel()], first_row[order]


def _check_fraction(test_fraction: float) -> None:
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")


def per_user_split(
    dataset: Dataset, test_fraction: float = 0.2, seed: int = 42
) -> tuple[Dataset, Dataset]:
    """Random split stratified by reader.

    A reader with ``n`` distinct books keeps ``round(n * (1 - test_fraction))``
    of them in train, clipped to ``[1, n - 1]`` so that a reader with two or
    more books has at least one on each side; a reader with one book keeps it
    in train. Which books go to test is drawn uniformly: every pair gets a
    uniform random number in data-set order (one ``default_rng(seed)`` draw)
    and a reader's pairs with the largest ranks go to test.

    Parameters
    ----------
    dataset : Dataset
    test_fraction : float, default 0.2
        Share of each reader's books held out; in (0, 1).
    seed : int, default 42

    Returns
    -------
    train, test : Dataset

    Raises
    ------
    ValueError
        If ``test_fraction`` is outside (0, 1).
    """
    _check_fraction(test_fraction)
    pair_of_row, first_row = _pairs(dataset)
    pair_user = dataset.users[first_row].astype(np.int64)
    draw = np.random.default_rng(seed).random(len(first_row))

    # rank of each pair among its reader's pairs, by the random draw
    order = np.lexsort((draw, pair_user))
    counts = np.bincount(pair_user, minlength=dataset.n_users)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order)) - starts[pair_user[order]]

    # how many pairs each reader keeps in train
    n = counts[pair_user]
    keep = np.round(n * (1.0 - test_fraction)).astype(np.int64)
    keep = np.where(n >= 2, np.clip(keep, 1, n - 1), n)
    test_pair = rank >= keep

    test_row = test_pair[pair_of_row]
    logger.debug(
        "per-reader split: %s train rows, %s test rows",
        int((~test_row).sum()),
        int(test_row.sum()),
    )
    return dataset.subset(~test_row), dataset.subset(test_row)


def time_split(
    dataset: Dataset, test_fraction: float = 0.2, cut: int | None = None
) -> tuple[Dataset, Dataset]:
    """Global time cut: rows before ``cut`` train, rows at or after it test.

    Rows of a pair that already appears before the cut are dropped from test
    (re-reading a known book is not a prediction), so no pair is on both
    sides. Readers are not stratified: some have no test rows, some (new
    readers) no train rows.

    Parameters
    ----------
    dataset : Dataset
        Must have timestamps.
    test_fraction : float, default 0.2
        When ``cut`` is not given, the cut is the timestamp at this quantile
        from the end; in (0, 1).
    cut : int, optional
        Unix seconds of the cut.

    Returns
    -------
    train, test : Dataset
        ``max(train.timestamps) < min(test.timestamps)``.

    Raises
    ------
    ValueError
        If the data set has no timestamps or ``test_fraction`` is outside (0, 1).
    """
    if not dataset.has_timestamps:
        raise ValueError(
            f"time_split needs a timestamp on every row; {dataset.name!r} has none"
        )
    if cut is None:
        _check_fraction(test_fraction)
        cut = int(np.quantile(dataset.timestamps, 1.0 - test_fraction))
    train_row = dataset.timestamps < cut

    # drop test rows whose pair is already in train
    pair_of_row, _ = _pairs(dataset)
    seen = np.zeros(int(pair_of_row.max()) + 1, dtype=bool)
    seen[pair_of_row[train_row]] = True
    test_row = ~train_row & ~seen[pair_of_row]
    logger.debug("time split at %s: %s test rows", cut, int(test_row.sum()))
    return dataset.subset(train_row), dataset.subset(test_row)


def leave_last_out(dataset: Dataset) -> tuple[Dataset, Dataset]:
    """Each reader's latest book to test, the rest to train.

    The latest book is that of the reader's newest row (ties: the later row in
    the data set); all rows of that (reader, book) pair go to test. A reader
    with a single distinct book keeps it in train.

    Returns
    -------
    train, test : Dataset
        At most one distinct book per reader in test.

    Raises
    ------
    ValueError
        If the data set has no timestamps.
    """
    if not dataset.has_timestamps:
        raise ValueError(
            f"leave_last_out needs a timestamp on every row; {dataset.name!r} has none"
        )
    pair_of_row, first_row = _pairs(dataset)
    users = dataset.users.astype(np.int64)

    # the last row of each reader in (timestamp, row) order
    rows = np.arange(dataset.n_interactions)
    order = np.lexsort((rows, dataset.timestamps, users))
    is_last = np.ones(len(order), dtype=bool)
    is_last[:-1] = users[order[1:]] != users[order[:-1]]
    last_row = order[is_last]

    # readers with two or more distinct books give that pair to test
    pairs_per_user = np.bincount(users[first_row], minlength=dataset.n_users)
    eligible = pairs_per_user[users[last_row]] >= 2
    test_pair = np.zeros(len(first_row), dtype=bool)
    test_pair[pair_of_row[last_row[eligible]]] = True

    test_row = test_pair[pair_of_row]
    return dataset.subset(~test_row), dataset.subset(test_row)
