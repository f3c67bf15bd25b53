"""EASE, BPR, user neighbours, explicit MF and neural CF on a small data set."""

from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from bookverse.models.base import UserProfile
from bookverse.models.bpr import BPR
from bookverse.models.dataset import Catalogue, Dataset
from bookverse.models.ease import EASE
from bookverse.models.explicit_mf import ExplicitMF, explicit_ratings
from bookverse.models.neural import NeuralCF
from bookverse.models.user_knn import UserKNN

N_USERS, N_ITEMS = 60, 40


def _dataset(seed: int = 0) -> Dataset:
    """Two taste groups of readers over two halves of the catalogue, with
    explicit ratings on two thirds of the interactions and implicit 0 else."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    for user in range(N_USERS):
        group = user % 2
        pool = np.arange(N_ITEMS // 2) + group * (N_ITEMS // 2)
        taken = rng.choice(pool, size=rng.integers(4, 12), replace=False)
        stray = rng.choice(N_ITEMS, size=1)
        for item in np.union1d(taken, stray):
            users.append(user)
            items.append(item)
    n = len(users)
    # readers like their group's books (6-10) and dislike strays (1-4)
    own = np.array(items) // (N_ITEMS // 2) == np.array(users) % 2
    ratings = np.where(own, rng.integers(6, 11, n), rng.integers(1, 5, n))
    ratings = ratings.astype(np.float32)
    ratings[rng.random(n) < 1 / 3] = 0.0
    catalogue = Catalogue(
        item_ids=np.array([f"b{i}" for i in range(N_ITEMS)]),
        titles=[f"Book {i}" for i in range(N_ITEMS)],
        authors=[f"Author {i % 7}" for i in range(N_ITEMS)],
        years=np.full(N_ITEMS, 2000, dtype=np.int32),
        publishers=["" for _ in range(N_ITEMS)],
        genres=[() for _ in range(N_ITEMS)],
    )
    return Dataset(
        name="synthetic",
        user_ids=np.array([f"u{u}" for u in range(N_USERS)]),
        catalogue=catalogue,
        users=np.array(users, dtype=np.int32),
        items=np.array(items, dtype=np.int32),
        ratings=ratings,
        timestamps=np.zeros(n, dtype=np.int64),
        rating_scale=(1.0, 10.0),
        id_scheme="plain",
    )


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return _dataset()


def _profile(
    dataset: Dataset, user: int, known: bool = True, rated: bool = False
) -> UserProfile:
    """A reader's training history; weights 1, or the ratings (0 = implicit)."""
    row = dataset.user_items()[user]
    items = row.indices.astype(np.int64)
    weights = np.ones(len(items), np.float32)
    if rated:
        mine = dataset.users == user
        for j, item in enumerate(items):
            weights[j] = dataset.ratings[mine & (dataset.items == item)].max()
    return UserProfile(user if known else None, items, weights)


HAS_TENSORFLOW = importlib.util.find_spec("tensorflow") is not None


def _limit_threads() -> None:
    import tensorflow as tf

    # only possible before TensorFlow starts its runtime
    try:
        tf.config.threading.set_intra_op_parallelism_threads(2)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass


def _neural() -> NeuralCF:
    import tensorflow as tf

    # only possible before TensorFlow starts its runtime
    try:
        tf.config.threading.set_intra_op_parallelism_threads(2)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass
    return NeuralCF(
        embedding_dim=8, layers=(16, 8), epochs=10, batch_size=64, learning_rate=0.01
    )


def _explicit_mf(**params: Any) -> ExplicitMF:
    """Small settings: many small steps over a few hundred ratings."""
    _limit_threads()
    settings = {
        "factors": 4,
        "regularization": 0.1,
        "epochs": 40,
        "batch_size": 16,
        "learning_rate": 0.02,
        "validation_fraction": 0.0,
    }
    return ExplicitMF(**(settings | params))


