"""Biased matrix factorisation of explicit ratings, trained in Keras.

Only explicit ratings (``rating > 0``) are modelled; implicit interactions are
left out. The predicted rating of reader ``u`` for book ``i`` is

    r_ui = mu + b_u + b_i + p_u . q_i,

with ``mu`` the mean training rating (fixed, not learned). ``fit`` minimises,
by Adam over shuffled mini-batches, the mean over the batch's ratings of

    (r_ui - r^_ui)^2 + lambda (|p_u|^2 + b_u^2 + |q_i|^2 + b_i^2),

so a reader's penalty grows with the number of their ratings, as in ALS-WR
(Zhou et al. 2008). A random ``validation_fraction`` of the ratings is held
out; training stops when their RMSE has not improved for a few epochs and
keeps the weights of the best epoch. A reader (or book) without a rating in
the trained part keeps zero factors and bias.

``fit`` imports TensorFlow (through Keras); nothing else here does. The mean,
biases and factors are exported as ``.npy`` and scoring is numpy.

``score`` returns the predicted rating, unclipped, for ranking. For a reader
whose history is not the training one, ``UserProfile.weights`` must carry the
**ratings** (on the data set's scale) for this model: the books with a weight
> 0 are folded in by the ridge solve that minimises the objective above over
the reader's ``[p_u, b_u]`` with the books fixed,

    (Z^T Z + lambda n_u I) x = Z^T (r_u - mu - b_I),    Z = [Q_I, 1],

over the ``n_u`` books they rated; weights of 0 (implicit events) are ignored.
Without any rating the score is ``mu + b_i``, the book's bias. Plain
interaction weights of 1.0 would read as ratings of 1: callers that hold no
ratings pass weights of 0.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import scipy.sparse as sp

from bookverse.models.base import UserProfile, check_rules, load_array
from bookverse.models.dataset import Dataset

logger = logging.getLogger(__name__)

_USER_FILE = "explicit_mf.user_factors.npy"
_ITEM_FILE = "explicit_mf.item_factors.npy"
_USER_BIAS_FILE = "explicit_mf.user_bias.npy"
_ITEM_BIAS_FILE = "explicit_mf.item_bias.npy"
_MEAN_FILE = "explicit_mf.global_mean.npy"
_PATIENCE = 2
"""Epochs without a better validation RMSE before training stops."""
_INIT_STD = 0.1
"""Standard deviation of the initial factors; biases start at zero."""


class ExplicitMF:
    """Rating prediction: global mean, two biases and a factor dot product.

    Parameters
    ----------
    factors : int, default 32
        Latent dimensions; >= 1.
    regularization : float, default 0.1
        ``lambda``, the L2 weight per rating on the factors and biases of its
        reader and book; > 0.
    epochs : int, default 30
        Most passes over the training ratings; >= 1.
    learning_rate : float, default 0.005
        Adam step size; > 0.
    batch_size : int, default 256
        Ratings per Adam step; >= 1.
    validation_fraction : float, default 0.1
        Share of the ratings held out for early stopping, in [0, 1); 0 trains
        on every rating for ``epochs`` epochs.
    random_state : int, default 0
        Seed of the held-out draw, the initial factors and the shuffling.

    Attributes
    ----------
    global_mean : float
    user_factors : (n_users, factors) float32
    item_factors : (n_items, factors) float32
    user_bias : (n_users,) float32
    item_bias : (n_items,) float32
    keras_model : keras.Model or None
        The trained model, kept after ``fit`` for inspection; never saved.
        Inputs ``[users, items]``, (n,) int32 each; output (n, 1) ratings.
    """

    name: ClassVar[str] = "explicit_mf"

    def __init__(
        self,
        factors: int = 32,
        regularization: float = 0.1,
        epochs: int = 30,
        learning_rate: float = 0.005,
        batch_size: int = 256,
        validation_fraction: float = 0.1,
        random_state: int = 0,
    ) -> None:
        self.factors = factors
        self.regularization = regularization
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.validation_fraction = validation_fraction
        self.random_state = random_state
        self.global_mean = 0.0
        self.user_factors: np.ndarray | None = None
        self.item_factors: np.ndarray | None = None
        self.user_bias: np.ndarray | None = None
        self.item_bias: np.ndarray | None = None
        self.keras_model: Any = None

    def _check_params(self) -> None:
        fraction = self.validation_fraction
        rules = (
            ("factors", self.factors, self.factors >= 1, ">= 1"),
            ("regularization", self.regularization, self.regularization > 0, "> 0"),
            ("epochs", self.epochs, self.epochs >= 1, ">= 1"),
            ("learning_rate", self.learning_rate, self.learning_rate > 0, "> 0"),
            ("batch_size", self.batch_size, self.batch_size >= 1, ">= 1"),
            ("validation_fraction", fraction, 0 <= fraction < 1, "in [0, 1)"),
        )
        check_rules(rules)

    # --- training (TensorFlow) ---------------------------------------------

    def _build_keras(self, n_users: int, n_items: int, mu: float) -> Any:
        import keras
        from keras import ops

        lam = self.regularization

        class BiasedDot(keras.layers.Layer):  # type: ignore[misc]
            """``mu + b_u + b_i + p_u . q_i``; adds the per-rating L2 penalty."""

            def call(self, inputs: list[Any]) -> Any:
                p, q, b_u, b_i = inputs
                squares = sum(ops.sum(ops.square(x), axis=-1) for x in inputs)
                self.add_loss(lam * ops.mean(squares))
                return mu + b_u + b_i + ops.sum(p * q, axis=-1, keepdims=True)

        def embedding(rows: int, width: int, name: str) -> Any:
            init = keras.initializers.RandomNormal(stddev=_INIT_STD)
            if name.endswith("bias"):
                init = keras.initializers.Zeros()
            return keras.layers.Embedding(rows, width, init, name=name)

        user = keras.Input(shape=(), dtype="int32", name="user")
        item = keras.Input(shape=(), dtype="int32", name="item")
        rating = BiasedDot(name="rating")(
            [
                embedding(n_users, self.factors, "user_factors")(user),
                embedding(n_items, self.factors, "item_factors")(item),
                embedding(n_users, 1, "user_bias")(user),
                embedding(n_items, 1, "item_bias")(item),
            ]
        )
        model = keras.Model([user, item], rating)
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=self.learning_rate),
            loss="mse",
            metrics=[keras.metrics.RootMeanSquaredError(name="rmse")],
        )
        return model

    def fit(self, dataset: Dataset) -> Self:
        """Train on the explicit ratings of ``dataset`` in Keras, then export.

        Raises
        ------
        ValueError
            If a hyperparameter breaks its rule, or the data set has no
            explicit rating.
        RuntimeError
            If the trained state is not finite.
        """
        self._check_params()
        started = time.perf_counter()
        ratings = explicit_ratings(dataset).tocoo()
        if ratings.nnz == 0:
            raise ValueError(
                f"dataset {dataset.name!r} must have explicit ratings (> 0), got none"
            )
        import keras

        mu = float(ratings.data.mean())
        users, items = ratings.row.astype(np.int32), ratings.col.astype(np.int32)
        values = ratings.data.astype(np.float32)[:, None]

        # hold out a random slice of the ratings for early stopping
        keras.utils.set_random_seed(self.random_state)
        rng = np.random.default_rng(self.random_state)
        n_held = min(round(self.validation_fraction * len(values)), len(values) - 1)
        held = np.zeros(len(values), dtype=bool)
        held[rng.permutation(len(values))[:n_held]] = True
        train = ~held

        model = self._build_keras(dataset.n_users, dataset.n_items, mu)
        _zero_unrated(model, users[train], items[train])
        validation, callbacks = None, []
        if n_held:
            validation = ([users[held], items[held]], values[held])
            callbacks.append(
                keras.callbacks.EarlyStopping(
                    monitor="val_rmse", patience=_PATIENCE, restore_best_weights=True
                )
            )
        history = model.fit(
            [users[train], items[train]],
            values[train],
            batch_size=self.batch_size,
            epochs=self.epochs,
            validation_data=validation,
            callbacks=callbacks,
            shuffle=True,
            verbose=0,
        ).history
        trained = len(history["loss"])
        val_rmse = history.get("val_rmse", [float("nan")] * trained)
        for epoch in range(trained):
            logger.info(
                "explicit_mf epoch %s/%s: loss %.4f, train rmse %.4f, "
                "validation rmse %.4f",
                epoch + 1,
                self.epochs,
                history["loss"][epoch],
                history["rmse"][epoch],
                val_rmse[epoch],
            )

        self._export(model, mu)
        logger.info(
            "explicit_mf fitted: %s ratings (%s held out), best validation rmse "
            "%.4f in %.1fs",
            int(train.sum()),
            n_held,
            min(val_rmse),
            time.perf_counter() - started,
        )
        return self

    def _export(self, model: Any, mu: float) -> None:
        state = [
            _float32(model.get_layer(name).get_weights()[0])
            for name in ("user_factors", "item_factors", "user_bias", "item_bias")
        ]
        if not all(np.all(np.isfinite(a)) for a in state):
            raise RuntimeError(
                "explicit_mf state is not finite; lower learning_rate or raise "
                "regularization"
            )
        self.keras_model = model
        self.global_mean = mu
        self.user_factors, self.item_factors = state[0], state[1]
        self.user_bias, self.item_bias = state[2].ravel(), state[3].ravel()

    # --- serving (numpy) ---------------------------------------------------

    def _fitted(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if (
            self.user_factors is None
            or self.item_factors is None
            or self.user_bias is None
            or self.item_bias is None
        ):
            raise RuntimeError("explicit_mf model is not fitted: call fit or load")
        return self.user_factors, self.item_factors, self.user_bias, self.item_bias

    def fold_in(
        self, items: np.ndarray, ratings: np.ndarray
    ) -> tuple[np.ndarray, float]:
        """Reader factors and bias from ratings, by one ridge solve.

        Parameters
        ----------
        items : (n,) int
        ratings : (n,) float
            Ratings on the data set's scale; entries <= 0 or not finite are
            ignored (implicit).

        Returns
        -------
        factors : (factors,) float32
            Zeros when no rating is left.
        bias : float
            0.0 when no rating is left.

        Raises
        ------
        ValueError
            If the shapes differ or an item index is outside ``[0, n_items)``.
        """
        _, item_factors, _, item_bias = self._fitted()
        items = np.asarray(items, dtype=np.int64)
        ratings = np.asarray(ratings, dtype=np.float64)
        _check_history(items, ratings, len(item_factors))
        rated = np.isfinite(ratings) & (ratings > 0)
        if not np.any(rated):
            return np.zeros(self.factors, dtype=np.float32), 0.0
        x = _ridge(
            np.asarray(item_factors[items[rated]], dtype=np.float64),
            ratings[rated] - self.global_mean - item_bias[items[rated]],
            self.regularization,
        )
        return x[:-1].astype(np.float32), float(x[-1])

    def user_state(self, profile: UserProfile) -> tuple[np.ndarray, float]:
        """Stored factors and bias of a training reader, else folded in.

        Raises
        ------
        ValueError
            If ``profile.user_index`` is outside ``[0, n_users)``, or as
            ``fold_in``.
        """
        user_factors, _, user_bias, _ = self._fitted()
        if profile.user_index is None:
            return self.fold_in(profile.items, profile.weights)
        if not 0 <= profile.user_index < len(user_factors):
            raise ValueError(
                f"profile.user_index must be in [0, {len(user_factors)}), "
                f"got {profile.user_index}"
            )
        user = profile.user_index
        return np.asarray(user_factors[user]), float(user_bias[user])

    def score(
        self, profile: UserProfile, items: np.ndarray | None = None
    ) -> np.ndarray:
        """Predicted ratings of ``items`` (or every item), unclipped.

        Returns
        -------
        (len(items),) or (n_items,) float32, finite
        """
        _, item_factors, _, item_bias = self._fitted()
        vector, bias = self.user_state(profile)
        if items is not None:
            items = np.asarray(items, dtype=np.int64)
            item_factors, item_bias = item_factors[items], item_bias[items]
        scores = self.global_mean + bias + item_bias + item_factors @ vector
        return np.nan_to_num(scores.astype(np.float32), nan=self.global_mean)

    def score_users(self, user_items: sp.csr_matrix, users: np.ndarray) -> np.ndarray:
        """Predicted ratings of every item for training readers.

        Returns (len(users), n_items) float32.
        """
        user_factors, item_factors, user_bias, item_bias = self._fitted()
        scores = user_factors[users] @ item_factors.T
        scores += self.global_mean + user_bias[users][:, None] + item_bias[None, :]
        return np.nan_to_num(scores.astype(np.float32), nan=self.global_mean)

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Predicted ratings of (training reader, book) pairs: (n,) float32."""
        user_factors, item_factors, user_bias, item_bias = self._fitted()
        dots = np.einsum("ij,ij->i", user_factors[users], item_factors[items])
        scores = self.global_mean + user_bias[users] + item_bias[items] + dots
        return scores.astype(np.float32)

    def params(self) -> dict[str, Any]:
        return {
            "factors": self.factors,
            "regularization": self.regularization,
            "epochs": self.epochs,
            "learning_rate": self.learning_rate,
            "batch_size": self.batch_size,
            "validation_fraction": self.validation_fraction,
            "random_state": self.random_state,
        }

    def save(self, directory: Path) -> list[str]:
        """Write factors, biases and the global mean as ``.npy``."""
        user_factors, item_factors, user_bias, item_bias = self._fitted()
        arrays = {
            _USER_FILE: user_factors,
            _ITEM_FILE: item_factors,
            _USER_BIAS_FILE: user_bias,
            _ITEM_BIAS_FILE: item_bias,
            _MEAN_FILE: np.array([self.global_mean], dtype=np.float64),
        }
        for file, array in arrays.items():
            np.save(directory / file, array, allow_pickle=False)
        return list(arrays)

    @classmethod
    def load(cls, directory: Path, params: dict[str, Any]) -> Self:
        """Read what ``save`` wrote; factors memory-mapped.

        Raises
        ------
        ValueError
            Naming the file, if one cannot be read or its shape disagrees with
            ``params["factors"]`` or with the other files.
        """
        model = cls(**params)
        user_factors = load_array(directory / _USER_FILE)
        item_factors = load_array(directory / _ITEM_FILE)
        user_bias = np.asarray(load_array(directory / _USER_BIAS_FILE, mmap=False))
        item_bias = np.asarray(load_array(directory / _ITEM_BIAS_FILE, mmap=False))
        mean = np.asarray(load_array(directory / _MEAN_FILE, mmap=False))
        expected = {
            _USER_FILE: (user_factors, (len(user_factors), model.factors)),
            _ITEM_FILE: (item_factors, (len(item_factors), model.factors)),
            _USER_BIAS_FILE: (user_bias, (len(user_factors),)),
            _ITEM_BIAS_FILE: (item_bias, (len(item_factors),)),
            _MEAN_FILE: (mean, (1,)),
        }
        for file, (array, shape) in expected.items():
            if array.shape != shape:
                raise ValueError(f"{file}: shape must be {shape}, got {array.shape}")
        model.global_mean = float(mean[0])
        model.user_factors, model.item_factors = user_factors, item_factors
        model.user_bias, model.item_bias = user_bias, item_bias
        return model


