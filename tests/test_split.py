"""Splits: no (reader, book) pair on both sides, and each rule kept."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from bookverse.models.dataset import Catalogue, Dataset
from bookverse.training.split import leave_last_out, per_user_split, time_split

N_USERS, N_ITEMS = 40, 30


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    """Readers with 1 to 15 books, a few pairs repeated, timestamps all set."""
    rng = np.random.default_rng(7)
    users, items = [], []
    for user in range(N_USERS):
        n = 1 + user % 15
        picks = rng.choice(N_ITEMS, size=n, replace=False).tolist()
        picks += picks[:2]  # repeated pairs
        users += [user] * len(picks)
        items += picks
    order = rng.permutation(len(users))
    n = len(users)
    catalogue = Catalogue(
        item_ids=np.array([str(i) for i in range(N_ITEMS)]),
        titles=[""] * N_ITEMS,
        authors=[""] * N_ITEMS,
        years=np.zeros(N_ITEMS, np.int32),
        publishers=[""] * N_ITEMS,
        genres=[()] * N_ITEMS,
    )
    return Dataset(
        "split",
        np.array([str(u) for u in range(N_USERS)]),
        catalogue,
        np.array(users, np.int32)[order],
        np.array(items, np.int32)[order],
        np.zeros(n, np.float32),
        rng.integers(1_000, 1_000_000, size=n),
        (1.0, 5.0),
        "plain",
    )


def pairs(data: Dataset) -> set[tuple[int, int]]:
    return set(zip(data.users.tolist(), data.items.tolist(), strict=True))


def distinct_per_user(data: Dataset) -> np.ndarray:
    return np.asarray((data.user_items() > 0).sum(axis=1)).ravel()


def assert_partition(data: Dataset, train: Dataset, test: Dataset) -> None:
    assert not pairs(train) & pairs(test)
    assert train.n_interactions + test.n_interactions <= data.n_interactions
    assert pairs(train) | pairs(test) <= pairs(data)


def test_per_user_split_keeps_each_reader_on_both_sides(dataset: Dataset) -> None:
    train, test = per_user_split(dataset, test_fraction=0.25, seed=3)
    assert_partition(dataset, train, test)
    assert train.n_interactions + test.n_interactions == dataset.n_interactions

    total = distinct_per_user(dataset)
    in_train, in_test = distinct_per_user(train), distinct_per_user(test)
    several = total >= 2
    assert np.all(in_train[several] >= 1) and np.all(in_test[several] >= 1)
    assert np.all(in_test[~several] == 0)
    expected = np.clip(np.round(total * 0.75), 1, np.maximum(total - 1, 1))
    np.testing.assert_array_equal(in_train[several], expected[several])


def test_per_user_split_is_reproducible(dataset: Dataset) -> None:
    first = per_user_split(dataset, 0.2, seed=5)[1]
    again = per_user_split(dataset, 0.2, seed=5)[1]
    other = per_user_split(dataset, 0.2, seed=6)[1]
    assert pairs(first) == pairs(again)
    assert pairs(first) != pairs(other)


def test_per_user_split_refuses_a_bad_fraction(dataset: Dataset) -> None:
    with pytest.raises(ValueError, match=r"test_fraction must be in \(0, 1\), got 1"):
        per_user_split(dataset, test_fraction=1)


def test_time_split_cuts_once_in_time(dataset: Dataset) -> None:
    train, test = time_split(dataset, test_fraction=0.3)
    assert_partition(dataset, train, test)
    assert train.timestamps.max() <= test.timestamps.min()
    assert 0.15 < test.n_interactions / dataset.n_interactions < 0.35

    cut = int(np.median(dataset.timestamps))
    train, test = time_split(dataset, cut=cut)
    assert train.timestamps.max() < cut <= test.timestamps.min()


def test_time_split_needs_timestamps(dataset: Dataset) -> None:
    undated = replace(dataset, timestamps=np.zeros_like(dataset.timestamps))
    with pytest.raises(ValueError, match="time_split needs a timestamp"):
        time_split(undated)


def test_leave_last_out_holds_out_the_latest_book(dataset: Dataset) -> None:
    train, test = leave_last_out(dataset)
    assert_partition(dataset, train, test)
    assert train.n_interactions + test.n_interactions == dataset.n_interactions

    total = distinct_per_user(dataset)
    in_test = distinct_per_user(test)
    np.testing.assert_array_equal(in_test, (total >= 2).astype(int))
    for user in np.flatnonzero(in_test):
        rows = dataset.users == user
        latest = dataset.items[rows][np.argmax(dataset.timestamps[rows])]
        assert set(test.items[test.users == user].tolist()) == {latest}
