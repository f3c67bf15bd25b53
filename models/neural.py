"""Neural collaborative filtering, trained in TensorFlow, served with numpy.

He et al., "Neural Collaborative Filtering", WWW 2017 (the MLP branch). A
reader embedding and a book embedding are concatenated and passed through
ReLU layers with dropout to one logit; ``sigmoid(logit)`` is the probability
that the reader takes the book. Training minimises binary cross-entropy over
every (reader, book) interaction as a positive and ``n_negatives`` books drawn
uniformly per positive as negatives, drawn afresh every epoch (a draw that
hits a book the reader took is redrawn, up to a few times), with Adam.

``fit`` imports TensorFlow; nothing else here does. The weights are exported
as ``.npy`` and scoring is numpy: embedding look-up, dense layers, ReLU
(dropout is off at inference). ``score`` returns the logit, which orders
books as the probability does without saturating at 1.

A reader whose history is not exactly the training one is *folded in*: their
embedding is the weighted mean, over the books of their history, of the mean
embedding of each book's training readers (the readers of these books are
the nearest thing to this reader that the model has learned). An empty history
gets the mean embedding of all training readers.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import scipy.sparse as sp

from bookverse.models.base import (
    UserProfile,
    check_rules,
    clean_history,
    load_array,
    stored_row,
)
from bookverse.models.dataset import Dataset

logger = logging.getLogger(__name__)

_USER_FILE = "neural.user_embedding.npy"
_ITEM_FILE = "neural.item_embedding.npy"
_READERS_FILE = "neural.reader_mean.npy"
_REDRAWS = 3
_CHUNK_ELEMENTS = 1 << 23


def _dense_files(layer: int) -> tuple[str, str]:
    return f"neural.dense_{layer}.kernel.npy", f"neural.dense_{layer}.bias.npy"


class NeuralCF:
    """MLP over concatenated reader and book embeddings, one logit out.

    Parameters
    ----------
    embedding_dim : int, default 32
        Size of each embedding; >= 1.
    layers : sequence of int, default (64, 32)
        Units of the hidden ReLU layers, in order; each >= 1 (may be empty).
    dropout : float, default 0.2
        Dropout rate after each hidden layer while training; in [0, 1).
    epochs : int, default 10
        Passes over the positives, each with fresh negatives; >= 1.
    batch_size : int, default 1024
        Examples per Adam step; >= 1.
    learning_rate : float, default 0.001
        Adam step size; > 0.
    n_negatives : int, default 4
        Negatives drawn per positive per epoch; >= 1.
    seed : int, default 0
        Seed of TensorFlow's initialisers and dropout and of the sampler.

    Attributes
    ----------
    user_embedding : (n_users, embedding_dim) float32
    item_embedding : (n_items, embedding_dim) float32
    reader_mean : (n_items, embedding_dim) float32
        Mean embedding of each book's training readers (of all readers for a
        book nobody took); the fold-in basis.
    dense : list of ((n_in, n_out) float32, (n_out,) float32)
        Kernel and bias of each hidden layer, then of the (n_in, 1) output.
    keras_model : keras.Model or None
        The trained model, kept after ``fit`` for inspection; never saved.
    """

    name: ClassVar[str] = "neural"

    def __init__(
        self,
        embedding_dim: int = 32,
        layers: tuple[int, ...] | list[int] = (64, 32),
        dropout: float = 0.2,
        epochs: int = 10,
        batch_size: int = 1024,
        learning_rate: float = 0.001,
        n_negatives: int = 4,
        seed: int = 0,
    ) -> None:
        self.embedding_dim = embedding_dim
        self.layers = layers
        self.dropout = dropout
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.n_negatives = n_negatives
        self.seed = seed
        self.user_embedding: np.ndarray | None = None
        self.item_embedding: np.ndarray | None = None
        self.reader_mean: np.ndarray | None = None
        self.dense: list[tuple[np.ndarray, np.ndarray]] = []
        self.keras_model: Any = None
        self._item_hidden: np.ndarray | None = None
        self._mean_user: np.ndarray | None = None

    def _check_params(self) -> None:
        rules = (
            ("embedding_dim", self.embedding_dim, self.embedding_dim >= 1, ">= 1"),
            ("layers", self.layers, all(u >= 1 for u in self.layers), "all >= 1"),
            ("dropout", self.dropout, 0 <= self.dropout < 1, "in [0, 1)"),
            ("epochs", self.epochs, self.epochs >= 1, ">= 1"),
            ("batch_size", self.batch_size, self.batch_size >= 1, ">= 1"),
            ("learning_rate", self.learning_rate, self.learning_rate > 0, "> 0"),
            ("n_negatives", self.n_negatives, self.n_negatives >= 1, ">= 1"),
        )
        check_rules(rules)

    # --- training (TensorFlow) ---------------------------------------------

    def _build_keras(self, n_users: int, n_items: int) -> Any:
        import keras

        user = keras.Input(shape=(1,), dtype="int32", name="user")
        item = keras.Input(shape=(1,), dtype="int32", name="item")
        embed_user = keras.layers.Embedding(n_users, self.embedding_dim, name="ue")
        embed_item = keras.layers.Embedding(n_items, self.embedding_dim, name="ie")
        x = keras.layers.Concatenate()(
            [
                keras.layers.Flatten()(embed_user(user)),
                keras.layers.Flatten()(embed_item(item)),
            ]
        )
        for j, units in enumerate(self.layers):
            x = keras.layers.Dense(units, activation="relu", name=f"dense_{j}")(x)
            x = keras.layers.Dropout(self.dropout)(x)
        logit = keras.layers.Dense(1, name=f"dense_{len(self.layers)}")(x)
        model = keras.Model([user, item], logit)
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=self.learning_rate),
            loss=keras.losses.BinaryCrossentropy(from_logits=True),
        )
        return model

    def fit(self, dataset: Dataset) -> Self:
        """Train with sampled negatives in TensorFlow, then export the weights.

        Raises
        ------
        ValueError
            If a hyperparameter breaks its rule.
        RuntimeError
            If the trained weights are not finite.
        """
        import keras

        self._check_params()
        started = time.perf_counter()
        keras.utils.set_random_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        reads = dataset.user_items().tocoo()
        pos_users = reads.row.astype(np.int64)
        pos_items = reads.col.astype(np.int64)
        model = self._build_keras(dataset.n_users, dataset.n_items)

        for epoch in range(self.epochs):
            users, items, labels = _training_examples(
                pos_users, pos_items, dataset.n_items, self.n_negatives, rng
            )
            history = model.fit(
                [users[:, None], items[:, None]],
                labels,
                batch_size=self.batch_size,
                epochs=1,
                shuffle=False,
                verbose=0,
            )
            logger.info(
                "neural epoch %s/%s: loss %.4f",
                epoch + 1,
                self.epochs,
                history.history["loss"][-1],
            )

        self._export(model, dataset.user_items())
        logger.info(
            "neural fitted: %s readers x %s items in %.1fs",
            dataset.n_users,
            dataset.n_items,
            time.perf_counter() - started,
        )
        return self

    def _export(self, model: Any, reads: sp.csr_matrix) -> None:
        user_embedding = _float32(model.get_layer("ue").get_weights()[0])
        item_embedding = _float32(model.get_layer("ie").get_weights()[0])
        dense = []
        for j in range(len(self.layers) + 1):
            kernel, bias = model.get_layer(f"dense_{j}").get_weights()
            dense.append((_float32(kernel), _float32(bias)))
        arrays = [user_embedding, item_embedding, *(a for pair in dense for a in pair)]
        if not all(np.all(np.isfinite(a)) for a in arrays):
            raise RuntimeError("neural weights are not finite; lower learning_rate")

        # fold-in basis: mean embedding of each book's readers
        counts = np.asarray(reads.sum(axis=0)).ravel()
        totals = np.asarray(reads.T @ user_embedding.astype(np.float64))
        mean_user = user_embedding.mean(axis=0, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            reader_mean = np.where(
                counts[:, None] > 0, totals / counts[:, None], mean_user
            )
        self.keras_model = model
        self._set_weights(user_embedding, item_embedding, _float32(reader_mean), dense)

    # --- serving (numpy) ---------------------------------------------------

    def _set_weights(
        self,
        user_embedding: np.ndarray,
        item_embedding: np.ndarray,
        reader_mean: np.ndarray,
        dense: list[tuple[np.ndarray, np.ndarray]],
    ) -> None:
        # cached: the book half of the first layer, the same for every reader
        self.user_embedding, self.item_embedding = user_embedding, item_embedding
        self.reader_mean, self.dense = reader_mean, dense
        kernel, bias = dense[0]
        self._item_hidden = item_embedding @ kernel[self.embedding_dim :] + bias
        self._mean_user = user_embedding.mean(axis=0).astype(np.float32)

    def _fitted(self) -> tuple[np.ndarray, np.ndarray]:
        if self.user_embedding is None or self.item_embedding is None:
            raise RuntimeError("neural model is not fitted: call fit or load")
        return self.user_embedding, self.item_embedding

    def _logits(self, user_vectors: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Logits of readers x books: (n_readers, n) from (n_readers, d), (n,)."""
        assert self._item_hidden is not None
        kernel, bias = self.dense[0]
        user_part = user_vectors @ kernel[: self.embedding_dim]
        x = user_part[:, None, :] + self._item_hidden[items][None, :, :]
        for kernel, bias in self.dense[1:]:
            x = np.maximum(x, 0.0) @ kernel + bias
        return x[..., 0]

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Logits of (reader, book) pairs of training readers.

        Parameters
        ----------
        users, items : (n,) int

        Returns
        -------
        (n,) float32
        """
        user_embedding, item_embedding = self._fitted()
        x = np.concatenate(
            [
                user_embedding[np.asarray(users, np.int64)],
                item_embedding[np.asarray(items, np.int64)],
            ],
            axis=1,
        )
        for j, (kernel, bias) in enumerate(self.dense):
            x = x @ kernel + bias
            if j < len(self.dense) - 1:
                x = np.maximum(x, 0.0)
        return np.asarray(x[:, 0], dtype=np.float32)

    def fold_in(self, items: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Reader embedding of a history: weighted mean of ``reader_mean`` rows.

        Parameters
        ----------
        items : (n,) int
        weights : (n,) float
            Non-finite or negative weights drop their item.

        Returns
        -------
        (embedding_dim,) float32
            The mean training reader for an empty history or zero total weight.

        Raises
        ------
        ValueError
            If the shapes differ or an item index is outside ``[0, n_items)``.
        """
        _, item_embedding = self._fitted()
        assert self.reader_mean is not None and self._mean_user is not None
        items, weights = clean_history(items, weights, len(item_embedding))
        total = weights.sum(dtype=np.float64)
        if total <= 0:
            return self._mean_user.copy()
        basis = np.asarray(self.reader_mean[items], dtype=np.float64)
        return (weights @ basis / total).astype(np.float32)

    def user_vector(self, profile: UserProfile) -> np.ndarray:
        """The trained embedding of a training reader, else the folded-in one.

        Returns
        -------
        (embedding_dim,) float32

        Raises
        ------
        ValueError
            If ``profile.user_index`` is outside ``[0, n_users)``, or as
            ``fold_in``.
        """
        user_embedding, _ = self._fitted()
        if profile.user_index is None:
            return self.fold_in(profile.items, profile.weights)
        return stored_row(user_embedding, profile.user_index)

    def score(
        self, profile: UserProfile, items: np.ndarray | None = None
    ) -> np.ndarray:
        """Logits of ``items`` (or every item) for the reader.

        Returns
        -------
        (len(items),) or (n_items,) float32, finite
        """
        _, item_embedding = self._fitted()
        vector = self.user_vector(profile)
        if items is None:
            items = np.arange(len(item_embedding))
        logits = self._logits(vector[None, :], np.asarray(items, np.int64))[0]
        return np.nan_to_num(logits.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)

    def score_users(self, user_items: sp.csr_matrix, users: np.ndarray) -> np.ndarray:
        """Logits of every item for training readers: (len(users), n_items)."""
        user_embedding, item_embedding = self._fitted()
        n_items = len(item_embedding)
        width = max(self.dense[0][0].shape[1], 1)
        step = max(1, _CHUNK_ELEMENTS // (n_items * width))
        everything = np.arange(n_items)
        users = np.asarray(users, dtype=np.int64)
        out = np.empty((len(users), n_items), dtype=np.float32)
        for start in range(0, len(users), step):
            batch = user_embedding[users[start : start + step]]
            out[start : start + len(batch)] = self._logits(batch, everything)
        return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)

    def params(self) -> dict[str, Any]:
        return {
            "embedding_dim": self.embedding_dim,
            "layers": [int(u) for u in self.layers],
            "dropout": self.dropout,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "n_negatives": self.n_negatives,
            "seed": self.seed,
        }

    def save(self, directory: Path) -> list[str]:
        """Write embeddings, fold-in basis and each layer's kernel and bias."""
        user_embedding, item_embedding = self._fitted()
        assert self.reader_mean is not None
        arrays = {
            _USER_FILE: user_embedding,
            _ITEM_FILE: item_embedding,
            _READERS_FILE: self.reader_mean,
        }
        for j, (kernel, bias) in enumerate(self.dense):
            kernel_file, bias_file = _dense_files(j)
            arrays[kernel_file], arrays[bias_file] = kernel, bias
        for file, array in arrays.items():
            np.save(directory / file, array, allow_pickle=False)
        return list(arrays)

    @classmethod
    def load(cls, directory: Path, params: dict[str, Any]) -> Self:
        """Read what ``save`` wrote; embeddings memory-mapped.

        Raises
        ------
        ValueError
            Naming the file, if one cannot be read or its shape disagrees with
            ``params`` or with the other files.
        """
        model = cls(**params)
        d = model.embedding_dim
        user_embedding = load_array(directory / _USER_FILE)
        item_embedding = load_array(directory / _ITEM_FILE)
        reader_mean = load_array(directory / _READERS_FILE)
        expected = {
            _USER_FILE: (user_embedding, (user_embedding.shape[0], d)),
            _ITEM_FILE: (item_embedding, (item_embedding.shape[0], d)),
            _READERS_FILE: (reader_mean, item_embedding.shape),
        }
        dense = []
        widths = [2 * d, *(int(u) for u in model.layers), 1]
        for j in range(len(widths) - 1):
            kernel_file, bias_file = _dense_files(j)
            kernel = np.asarray(load_array(directory / kernel_file, mmap=False))
            bias = np.asarray(load_array(directory / bias_file, mmap=False))
            expected[kernel_file] = (kernel, (widths[j], widths[j + 1]))
            expected[bias_file] = (bias, (widths[j + 1],))
            dense.append((kernel, bias))
        for file, (array, shape) in expected.items():
            if array.shape != shape:
                raise ValueError(f"{file}: shape must be {shape}, got {array.shape}")
        model._set_weights(user_embedding, item_embedding, reader_mean, dense)
        return model