def _factories() -> dict[str, Any]:
    extra = {"neural": _neural, "explicit_mf": _explicit_mf} if HAS_TENSORFLOW else {}
    return extra | {
        "ease": lambda: EASE(regularization=10.0),
        "ease_capped": lambda: EASE(regularization=10.0, max_items=25),
        "user_knn": lambda: UserKNN(k=10),
        "user_knn_pearson": lambda: UserKNN(k=10, similarity="pearson"),
        "bpr": lambda: BPR(factors=8, learning_rate=0.05, iterations=60, num_threads=1),
    }


MODELS = sorted(_factories())
RATED = {"user_knn_pearson", "explicit_mf"}
"""Models that read ``UserProfile.weights`` as ratings."""


@pytest.fixture(scope="module")
def fitted(dataset: Dataset) -> dict[str, Any]:
    return {name: factory().fit(dataset) for name, factory in _factories().items()}


# --- the shared contract ----------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_scores_have_catalogue_shape_and_are_finite(name, fitted, dataset):
    model = fitted[name]
    for known in (True, False):
        scores = model.score(_profile(dataset, 3, known, name in RATED))
        assert scores.shape == (N_ITEMS,)
        assert scores.dtype == np.float32
        assert np.all(np.isfinite(scores))
    assert np.all(np.isfinite(model.score(UserProfile.empty())))


@pytest.mark.parametrize("name", MODELS)
def test_item_subset_matches_whole_catalogue(name, fitted, dataset):
    model = fitted[name]
    profile = _profile(dataset, 5, False, name in RATED)
    subset = np.array([7, 0, 39, 7, 12], dtype=np.int64)
    np.testing.assert_allclose(
        model.score(profile, subset), model.score(profile)[subset], rtol=1e-5
    )


