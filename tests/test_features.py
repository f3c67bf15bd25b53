"""The meta-ranker's feature builder: names, order, missing values."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from bookverse.models.base import UserProfile
from bookverse.models.dataset import Catalogue, Dataset
from bookverse.models.features import (
    RequestContext,
    build_features,
    check_feature_names,
    compute_tables,
    known_features,
    pool_candidates,
    ranks,
)

N_USERS, N_ITEMS = 40, 24
GENRES = ("mystery", "romance", "poetry")


def small_dataset(seed: int = 0) -> Dataset:
    """Readers favouring one of three genres; authors, years, times, ages."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    for user in range(N_USERS):
        liked = np.flatnonzero(np.arange(N_ITEMS) % 3 == user % 3)
        picks = rng.choice(liked, size=5, replace=False)
        users += [user] * len(picks)
        items += picks.tolist()
    catalogue = Catalogue(
        item_ids=np.array([f"b{i}" for i in range(N_ITEMS)]),
        titles=[f"title {i}" for i in range(N_ITEMS)],
        authors=[f"author {i % 4}" if i % 5 else "" for i in range(N_ITEMS)],
        years=np.array([1990 + i if i % 6 else 0 for i in range(N_ITEMS)], np.int32),
        publishers=[f"house {i % 2}" for i in range(N_ITEMS)],
        genres=[(GENRES[i % 3],) for i in range(N_ITEMS)],
    )
    n = len(users)
    return Dataset(
        name="small",
        user_ids=np.array([f"u{u}" for u in range(N_USERS)]),
        catalogue=catalogue,
        users=np.asarray(users, np.int32),
        items=np.asarray(items, np.int32),
        ratings=rng.integers(0, 6, size=n).astype(np.float32),
        timestamps=rng.integers(1_600_000_000, 1_650_000_000, size=n),
        rating_scale=(1.0, 5.0),
        id_scheme="plain",
        extras={
            "user_age": np.linspace(15, 70, N_USERS).astype(np.float32),
            "user_gender": ["F" if u % 2 else "M" for u in range(N_USERS)],
        },
    )


def profile_of(dataset: Dataset, user: int) -> UserProfile:
    history = dataset.user_items()[user].indices.astype(np.int64)
    return UserProfile(user, history, np.ones(len(history), np.float32))


def test_columns_follow_the_order_of_names() -> None:
    dataset = small_dataset()
    tables = compute_tables(dataset)
    items = np.array([0, 3, 7, 11])
    scores = {"ease": np.array([0.1, 0.5, 0.5, -1.0], np.float32)}
    names = ["ease_rank", "book_count", "genre_overlap", "ease_norm", "hour"]
    profile = profile_of(dataset, 2)
    forward = build_features(names, items, scores, profile, tables, 2)
    backward = build_features(names[::-1], items, scores, profile, tables, 2)
    assert forward.dtype == np.float32 and forward.shape == (4, 5)
    np.testing.assert_array_equal(forward[:, ::-1], backward)
    np.testing.assert_array_equal(forward[:, 0], [3, 1, 1, 4])
    np.testing.assert_allclose(forward[:, 3], [1.1 / 1.5, 1, 1, 0], rtol=1e-6)


def test_missing_features_are_nan_never_invented() -> None:
    dataset = small_dataset()
    bare = replace(
        dataset,
        catalogue=replace(
            dataset.catalogue,
            genres=[() for _ in range(N_ITEMS)],
            authors=[""] * N_ITEMS,
        ),
        timestamps=np.zeros(dataset.n_interactions, np.int64),
        extras={},
    )
    tables = compute_tables(bare)
    names = [
        "genre_overlap",
        "reader_genre_entropy",
        "author_loyalty",
        "author_count",
        "day_gap",
        "book_trend",
        "reader_age",
        "reader_gender",
        "hour",
        "device",
    ]
    features = build_features(
        names, np.arange(5), {}, profile_of(bare, 1), tables, reader=1
    )
    assert np.isnan(features).all()
    for name in names[:-2]:
        assert not tables.provides(name), name
    assert tables.provides("publisher_loyalty")


def test_present_features_have_values_and_book_gaps_stay_nan() -> None:
    dataset = small_dataset()
    tables = compute_tables(dataset)
    names = ["book_year", "author_loyalty", "reader_age", "hour", "weekday"]
    items = np.array([0, 1, 5, 6])  # 0: no year, no author; 5: no author
    context = RequestContext(hour=21, weekday=4, device="phone")
    features = build_features(
        names, items, {}, profile_of(dataset, 3), tables, 3, context
    )
    assert np.isnan(features[0, 0]) and np.isnan(features[0, 1])
    assert np.isnan(features[2, 1]) and np.isfinite(features[1, 1])
    np.testing.assert_array_equal(features[:, 3], 21)
    np.testing.assert_array_equal(features[:, 4], 4)

    # an unknown reader has no stored statistics
    unknown = build_features(names, items, {}, profile_of(dataset, 3), tables)
    assert np.isnan(unknown[:, 2]).all()
    assert np.isfinite(features[:, 2]).all()


def test_unknown_names_and_scores_are_refused() -> None:
    dataset = small_dataset()
    tables = compute_tables(dataset)
    profile = profile_of(dataset, 0)
    with pytest.raises(ValueError, match="'shoe_size'"):
        build_features(["shoe_size"], np.arange(3), {}, profile, tables)
    with pytest.raises(ValueError, match="'als'"):
        build_features(["als_rank"], np.arange(3), {}, profile, tables)
    with pytest.raises(ValueError, match="'ease_norm' is listed twice"):
        check_feature_names(["ease_norm", "ease_norm"], ["ease"])
    with pytest.raises(ValueError, match="'bpr_rank'"):
        check_feature_names(["bpr_rank"], ["ease"])
    assert "item_knn_rank" in known_features(["item_knn"])


def test_ranks_ignore_candidate_order() -> None:
    scores = np.array([0.3, 0.9, 0.3, np.nan, 0.1], np.float32)
    np.testing.assert_array_equal(ranks(scores), [2, 1, 2, 5, 4])
    order = np.array([4, 2, 0, 3, 1])
    np.testing.assert_array_equal(ranks(scores[order]), ranks(scores)[order])


def test_pool_leaves_seen_books_out() -> None:
    full = {
        "a": np.array([5, 4, 3, 2, 1, 0], np.float32),
        "b": np.array([0, 1, 2, 3, 4, 5], np.float32),
    }
    np.testing.assert_array_equal(
        pool_candidates(full, np.array([0, 5]), 2), [1, 2, 3, 4]
    )
    with pytest.raises(ValueError, match="pool must be >= 1"):
        pool_candidates(full, np.array([]), 0)