def _training_examples(
    pos_users: np.ndarray,
    pos_items: np.ndarray,
    n_items: int,
    n_negatives: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positives plus fresh uniform negatives, shuffled.

    Returns
    -------
    users, items : (n_pos * (1 + n_negatives),) int32
    labels : same length, float32 (1 positive, 0 negative)
    """
    neg_users = np.repeat(pos_users, n_negatives)
    neg_items = rng.integers(0, n_items, size=len(neg_users))

    # redraw negatives that hit a book the reader took, a few times at most
    taken = np.sort(pos_users * n_items + pos_items)
    for _ in range(_REDRAWS if len(taken) else 0):
        keys = neg_users * n_items + neg_items
        spot = np.minimum(np.searchsorted(taken, keys), len(taken) - 1)
        hit = taken[spot] == keys
        if not np.any(hit):
            break
        neg_items[hit] = rng.integers(0, n_items, size=int(hit.sum()))

    users = np.concatenate([pos_users, neg_users]).astype(np.int32)
    items = np.concatenate([pos_items, neg_items]).astype(np.int32)
    labels = np.concatenate(
        [np.ones(len(pos_users), np.float32), np.zeros(len(neg_users), np.float32)]
    )
    order = rng.permutation(len(users))
    return users[order], items[order], labels[order]


def _float32(array: Any) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32)