@pytest.mark.parametrize("name", MODELS)
def test_score_users_matches_score(name, fitted, dataset):
    model = fitted[name]
    users = np.array([0, 1, 17, 42])
    batch = model.score_users(dataset.user_items(), users)
    assert batch.shape == (len(users), N_ITEMS)
    assert batch.dtype == np.float32
    for row, user in zip(batch, users, strict=True):
        expected = model.score(_profile(dataset, int(user), True, name in RATED))
        np.testing.assert_allclose(row, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_save_load_round_trip(name, fitted, dataset, tmp_path: Path):
    model = fitted[name]
    files = model.save(tmp_path)
    assert sorted(files) == sorted(p.name for p in tmp_path.iterdir())
    for file in files:
        if file.endswith(".npz"):
            with np.load(tmp_path / file, allow_pickle=False) as archive:
                for key in archive.files:
                    assert archive[key].dtype != object
        else:
            assert not zipfile.is_zipfile(tmp_path / file)
            assert np.load(tmp_path / file, allow_pickle=False).dtype != object

    loaded = type(model).load(tmp_path, model.params())
    for known in (True, False):
        profile = _profile(dataset, 9, known, name in RATED)
        np.testing.assert_array_equal(loaded.score(profile), model.score(profile))
    users = np.arange(N_USERS)
    np.testing.assert_array_equal(
        loaded.score_users(dataset.user_items(), users),
        model.score_users(dataset.user_items(), users),
    )


@pytest.mark.parametrize("name", MODELS)
def test_ranks_own_group_first(name, fitted, dataset):
    if name == "explicit_mf":
        pytest.skip("ratings exist only inside a group: no signal for a rating model")
    model = fitted[name]
    hits = []
    for user in range(N_USERS):
        profile = _profile(dataset, user, False, name in RATED)
        scores = model.score(profile)
        scores[profile.items] = -np.inf
        best = np.argsort(-scores)[:5]
        group = user % 2
        hits.append(np.mean(best // (N_ITEMS // 2) == group))
    # pearson sees only the explicit two thirds of the ratings: weaker, not blind
    assert np.mean(hits) > (0.6 if name == "user_knn_pearson" else 0.7)


@pytest.mark.parametrize("name", MODELS)
def test_bad_profile_item_is_rejected(name, fitted):
    profile = UserProfile(None, np.array([N_ITEMS]), np.ones(1, np.float32))
    with pytest.raises(ValueError, match=r"profile\.items"):
        fitted[name].score(profile)


@pytest.mark.parametrize("name", MODELS)
def test_unfitted_model_raises(name):
    with pytest.raises(RuntimeError, match="not fitted"):
        _factories()[name]().score(UserProfile.empty())


# --- EASE -------------------------------------------------------------------


def test_ease_matches_closed_form_by_hand():
    # X^T X = [[2, 1], [1, 1]]; lambda 1 -> P = [[2, -1], [-1, 3]] / 5
    # B_01 = -P_01 / P_11 = 1/3, B_10 = -P_10 / P_00 = 1/2
    users = np.array([0, 0, 1], dtype=np.int32)
    items = np.array([0, 1, 0], dtype=np.int32)
    small = _dataset()
    small = Dataset(
        name="tiny",
        user_ids=np.array(["a", "b"]),
        catalogue=Catalogue(
            item_ids=small.catalogue.item_ids[:2],
            titles=small.catalogue.titles[:2],
            authors=small.catalogue.authors[:2],
            years=small.catalogue.years[:2],
            publishers=small.catalogue.publishers[:2],
            genres=small.catalogue.genres[:2],
        ),
        users=users,
        items=items,
        ratings=np.zeros(3, np.float32),
        timestamps=np.zeros(3, np.int64),
        rating_scale=small.rating_scale,
        id_scheme=small.id_scheme,
    )
    model = EASE(regularization=1.0).fit(small)
    np.testing.assert_allclose(model.weights_, [[0.0, 1 / 3], [1 / 2, 0.0]], atol=1e-6)
    profile = UserProfile(None, np.array([0]), np.array([2.0], np.float32))
    np.testing.assert_allclose(model.score(profile), [0.0, 2 / 3], atol=1e-6)


def test_ease_matches_numpy_formula(dataset):
    x = dataset.user_items().toarray().astype(np.float64)
    lam = 10.0
    p = np.linalg.inv(x.T @ x + lam * np.eye(N_ITEMS))
    b = np.eye(N_ITEMS) - p / np.diag(p)
    model = EASE(regularization=lam).fit(dataset)
    np.testing.assert_allclose(model.weights_, b, atol=1e-5)
    np.testing.assert_allclose(
        model.score_users(dataset.user_items(), np.arange(N_USERS)), x @ b, atol=1e-4
    )


def test_ease_cap_keeps_most_read_and_floors_the_rest(fitted, dataset):
    model = fitted["ease_capped"]
    counts = np.asarray(dataset.user_items().sum(axis=0)).ravel()
    kept = np.flatnonzero(model.item_rows_ >= 0)
    assert len(kept) == 25
    assert counts[kept].min() >= counts[model.item_rows_ < 0].max()
    scores = model.score(_profile(dataset, 2))
    assert np.all(scores[model.item_rows_ < 0] == scores[kept].min())
    assert scores[kept].max() > scores[kept].min()


def test_ease_rejects_bad_params(dataset):
    with pytest.raises(ValueError, match=r"regularization must be > 0, got 0"):
        EASE(regularization=0).fit(dataset)
    with pytest.raises(ValueError, match=r"max_items must be >= 1, got 0"):
        EASE(max_items=0).fit(dataset)


def test_ease_load_rejects_inconsistent_rows(fitted, tmp_path: Path):
    model = fitted["ease_capped"]
    model.save(tmp_path)
    rows = np.load(tmp_path / "ease.item_rows.npy")
    rows[rows == 0] = 1
    np.save(tmp_path / "ease.item_rows.npy", rows)
    with pytest.raises(ValueError, match=r"ease\.item_rows\.npy"):
        EASE.load(tmp_path, model.params())


def test_score_users_accepts_sparse_input(fitted, dataset):
    csr = sp.csr_matrix(dataset.user_items())
    assert fitted["ease"].score_users(csr, np.array([0])).shape == (1, N_ITEMS)


# --- BPR --------------------------------------------------------------------


def test_bpr_keeps_the_bias_column(fitted, dataset):
    model = fitted["bpr"]
    assert model.user_factors.shape == (N_USERS, 9)
    assert model.item_factors.shape == (N_ITEMS, 9)
    np.testing.assert_array_equal(model.user_factors[:, -1], 1.0)
    # an empty history scores by item bias alone
    np.testing.assert_allclose(
        model.score(UserProfile.empty()), model.item_factors[:, -1], rtol=1e-6
    )


def test_bpr_fold_in_is_weighted_mean_of_item_factors(fitted):
    model = fitted["bpr"]
    items = np.array([1, 4, 4])
    weights = np.array([1.0, 2.0, 1.0], np.float32)
    vector = model.fold_in(items, weights)
    q = model.item_factors
    np.testing.assert_allclose(vector[:-1], (q[1, :-1] + 3 * q[4, :-1]) / 4, rtol=1e-5)
    assert vector[-1] == 1.0


def test_bpr_is_reproducible_with_one_thread(fitted, dataset):
    again = BPR(factors=8, learning_rate=0.05, iterations=60, num_threads=1)
    np.testing.assert_array_equal(
        again.fit(dataset).item_factors, fitted["bpr"].item_factors
    )


# --- user neighbours --------------------------------------------------------


def test_user_knn_cosine_matches_dense_formula(fitted, dataset):
    model = fitted["user_knn"]
    x = dataset.user_items().toarray().astype(np.float64)
    norms = np.linalg.norm(x, axis=1)
    cosines = x @ x[4] / (norms * norms[4])
    cosines[4] = 0.0
    best = np.argsort(-cosines, kind="stable")[:10]
    expected = cosines[best] @ x[best]
    np.testing.assert_allclose(model.score(_profile(dataset, 4)), expected, rtol=1e-5)


def test_user_knn_pearson_centres_explicit_ratings(fitted, dataset):
    vectors = fitted["user_knn_pearson"].vectors_
    explicit = dataset.ratings > 0
    assert vectors.nnz == len(
        set(zip(dataset.users[explicit], dataset.items[explicit], strict=True))
    )
    np.testing.assert_allclose(np.asarray(vectors.sum(axis=1)).ravel(), 0.0, atol=1e-4)


def test_user_knn_cosine_and_pearson_differ_sensibly(fitted, dataset):
    cosine, pearson = fitted["user_knn"], fitted["user_knn_pearson"]
    profile = _profile(dataset, 6, known=False, rated=True)
    users_c, sims_c = cosine.neighbours(profile)
    users_p, sims_p = pearson.neighbours(profile)
    assert not np.array_equal(users_c, users_p)
    assert np.all((sims_c > 0) & (sims_c <= 1 + 1e-6))
    assert np.all((sims_p > 0) & (sims_p <= 1 + 1e-6))
    # both find mostly readers of the same taste group (even indices)
    assert np.mean(users_c % 2 == 0) > 0.7
    assert np.mean(users_p % 2 == 0) > 0.7


def test_user_knn_pearson_needs_rating_variation(fitted, dataset):
    flat = _profile(dataset, 6, known=False)
    np.testing.assert_array_equal(fitted["user_knn_pearson"].score(flat), 0.0)


def test_user_knn_never_its_own_neighbour(fitted, dataset):
    users, _ = fitted["user_knn"].neighbours(_profile(dataset, 8))
    assert 8 not in users
    users, _ = fitted["user_knn"].neighbours(_profile(dataset, 8, known=False))
    assert users[0] == 8


def test_user_knn_rejects_unknown_similarity(dataset):
    with pytest.raises(ValueError, match=r"similarity must be one of .*'jaccard'"):
        UserKNN(similarity="jaccard").fit(dataset)


# --- explicit MF ------------------------------------------------------------

needs_tensorflow = pytest.mark.skipif(
    not HAS_TENSORFLOW, reason="explicit_mf trains in TensorFlow"
)


@needs_tensorflow
def test_explicit_mf_beats_the_biases_on_training_ratings(fitted, dataset):
    model = fitted["explicit_mf"]
    ratings = explicit_ratings(dataset).tocoo()
    assert np.isclose(model.global_mean, ratings.data.mean())
    predicted = model.predict(ratings.row, ratings.col)
    rmse = np.sqrt(np.mean((predicted - ratings.data) ** 2))
    baseline = np.sqrt(np.mean((ratings.data - ratings.data.mean()) ** 2))
    assert rmse < 0.8 * baseline


@needs_tensorflow
def test_explicit_mf_fold_in_is_one_ridge_solve(fitted):
    model = fitted["explicit_mf"]
    items = np.array([2, 7, 11, 30])
    ratings = np.array([9.0, 8.0, 0.0, 2.0])  # the 0 is implicit: ignored
    vector, bias = model.fold_in(items, ratings)

    rated = ratings > 0
    z = np.hstack([model.item_factors[items[rated]], np.ones((3, 1))])
    target = ratings[rated] - model.global_mean - model.item_bias[items[rated]]
    a = z.T @ z + 0.1 * 3 * np.eye(5)
    expected = np.linalg.solve(a, z.T @ target)
    np.testing.assert_allclose(vector, expected[:-1], rtol=1e-4, atol=1e-6)
    assert np.isclose(bias, expected[-1], rtol=1e-4)


@needs_tensorflow
def test_explicit_mf_without_ratings_scores_item_bias(fitted):
    model = fitted["explicit_mf"]
    implicit_only = UserProfile(None, np.array([1, 2]), np.zeros(2, np.float32))
    np.testing.assert_allclose(
        model.score(implicit_only), model.global_mean + model.item_bias, rtol=1e-6
    )


def test_explicit_mf_needs_explicit_ratings(dataset):
    implicit = dataset.subset(dataset.ratings == 0)
    with pytest.raises(ValueError, match="must have explicit ratings"):
        ExplicitMF().fit(implicit)


@needs_tensorflow
def test_explicit_mf_learns_taste_from_ratings():
    # every reader rates books of both halves: their own half 8-10, the other 1-3
    rng = np.random.default_rng(1)
    base = _dataset()
    users = np.repeat(np.arange(N_USERS), 12)
    items = np.concatenate(
        [rng.choice(N_ITEMS, size=12, replace=False) for _ in range(N_USERS)]
    )
    own = items // (N_ITEMS // 2) == users % 2
    ratings = np.where(
        own, rng.integers(8, 11, len(users)), rng.integers(1, 4, len(users))
    )
    data = Dataset(
        name="tastes",
        user_ids=base.user_ids,
        catalogue=base.catalogue,
        users=users.astype(np.int32),
        items=items.astype(np.int32),
        ratings=ratings.astype(np.float32),
        timestamps=np.zeros(len(users), np.int64),
        rating_scale=base.rating_scale,
        id_scheme=base.id_scheme,
    )
    held_out = rng.random(len(users)) < 0.2
    model = _explicit_mf(regularization=0.02).fit(data.subset(~held_out))

    predicted = model.predict(users[held_out], items[held_out])
    rmse = np.sqrt(np.mean((predicted - ratings[held_out]) ** 2))
    assert rmse < 0.5 * np.std(ratings[held_out])

    # a new reader who rated two books of the first half high, one low of the other
    profile = UserProfile(None, np.array([0, 1, 30]), np.array([10.0, 9.0, 2.0]))
    scores = model.score(profile)
    assert scores[: N_ITEMS // 2].mean() > scores[N_ITEMS // 2 :].mean() + 3
