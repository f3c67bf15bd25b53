"""The numpy scorer of ExplicitMF reproduces the trained Keras model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bookverse.models.explicit_mf import ExplicitMF, explicit_ratings

pytestmark = pytest.mark.neural
pytest.importorskip("tensorflow")

from test_more_models import N_ITEMS, N_USERS, _dataset, _limit_threads  # noqa: E402

SETTINGS = {
    "factors": 4,
    "regularization": 0.05,
    "epochs": 20,
    "batch_size": 16,
    "learning_rate": 0.02,
    "validation_fraction": 0.2,
}


@pytest.fixture(scope="module")
def model() -> ExplicitMF:
    _limit_threads()
    return ExplicitMF(**SETTINGS).fit(_dataset())


def _keras_ratings(
    model: ExplicitMF, users: np.ndarray, items: np.ndarray
) -> np.ndarray:
    inputs = [users.astype(np.int32), items.astype(np.int32)]
    return np.asarray(model.keras_model(inputs, training=False))[:, 0]


def test_numpy_matches_keras_on_every_pair(model):
    users = np.repeat(np.arange(N_USERS), N_ITEMS)
    items = np.tile(np.arange(N_ITEMS), N_USERS)
    expected = _keras_ratings(model, users, items)
    assert np.ptp(expected) > 0.5  # not a constant
    np.testing.assert_allclose(model.predict(users, items), expected, atol=1e-5)
    np.testing.assert_allclose(
        model.score_users(None, np.arange(N_USERS)).ravel(), expected, atol=1e-5
    )


def test_loaded_model_matches_keras(model, tmp_path: Path):
    model.save(tmp_path)
    loaded = ExplicitMF.load(tmp_path, model.params())
    assert loaded.keras_model is None
    rng = np.random.default_rng(3)
    users = rng.integers(0, N_USERS, 500)
    items = rng.integers(0, N_ITEMS, 500)
    np.testing.assert_allclose(
        loaded.predict(users, items), _keras_ratings(model, users, items), atol=1e-5
    )


def test_penalty_is_lambda_per_rating(model):
    # the fold-in's ridge term lambda * n_u rests on this: lambda per rating
    users, items = np.array([0, 0, 5, 17]), np.array([3, 9, 9, 30])
    _keras_ratings(model, users, items)
    penalty = sum(float(loss) for loss in model.keras_model.losses)
    squares = (
        np.sum(model.user_factors[users] ** 2, axis=1)
        + np.sum(model.item_factors[items] ** 2, axis=1)
        + model.user_bias[users] ** 2
        + model.item_bias[items] ** 2
    )
    assert np.isclose(penalty, SETTINGS["regularization"] * squares.mean(), rtol=1e-5)


def test_early_stopping_keeps_a_trained_state(model):
    # a long run with a held-out slice stops before its last epoch
    _limit_threads()
    long_run = ExplicitMF(**(SETTINGS | {"epochs": 200})).fit(_dataset())
    assert len(long_run.keras_model.history.history["loss"]) < 200
    ratings = explicit_ratings(_dataset()).tocoo()
    predicted = long_run.predict(ratings.row, ratings.col)
    assert np.sqrt(np.mean((predicted - ratings.data) ** 2)) < np.std(ratings.data)


def test_unrated_readers_and_books_stay_zero():
    # reader 0 and book 7 keep only their implicit rows
    data = _dataset()
    explicit = data.ratings > 0
    data = data.subset(~(explicit & ((data.users == 0) | (data.items == 7))))
    assert np.any(data.users == 0) and np.any(data.items == 7)
    trained = ExplicitMF(**(SETTINGS | {"validation_fraction": 0.0})).fit(data)
    np.testing.assert_array_equal(trained.user_factors[0], 0.0)
    np.testing.assert_array_equal(trained.item_factors[7], 0.0)
    assert trained.user_bias[0] == 0.0 and trained.item_bias[7] == 0.0
    assert np.any(trained.user_factors[1] != 0.0)


def test_same_seed_same_weights(model):
    again = ExplicitMF(**SETTINGS).fit(_dataset())
    np.testing.assert_allclose(again.item_factors, model.item_factors, atol=1e-6)
    np.testing.assert_allclose(again.user_bias, model.user_bias, atol=1e-6)


def test_rejects_bad_params():
    with pytest.raises(
        ValueError, match=r"validation_fraction must be in \[0, 1\), got 1.0"
    ):
        ExplicitMF(validation_fraction=1.0).fit(_dataset())
    with pytest.raises(ValueError, match=r"learning_rate must be > 0, got 0"):
        ExplicitMF(learning_rate=0).fit(_dataset())
    with pytest.raises(ValueError, match=r"batch_size must be >= 1, got 0"):
        ExplicitMF(batch_size=0).fit(_dataset())
