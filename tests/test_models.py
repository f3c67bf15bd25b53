"""One suite that every model family passes, then each family's own checks."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from bookverse.models.als import ALS
from bookverse.models.base import Model, UserProfile
from bookverse.models.content import ContentTFIDF
from bookverse.models.dataset import Catalogue, Dataset
from bookverse.models.item_knn import ItemKNN
from bookverse.models.popularity import Popularity
from bookverse.models.registry import MODEL_CLASSES, create_model, load_model

N_USERS, N_ITEMS, N_GROUPS = 90, 48, 3
EMPTY_TEXT_ITEM = N_ITEMS - 1

SMALL_PARAMS: dict[str, dict[str, Any]] = {
    "popularity": {"half_life_days": 10.0},
    "quality": {"prior_count": 5.0},
    "als": {"factors": 8, "iterations": 10, "num_threads": 1},
    "item_knn": {"k": 10, "num_threads": 1},
    "content": {"max_features": 500},
    "ease": {"regularization": 10.0},
    "bpr": {"factors": 8, "iterations": 20, "num_threads": 1},
    "user_knn": {"k": 10},
    "explicit_mf": {"factors": 4, "epochs": 5},
    "neural": {
        "embedding_dim": 8,
        "layers": [16, 8],
        "epochs": 10,
        "batch_size": 64,
        "learning_rate": 0.01,
    },
}
# families whose fit needs an optional extra: name -> module it imports
NEEDS = {"neural": "tensorflow", "explicit_mf": "tensorflow"}


def make_dataset(seed: int = 0) -> Dataset:
    """Readers who each favour one of three groups of books (genres).

    Item ``i`` belongs to group ``i % 3``; its text names its group's genre,
    except ``EMPTY_TEXT_ITEM`` whose text is only stop words (an all-zero
    TF-IDF row).
    """
    rng = np.random.default_rng(seed)
    genres = ("mystery", "romance", "science fiction")
    group_of_item = np.arange(N_ITEMS) % N_GROUPS
    users, items, ratings = [], [], []
    for user in range(N_USERS):
        favourite = user % N_GROUPS
        liked = np.flatnonzero(group_of_item == favourite)
        n_liked = rng.integers(4, 10)
        picks = rng.choice(liked, size=n_liked, replace=False).tolist()
        picks += rng.choice(N_ITEMS, size=2, replace=False).tolist()
        users += [user] * len(picks)
        items += picks
        # liked books rated high, the two random ones low (scale 1-5)
        ratings += [5.0] * n_liked + [2.0, 2.0]
    n = len(users)
    titles = [f"Book {i} of the {genres[g]}" for i, g in enumerate(group_of_item)]
    authors = [f"Author {i % 7}" for i in range(N_ITEMS)]
    item_genres = [(genres[g],) for g in group_of_item]
    titles[EMPTY_TEXT_ITEM], authors[EMPTY_TEXT_ITEM] = "the of and", ""
    item_genres[EMPTY_TEXT_ITEM] = ()
    catalogue = Catalogue(
        item_ids=np.array([f"b{i}" for i in range(N_ITEMS)]),
        titles=titles,
        authors=authors,
        years=np.full(N_ITEMS, 2000, dtype=np.int32),
        publishers=["" for _ in range(N_ITEMS)],
        genres=item_genres,
    )
    return Dataset(
        name="synthetic",
        user_ids=np.array([f"u{u}" for u in range(N_USERS)]),
        catalogue=catalogue,
        users=np.asarray(users, dtype=np.int32),
        items=np.asarray(items, dtype=np.int32),
        ratings=np.asarray(ratings, dtype=np.float32),
        timestamps=rng.integers(1_600_000_000, 1_700_000_000, size=n),
        rating_scale=(1.0, 10.0),
        id_scheme="plain",
    )


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return make_dataset()


@pytest.fixture(scope="module", params=sorted(MODEL_CLASSES))
def fitted(request: pytest.FixtureRequest, dataset: Dataset) -> Model:
    if request.param in NEEDS:
        pytest.importorskip(NEEDS[request.param])
    return create_model(request.param, SMALL_PARAMS[request.param]).fit(dataset)


def training_profile(dataset: Dataset, user: int) -> UserProfile:
    row = dataset.user_items()[user]
    return UserProfile(user, row.indices.astype(np.int64), row.data.copy())


# one suite, every model -------------------------------------------------------


def test_every_family_is_registered() -> None:
    assert set(MODEL_CLASSES) == set(SMALL_PARAMS)
    for name, cls in MODEL_CLASSES.items():
        assert cls.name == name


def test_score_whole_catalogue(fitted: Model, dataset: Dataset) -> None:
    for profile in (training_profile(dataset, 3), UserProfile.empty()):
        scores = fitted.score(profile)
        assert scores.shape == (dataset.n_items,)
        assert scores.dtype == np.float32
        assert np.all(np.isfinite(scores))


def test_score_of_a_subset_equals_the_whole(fitted: Model, dataset: Dataset) -> None:
    profile = training_profile(dataset, 5)
    items = np.array([7, 0, 31, 7, EMPTY_TEXT_ITEM], dtype=np.int64)
    np.testing.assert_allclose(
        fitted.score(profile, items), fitted.score(profile)[items], rtol=1e-6
    )


def test_score_users_matches_score(fitted: Model, dataset: Dataset) -> None:
    user_items = dataset.user_items()
    users = np.array([0, 4, 17, 88])
    batch = fitted.score_users(user_items, users)
    assert batch.shape == (len(users), dataset.n_items)
    assert batch.dtype == np.float32
    for row, user in zip(batch, users, strict=True):
        expected = fitted.score(training_profile(dataset, int(user)))
        np.testing.assert_allclose(row, expected, rtol=1e-5, atol=1e-6)


def test_save_load_round_trip(fitted: Model, dataset: Dataset, tmp_path: Path) -> None:
    files = fitted.save(tmp_path)
    assert sorted(files) == sorted(p.name for p in tmp_path.iterdir())
    loaded = load_model(fitted.name, tmp_path, fitted.params())
    assert loaded.params() == fitted.params()

    profile = training_profile(dataset, 11)
    folded = UserProfile(None, profile.items, profile.weights)
    for p in (profile, folded):
        np.testing.assert_array_equal(loaded.score(p), fitted.score(p))
    users = np.arange(10)
    np.testing.assert_array_equal(
        loaded.score_users(dataset.user_items(), users),
        fitted.score_users(dataset.user_items(), users),
    )


def test_load_never_unpickles(
    fitted: Model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fitted.save(tmp_path)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("load must not unpickle")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    load_model(fitted.name, tmp_path, fitted.params())
    for path in tmp_path.glob("*.npy"):
        np.load(path, allow_pickle=False)


def test_load_names_a_missing_file(fitted: Model, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.(npy|npz): cannot read"):
        load_model(fitted.name, tmp_path, fitted.params())


def test_non_finite_weights_never_give_nan(fitted: Model, dataset: Dataset) -> None:
    items = np.array([1, 4, 7], dtype=np.int64)
    weights = np.array([np.nan, np.inf, 1.0], dtype=np.float32)
    scores = fitted.score(UserProfile(None, items, weights))
    assert np.all(np.isfinite(scores))


def test_out_of_range_history_is_refused(fitted: Model, dataset: Dataset) -> None:
    if fitted.name == "popularity":
        pytest.skip("popularity ignores the history")
    bad = UserProfile(None, np.array([dataset.n_items]), np.ones(1, np.float32))
    with pytest.raises(ValueError, match=r"profile\.items"):
        fitted.score(bad)


def test_unfitted_model_says_so() -> None:
    for cls in MODEL_CLASSES.values():
        with pytest.raises(RuntimeError, match="not fitted"):
            cls().score(UserProfile.empty())


def test_unknown_name_and_params_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="model name must be one of"):
        load_model("nope", tmp_path, {})
    with pytest.raises(ValueError, match="params of model 'als'"):
        create_model("als", {"factorz": 3})


# popularity -------------------------------------------------------------------


def test_popularity_ranking_counts_distinct_readers(dataset: Dataset) -> None:
    model = Popularity().fit(dataset)
    counts = np.asarray(dataset.user_items().sum(axis=0)).ravel()
    ranking = model.ranking(5)
    assert len(ranking) == 5
    assert np.all(np.diff(counts[ranking]) <= 0)
    assert counts[ranking[0]] == counts.max()
    assert len(model.ranking(10_000)) == dataset.n_items


def test_popularity_trending_favours_recent_items(dataset: Dataset) -> None:
    timestamps = dataset.timestamps.copy()
    timestamps[dataset.items == 5] = timestamps.max()
    timestamps[dataset.items != 5] -= 400 * 86_400
    recent = Dataset(**{**dataset.__dict__, "timestamps": timestamps})
    model = Popularity(half_life_days=7.0).fit(recent)
    assert model.ranking(1, trending=True)[0] == 5


def test_popularity_refuses_a_bad_half_life(dataset: Dataset) -> None:
    with pytest.raises(ValueError, match="half_life_days must be > 0, got 0"):
        Popularity(half_life_days=0).fit(dataset)


# ALS --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def als(dataset: Dataset) -> ALS:
    return ALS(factors=8, iterations=30, num_threads=1).fit(dataset)


def test_als_fold_in_reproduces_training_factors(als: ALS, dataset: Dataset) -> None:
    cosines = []
    for user in range(0, N_USERS, 7):
        profile = training_profile(dataset, user)
        folded = als.fold_in(profile.items, profile.weights)
        stored = als.user_factors[user]
        cosines.append(
            folded @ stored / (np.linalg.norm(folded) * np.linalg.norm(stored))
        )
    assert min(cosines) > 0.99


def test_als_fold_in_reacts_to_new_books(als: ALS, dataset: Dataset) -> None:
    profile = training_profile(dataset, 0)
    grown = UserProfile(
        None,
        np.append(profile.items, [1, 4, 7, 10, 13]),
        np.ones(len(profile.items) + 5, np.float32),
    )
    assert not np.allclose(als.score(grown), als.score(profile))


def test_als_candidates_guard_faiss_padding(als: ALS, dataset: Dataset) -> None:
    profile = training_profile(dataset, 2)
    items, scores = als.candidates(profile, dataset.n_items + 50)
    assert len(items) == dataset.n_items
    assert np.all(items >= 0)
    assert sorted(items.tolist()) == list(range(dataset.n_items))
    np.testing.assert_allclose(scores, als.score(profile, items), rtol=1e-4)
    assert np.all(np.diff(scores) <= 1e-6)
    empty_items, _ = als.candidates(UserProfile.empty(), 5)
    assert len(empty_items) == 0


def test_als_similar_items_leave_the_item_out(als: ALS) -> None:
    items, scores = als.similar_items(3, 5)
    assert 3 not in items
    assert len(items) == 5
    assert np.all(scores <= 1.0 + 1e-5)
    with pytest.raises(ValueError, match="item must be in"):
        als.similar_items(N_ITEMS, 5)


def test_als_refuses_a_bad_factor_count(dataset: Dataset) -> None:
    with pytest.raises(ValueError, match="factors must be >= 1, got 0"):
        ALS(factors=0).fit(dataset)


# item neighbours --------------------------------------------------------------


def test_item_knn_keeps_k_neighbours_without_self(dataset: Dataset) -> None:
    model = ItemKNN(k=5, num_threads=1).fit(dataset)
    similarity = model.similarity_
    assert isinstance(similarity, sp.csr_matrix)
    assert np.all(similarity.diagonal() == 0)
    assert np.diff(similarity.indptr).max() <= 5


def test_item_knn_neighbours_and_reason(dataset: Dataset) -> None:
    model = ItemKNN(k=10, num_threads=1).fit(dataset)
    items, scores = model.neighbours(np.array([0, 3]), 4)
    assert 0 not in items and 3 not in items
    assert np.all(np.diff(scores) <= 0)

    profile = UserProfile(None, np.array([0, 1]), np.ones(2, np.float32))
    candidate = int(items[0])
    reason = model.top_contributor(profile, candidate)
    column = model.similarity_[[0, 1], candidate].toarray().ravel()
    assert reason == [0, 1][int(np.argmax(column))]
    lonely = UserProfile(None, np.zeros(0, np.int64), np.zeros(0, np.float32))
    assert model.top_contributor(lonely, candidate) is None


# content ----------------------------------------------------------------------


def test_content_all_zero_text_never_gives_nan(dataset: Dataset) -> None:
    model = ContentTFIDF().fit(dataset)
    assert model.tfidf_ is not None
    assert model.tfidf_[EMPTY_TEXT_ITEM].nnz == 0

    only_empty = UserProfile(None, np.array([EMPTY_TEXT_ITEM]), np.ones(1, np.float32))
    np.testing.assert_array_equal(model.score(only_empty), 0.0)
    scores = model.score(training_profile(dataset, 1))
    assert np.all(np.isfinite(scores))
    assert scores[EMPTY_TEXT_ITEM] == 0.0

    items, _ = model.similar_to(np.array([0, 3]), N_ITEMS)
    assert EMPTY_TEXT_ITEM not in items
    assert len(model.similar_to(np.array([EMPTY_TEXT_ITEM]), 5)[0]) == 0


def test_content_keeps_short_and_numeric_tokens() -> None:
    catalogue = Catalogue(
        item_ids=np.array(["a", "b", "c"]),
        titles=["1984", "V", "Война и мир"],
        authors=["", "", ""],
        years=np.zeros(3, dtype=np.int32),
        publishers=["", "", ""],
        genres=[(), (), ()],
    )
    data = Dataset(
        "tokens",
        np.array(["u"]),
        catalogue,
        np.zeros(1, np.int32),
        np.zeros(1, np.int32),
        np.zeros(1, np.float32),
        np.zeros(1, np.int64),
        (1.0, 5.0),
        "plain",
    )
    model = ContentTFIDF().fit(data)
    assert model.tfidf_ is not None
    assert np.all(np.diff(model.tfidf_.indptr) > 0)


def test_content_similar_to_prefers_the_same_genre(dataset: Dataset) -> None:
    model = ContentTFIDF().fit(dataset)
    items, scores = model.similar_to(np.array([0, 3, 6]), 5)
    assert np.all(items % N_GROUPS == 0)
    assert np.all(scores >= model.min_similarity)


def _side_catalogue() -> Dataset:
    """Four books described by genres and authors only."""
    catalogue = Catalogue(
        item_ids=np.array(["a", "b", "c", "d"]),
        titles=["", "", "", ""],
        authors=["Ann Lee", "ANN LEE ", "Bo Ma", ""],
        years=np.zeros(4, dtype=np.int32),
        publishers=["", "", "", ""],
        genres=[("crime", "drama"), ("crime",), ("drama", "war", "crime"), ()],
    )
    return Dataset(
        "sides",
        np.array(["u"]),
        catalogue,
        np.zeros(1, np.int32),
        np.zeros(1, np.int32),
        np.zeros(1, np.float32),
        np.zeros(1, np.int64),
        (1.0, 5.0),
        "plain",
    )


def test_content_genre_jaccard_worked_by_hand() -> None:
    model = ContentTFIDF(text_weight=0.0, genre_weight=1.0, author_weight=0.0)
    model.fit(_side_catalogue())
    # history: book a {crime, drama}, weight 1:
    # J(a,a) = 1, J(b,a) = 1/2, J(c,a) = 2/3, J(d,a) = 0 (d has no genres)
    scores = model.score(UserProfile(None, np.array([0]), np.array([1.0])))
    np.testing.assert_allclose(scores, [1.0, 0.5, 2 / 3, 0.0], rtol=1e-6)

    # history a (weight 1) and b (weight 3): c scores (2/3 * 1 + 1/3 * 3) / 4
    two = UserProfile(None, np.array([0, 1]), np.array([1.0, 3.0]))
    expected_c = (2 / 3 * 1 + 1 / 3 * 3) / 4
    np.testing.assert_allclose(model.score(two)[2], expected_c, rtol=1e-6)

    # mixed with text, each part counts by its weight
    mixed = ContentTFIDF(text_weight=1.0, genre_weight=1.0, author_weight=0.0)
    mixed.fit(_side_catalogue())
    text = ContentTFIDF(text_weight=1.0, genre_weight=0.0, author_weight=0.0)
    text.fit(_side_catalogue())
    one = UserProfile(None, np.array([0]), np.array([1.0]))
    np.testing.assert_allclose(
        mixed.score(one), (text.score(one) + scores) / 2, rtol=1e-5
    )


def test_content_author_match_is_case_blind_and_skips_unknown() -> None:
    model = ContentTFIDF(text_weight=0.0, genre_weight=0.0, author_weight=1.0)
    model.fit(_side_catalogue())
    # history: a (Ann Lee) weight 1, c (Bo Ma) weight 1; "ANN LEE " is Ann Lee
    profile = UserProfile(None, np.array([0, 2]), np.array([1.0, 1.0]))
    np.testing.assert_allclose(model.score(profile), [0.5, 0.5, 0.5, 0.0])


def test_content_side_signals_survive_save_and_load(tmp_path: Path) -> None:
    model = ContentTFIDF(genre_weight=0.7, author_weight=0.3).fit(_side_catalogue())
    files = model.save(tmp_path)
    loaded = ContentTFIDF.load(tmp_path, model.params())
    profile = UserProfile(None, np.array([1]), np.array([2.0]))
    np.testing.assert_array_equal(model.score(profile), loaded.score(profile))
    assert len(files) == 3


def test_content_retrieval_is_capped_by_max_count(dataset: Dataset) -> None:
    model = ContentTFIDF(max_count=3, min_similarity=0.0).fit(dataset)
    items, _ = model.similar_to(np.array([0]), 50)
    assert len(items) == 3


def test_content_refuses_all_zero_weights(dataset: Dataset) -> None:
    model = ContentTFIDF(text_weight=0.0, genre_weight=0.0, author_weight=0.0)
    with pytest.raises(ValueError, match="the sum of the weights must be > 0"):
        model.fit(dataset)