def explicit_ratings(dataset: Dataset) -> sp.csr_matrix:
    """The explicit ratings as a (n_users, n_items) float64 CSR matrix.

    Implicit rows (rating 0) are left out; a repeated (reader, book) rating is
    averaged.
    """
    explicit = dataset.ratings > 0
    users, items = dataset.users[explicit], dataset.items[explicit]
    shape = (dataset.n_users, dataset.n_items)
    values = dataset.ratings[explicit].astype(np.float64)
    totals = sp.csr_matrix((values, (users, items)), shape=shape)
    counts = sp.csr_matrix((np.ones(len(users)), (users, items)), shape=shape)
    totals.sum_duplicates()
    counts.sum_duplicates()
    return sp.csr_matrix(
        (totals.data / counts.data, totals.indices, totals.indptr), shape=shape
    )


def _ridge(z_factors: np.ndarray, target: np.ndarray, lam: float) -> np.ndarray:
    """Solve ``(Z^T Z + lam n I) x = Z^T y`` with ``Z = [factors, 1]``.

    Returns (factors + 1,) float64: the factors, then the bias.
    """
    z = np.hstack([z_factors, np.ones((len(z_factors), 1))])
    a = z.T @ z
    a[np.diag_indices_from(a)] += lam * len(z)
    return np.linalg.solve(a, z.T @ target)


def _zero_unrated(model: Any, users: np.ndarray, items: np.ndarray) -> None:
    """Zero the initial rows of readers and books without a training rating.

    Their rows get no gradient, so they stay zero: such a reader is scored by
    ``mu + b_i`` as in ``fold_in`` without ratings.
    """
    for side, rated in (("user", users), ("item", items)):
        layer = model.get_layer(f"{side}_factors")
        weights = layer.get_weights()[0]
        unrated = np.ones(len(weights), dtype=bool)
        unrated[rated] = False
        weights[unrated] = 0.0
        layer.set_weights([weights])


def _float32(array: Any) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32)


def _check_history(items: np.ndarray, weights: np.ndarray, n_items: int) -> None:
    if items.shape != weights.shape:
        raise ValueError(
            f"profile.weights must have the shape of profile.items {items.shape}, "
            f"got {weights.shape}"
        )
    if len(items) and (items.min() < 0 or items.max() >= n_items):
        raise ValueError(
            f"profile.items must be in [0, {n_items}), got {items.min()}..{items.max()}"
        )
