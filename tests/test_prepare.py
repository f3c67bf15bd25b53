"""Preparation: repeated pairs, the k-core filter, slices and the fingerprint."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from bookverse.models.dataset import Catalogue, Dataset
from bookverse.training.prepare import (
    dataset_fingerprint,
    drop_duplicate_pairs,
    first_users,
    kcore,
    prepare,
)


def make_dataset(
    pairs: list[tuple[int, int]],
    n_users: int,
    n_items: int,
    ratings: list[float] | None = None,
    timestamps: list[int] | None = None,
) -> Dataset:
    """Readers ``u0..``, books ``b0..`` titled ``T0..``, with aligned extras."""
    users, items = zip(*pairs, strict=True) if pairs else ((), ())
    n = len(pairs)
    return Dataset(
        name="tiny",
        user_ids=np.array([f"u{u}" for u in range(n_users)]),
        catalogue=Catalogue(
            item_ids=np.array([f"b{i}" for i in range(n_items)]),
            titles=[f"T{i}" for i in range(n_items)],
            authors=[f"A{i}" for i in range(n_items)],
            years=np.arange(2000, 2000 + n_items, dtype=np.int32),
            publishers=[""] * n_items,
            genres=[(f"g{i}",) for i in range(n_items)],
        ),
        users=np.array(users, dtype=np.int32),
        items=np.array(items, dtype=np.int32),
        ratings=np.array(ratings or [1.0] * n, dtype=np.float32),
        timestamps=np.array(timestamps or [0] * n, dtype=np.int64),
        rating_scale=(1.0, 5.0),
        id_scheme="plain",
        extras={
            "user_age": np.arange(n_users, dtype=np.float32) + 20,
            "user_country": [f"c{u}" for u in range(n_users)],
            "item_has_metadata": np.ones(n_items, dtype=bool),
            "source": "hand-made",
        },
    )


def pairs_of(dataset: Dataset) -> set[tuple[str, str]]:
    return {
        (str(dataset.user_ids[u]), str(dataset.catalogue.item_ids[i]))
        for u, i in zip(dataset.users, dataset.items, strict=True)
    }


# u0 reads b0 b1 b2, u1 reads b0 b1, u2 reads b2 b3, u3 reads b0.
# 2-core by hand: round 1 drops u3 (1 book) and b3 (1 reader); u2 is left with
# b2 alone, so round 2 drops u2 and then b2 (u0 only); round 3 changes nothing.
CASCADE = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 2), (2, 3), (3, 0)]


def test_kcore_reaches_the_hand_worked_fixed_point() -> None:
    core = kcore(make_dataset(CASCADE, 4, 4), min_user=2, min_item=2)
    assert pairs_of(core) == {("u0", "b0"), ("u0", "b1"), ("u1", "b0"), ("u1", "b1")}
    assert core.user_ids.tolist() == ["u0", "u1"]
    assert core.catalogue.item_ids.tolist() == ["b0", "b1"]
    # compact indices, metadata and extras cut to match
    assert sorted(core.users.tolist()) == [0, 0, 1, 1]
    assert sorted(core.items.tolist()) == [0, 0, 1, 1]
    assert core.catalogue.titles == ["T0", "T1"]
    assert core.catalogue.genres == [("g0",), ("g1",)]
    assert core.catalogue.years.tolist() == [2000, 2001]
    assert core.extras["user_age"].tolist() == [20.0, 21.0]
    assert core.extras["user_country"] == ["c0", "c1"]
    assert core.extras["item_has_metadata"].tolist() == [True, True]
    assert core.extras["source"] == "hand-made"


def test_kcore_thresholds_are_separate() -> None:
    # readers need 3 books, books need 1 reader: only u0 stays, with b0-b2
    core = kcore(make_dataset(CASCADE, 4, 4), min_user=3, min_item=1)
    assert pairs_of(core) == {("u0", "b0"), ("u0", "b1"), ("u0", "b2")}
    assert core.n_items == 3


def test_kcore_can_empty_a_dataset() -> None:
    core = kcore(make_dataset(CASCADE, 4, 4), min_user=5, min_item=5)
    assert (core.n_interactions, core.n_users, core.n_items) == (0, 0, 0)
    assert core.extras["user_country"] == []


def test_kcore_refuses_a_threshold_below_one() -> None:
    with pytest.raises(ValueError, match="min_item must be >= 1, got 0"):
        kcore(make_dataset(CASCADE, 4, 4), min_user=2, min_item=0)


def test_kcore_on_random_data_is_a_maximal_fixed_point() -> None:
    rng = np.random.default_rng(7)
    pairs = sorted({(int(u), int(i)) for u, i in rng.integers(0, 60, (900, 2))})
    data = make_dataset(pairs, 60, 60)
    core = kcore(data, 4, 3)

    assert np.bincount(core.users).min() >= 4
    assert np.bincount(core.items).min() >= 3
    assert pairs_of(kcore(core, 4, 3)) == pairs_of(core)

    # the same as removing readers and books in turns, one kind at a time
    kept = set(pairs)
    while True:
        users = {u for u, _ in kept if sum(x == u for x, _ in kept) >= 4}
        step = {(u, i) for u, i in kept if u in users}
        items = {i for _, i in step if sum(y == i for _, y in step) >= 3}
        step = {(u, i) for u, i in step if i in items}
        if step == kept:
            break
        kept = step
    assert pairs_of(core) == {(f"u{u}", f"b{i}") for u, i in kept}


def test_kcore_counts_every_row_so_duplicates_count_twice() -> None:
    data = make_dataset([(0, 0), (0, 0), (1, 0)], 2, 1)
    assert kcore(data, 1, 3).n_interactions == 3
    assert kcore(drop_duplicate_pairs(data), 1, 3).n_interactions == 0


def test_drop_duplicate_pairs_prefers_explicit_then_latest_then_first() -> None:
    data = make_dataset(
        [(0, 0), (0, 0), (1, 1), (1, 1), (1, 1), (0, 1), (2, 2), (2, 2)],
        3,
        3,
        ratings=[0.0, 4.0, 3.0, 5.0, 0.0, 2.0, 1.0, 2.0],
        timestamps=[9, 1, 10, 20, 30, 5, 7, 7],
    )
    deduped = drop_duplicate_pairs(data)
    # (0,0): explicit over a later implicit; (1,1): the latest explicit;
    # (2,2): same time, the first row; (0,1) alone. Original order kept.
    assert deduped.ratings.tolist() == [4.0, 5.0, 2.0, 1.0]
    assert deduped.timestamps.tolist() == [1, 20, 5, 7]
    assert deduped.users.tolist() == [0, 1, 0, 2]
    assert deduped.n_users == 3 and deduped.n_items == 3


def test_drop_duplicate_pairs_leaves_unique_pairs_alone() -> None:
    data = make_dataset(CASCADE, 4, 4)
    assert drop_duplicate_pairs(data) is data


def test_first_users_slices_and_reindexes() -> None:
    sliced = first_users(make_dataset(CASCADE, 4, 4), 2)
    assert sliced.user_ids.tolist() == ["u0", "u1"]
    assert sliced.catalogue.item_ids.tolist() == ["b0", "b1", "b2"]
    assert sliced.n_interactions == 5
    with pytest.raises(ValueError, match="n_users must be >= 1"):
        first_users(sliced, 0)


def test_misaligned_extra_is_named() -> None:
    data = make_dataset(CASCADE, 4, 4)
    data.extras["user_age"] = np.zeros(3, dtype=np.float32)
    with pytest.raises(ValueError, match=r"extras\['user_age'\] .* \(4\), got 3"):
        kcore(data, 2, 2)


def test_prepare_is_duplicates_then_kcore() -> None:
    data = make_dataset([*CASCADE, (2, 2)], 4, 4)
    # the repeated (u2, b2) would keep u2 and b2 in a plain 2-core
    assert pairs_of(kcore(data, 2, 2)) > pairs_of(prepare(data, 2, 2))
    assert pairs_of(prepare(data, 2, 2)) == pairs_of(
        kcore(make_dataset(CASCADE, 4, 4), 2, 2)
    )


def test_fingerprint_is_stable() -> None:
    data = make_dataset(CASCADE, 4, 4)
    fingerprint = dataset_fingerprint(data)
    assert fingerprint == dataset_fingerprint(make_dataset(CASCADE, 4, 4))
    assert len(fingerprint) == 64 and int(fingerprint, 16) >= 0
    # pinned: a change here changes every published bundle's fingerprint
    assert fingerprint == (
        "05dce1760561d9f26b70e12e68a27441bd650bba026165953be6b49a08e3b599"
    )


def test_fingerprint_ignores_names_and_metadata_only() -> None:
    data = make_dataset(CASCADE, 4, 4)
    fingerprint = dataset_fingerprint(data)
    renamed = replace(
        data,
        name="other",
        catalogue=replace(data.catalogue, titles=["x"] * 4),
        users=data.users.astype(np.int64),
    )
    assert dataset_fingerprint(renamed) == fingerprint

    changed = [
        replace(data, ratings=data.ratings + 1),
        replace(data, timestamps=data.timestamps + 1),
        replace(data, items=data.items[::-1].copy()),
        replace(data, user_ids=np.array(["u0", "u1", "u2", "u9"])),
        replace(data, rating_scale=(1.0, 10.0)),
        replace(data, id_scheme="isbn"),
        data.subset(np.arange(data.n_interactions) > 0),
    ]
    assert len({dataset_fingerprint(d) for d in changed} | {fingerprint}) == 8


def test_fingerprint_separates_ids_unambiguously() -> None:
    data = make_dataset([(0, 0), (1, 0)], 2, 1)
    joined = replace(data, user_ids=np.array(["ab", "c"]))
    split = replace(data, user_ids=np.array(["a", "bc"]))
    assert dataset_fingerprint(joined) != dataset_fingerprint(split)
