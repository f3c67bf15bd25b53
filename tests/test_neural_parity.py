"""The numpy scorer of NeuralCF reproduces the trained TensorFlow model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bookverse.models.base import UserProfile, top_k
from bookverse.models.neural import NeuralCF

pytestmark = pytest.mark.neural
tf = pytest.importorskip("tensorflow")

from test_more_models import N_ITEMS, N_USERS, _dataset  # noqa: E402


def _limit_threads() -> None:
    # only possible before TensorFlow starts its runtime
    try:
        tf.config.threading.set_intra_op_parallelism_threads(2)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass


@pytest.fixture(scope="module")
def model() -> NeuralCF:
    _limit_threads()
    neural = NeuralCF(embedding_dim=8, layers=(16, 8), dropout=0.2, epochs=4)
    return neural.fit(_dataset())


def _tf_logits(model: NeuralCF, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    inputs = [users[:, None].astype(np.int32), items[:, None].astype(np.int32)]
    return np.asarray(model.keras_model(inputs, training=False))[:, 0]


def test_numpy_matches_tensorflow_on_every_pair(model):
    users = np.repeat(np.arange(N_USERS), N_ITEMS)
    items = np.tile(np.arange(N_ITEMS), N_USERS)
    expected = _tf_logits(model, users, items)
    np.testing.assert_allclose(model.predict(users, items), expected, atol=1e-5)
    np.testing.assert_allclose(
        model.score_users(None, np.arange(N_USERS)).ravel(), expected, atol=1e-5
    )
    # and as probabilities, the model's trained meaning
    probability = tf.sigmoid(expected).numpy()
    np.testing.assert_allclose(
        1 / (1 + np.exp(-model.predict(users, items))), probability, atol=1e-5
    )


def test_dropout_is_off_at_inference(model):
    users, items = np.arange(10), np.arange(10)
    np.testing.assert_array_equal(
        _tf_logits(model, users, items), _tf_logits(model, users, items)
    )


def test_loaded_model_matches_tensorflow(model, tmp_path: Path):
    model.save(tmp_path)
    loaded = NeuralCF.load(tmp_path, model.params())
    assert loaded.keras_model is None
    users = np.arange(N_USERS) % 7
    items = np.arange(N_USERS) % N_ITEMS
    np.testing.assert_allclose(
        loaded.predict(users, items), _tf_logits(model, users, items), atol=1e-5
    )


def test_fold_in_changes_the_ranking(model):
    history = UserProfile(None, np.array([0, 1, 2]), np.ones(3, np.float32))
    other = UserProfile(None, np.array([25, 30, 33]), np.ones(3, np.float32))
    empty = top_k(model.score(UserProfile.empty()), 10)
    assert not np.array_equal(top_k(model.score(history), 10), empty)
    assert not np.array_equal(
        top_k(model.score(history), 10), top_k(model.score(other), 10)
    )


def test_fold_in_is_weighted_mean_of_reader_means(model):
    vector = model.fold_in(np.array([3, 5]), np.array([1.0, 3.0]))
    expected = (model.reader_mean[3] + 3 * model.reader_mean[5]) / 4
    np.testing.assert_allclose(vector, expected, rtol=1e-5)
    np.testing.assert_allclose(
        model.fold_in(np.zeros(0, np.int64), np.zeros(0)),
        model.user_embedding.mean(axis=0),
        rtol=1e-5,
    )


def test_same_seed_same_weights(model):
    again = NeuralCF(embedding_dim=8, layers=(16, 8), dropout=0.2, epochs=4)
    again.fit(_dataset())
    np.testing.assert_allclose(again.item_embedding, model.item_embedding, atol=1e-6)


def test_rejects_bad_params():
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.0"):
        NeuralCF(dropout=1.0).fit(_dataset())
    with pytest.raises(ValueError, match=r"layers must be all >= 1, got \(8, 0\)"):
        NeuralCF(layers=(8, 0)).fit(_dataset())
