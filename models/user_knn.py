"""User-based neighbours: recommend what the most similar readers took.

For a reader with history vector ``v``, the similarity to every training
reader ``u`` is a cosine,

    s_u = (V_u . v) / (|V_u| |v|),

the ``k`` most similar readers with ``s_u > 0`` are kept, and a book's score
is the similarity-weighted count of those neighbours who took it,
``score_i = sum_{u in N_k} s_u X_ui``, with ``X`` the binary reader x book
matrix. A training reader scored from its stored row is never its own
neighbour.

``similarity`` chooses the vectors ``V``:

- ``"cosine"``: the binary history (``V = X``; a profile's weights).
- ``"pearson"``: explicit ratings minus the reader's mean explicit rating
  (Pearson correlation over co-rated books, up to the normalisation over
  all books); implicit interactions (rating 0) count 0. A profile is read the
  same way: ``UserProfile.weights`` must carry ratings, weights of 0 are
  implicit, and the rest are centred on their mean. A reader with no rating
  variation (no explicit ratings, or all equal) has a zero vector, no
  neighbours and scores 0: use ``"cosine"`` on implicit data.

Serving needs scipy only: the stored matrices and norms, one sparse
matrix-vector product per reader.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import scipy.sparse as sp

from bookverse.models.base import UserProfile, clean_history, load_array, top_k
from bookverse.models.dataset import Dataset

logger = logging.getLogger(__name__)

SIMILARITIES = ("cosine", "pearson")

_READS_FILE = "user_knn.reads.npz"
_VECTORS_FILE = "user_knn.vectors.npz"
_NORMS_FILE = "user_knn.norms.npy"
_BATCH = 512


class UserKNN:
    """Similarity-weighted votes of the ``k`` nearest training readers.

    Parameters
    ----------
    k : int, default 50
        Neighbours per reader; >= 1.
    similarity : {"cosine", "pearson"}, default "cosine"
        Vectors compared (module docstring).

    Attributes
    ----------
    reads_ : (n_users, n_items) float32 CSR
        Binary training matrix ``X``, the neighbours' votes.
    vectors_ : (n_users, n_items) float32 CSR
        ``V``: ``reads_`` itself for cosine, centred ratings for pearson.
    norms_ : (n_users,) float32
        Euclidean norm of each row of ``vectors_``.
    """

    name: ClassVar[str] = "user_knn"

    def __init__(self, k: int = 50, similarity: str = "cosine") -> None:
        self.k = k
        self.similarity = similarity
        self.reads_: sp.csr_matrix | None = None
        self.vectors_: sp.csr_matrix | None = None
        self.norms_: np.ndarray | None = None

    def _check_params(self) -> None:
        if not self.k >= 1:
            raise ValueError(f"k must be >= 1, got {self.k!r}")
        if self.similarity not in SIMILARITIES:
            raise ValueError(
                f"similarity must be one of {SIMILARITIES}, got {self.similarity!r}"
            )

    def fit(self, dataset: Dataset) -> Self:
        """Store the training matrix, the compared vectors and their norms.

        Raises
        ------
        ValueError
            If a hyperparameter breaks its rule.
        """
        self._check_params()
        started = time.perf_counter()
        reads = sp.csr_matrix(dataset.user_items(), dtype=np.float32)
        cosine = self.similarity == "cosine"
        vectors = reads if cosine else _centred_ratings(dataset)
        self._set_state(reads, vectors)
        logger.info(
            "user_knn fitted: %s readers, %s similarity, k=%s in %.1fs",
            dataset.n_users,
            self.similarity,
            self.k,
            time.perf_counter() - started,
        )
        return self

    def _set_state(self, reads: sp.csr_matrix, vectors: sp.csr_matrix) -> None:
        squares = vectors.multiply(vectors).sum(axis=1)
        self.norms_ = np.sqrt(np.asarray(squares, dtype=np.float64).ravel()).astype(
            np.float32
        )
        self.reads_, self.vectors_ = reads, vectors

    def _fitted(self) -> tuple[sp.csr_matrix, sp.csr_matrix, np.ndarray]:
        if self.reads_ is None or self.vectors_ is None or self.norms_ is None:
            raise RuntimeError("user_knn model is not fitted: call fit or load")
        return self.reads_, self.vectors_, self.norms_

    def profile_vector(self, profile: UserProfile) -> np.ndarray:
        """The history vector compared with the training readers' ``V`` rows.

        Returns
        -------
        (n_items,) float64
            Weights (cosine) or centred ratings (pearson); repeats add up.

        Raises
        ------
        ValueError
            If ``profile.items`` and ``profile.weights`` differ in shape or an
            item index is outside ``[0, n_items)``.
        """
        reads, _, _ = self._fitted()
        items, weights = clean_history(profile.items, profile.weights, reads.shape[1])
        if self.similarity == "pearson":
            rated = weights > 0
            if np.any(rated):
                weights = np.where(rated, weights - weights[rated].mean(), 0.0)
        vector = np.zeros(reads.shape[1], dtype=np.float64)
        np.add.at(vector, items, weights)
        return vector

    def neighbours(self, profile: UserProfile) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` training readers most similar to the profile (``s > 0``).

        Returns
        -------
        users : (m,) int64, best first, ``m <= k``
        similarities : (m,) float64

        Raises
        ------
        ValueError
            If ``profile.user_index`` is outside ``[0, n_users)``, or as
            ``profile_vector``.
        """
        _, vectors, norms = self._fitted()
        user = profile.user_index
        if user is None:
            vector = self.profile_vector(profile)
            norm = float(np.linalg.norm(vector))
            dots = np.asarray(vectors @ vector, dtype=np.float64).ravel()
        else:
            if not 0 <= user < len(norms):
                raise ValueError(
                    f"profile.user_index must be in [0, {len(norms)}), got {user}"
                )
            norm = float(norms[user])
            dots = vectors[user].dot(vectors.T).toarray().ravel().astype(np.float64)
        similarities = _cosines(dots[None, :], np.array([norm]), norms)[0]
        if user is not None:
            similarities[user] = 0.0
        return _best(similarities, self.k)

    def score(
        self, profile: UserProfile, items: np.ndarray | None = None
    ) -> np.ndarray:
        """Similarity-weighted votes of the neighbours for ``items``.

        Returns
        -------
        (len(items),) or (n_items,) float32, finite; 0 without neighbours

        Raises
        ------
        ValueError
            As ``neighbours``.
        """
        reads, _, _ = self._fitted()
        users, similarities = self.neighbours(profile)
        scores = np.asarray(reads[users].T @ similarities, dtype=np.float32).ravel()
        if items is not None:
            scores = scores[np.asarray(items, dtype=np.int64)]
        return np.nan_to_num(scores, nan=0.0, posinf=0.0, neginf=0.0)

    def score_users(self, user_items: sp.csr_matrix, users: np.ndarray) -> np.ndarray:
        """Scores of training readers from their stored rows, in batches.

        ``user_items`` is not read: the stored training rows are. Returns
        (len(users), n_items) float32.
        """
        reads, vectors, norms = self._fitted()
        users = np.asarray(users, dtype=np.int64)
        out = np.zeros((len(users), reads.shape[1]), dtype=np.float32)
        for start in range(0, len(users), _BATCH):
            batch = users[start : start + _BATCH]
            dots = (vectors[batch] @ vectors.T).toarray().astype(np.float64)
            similarities = _cosines(dots, norms[batch].astype(np.float64), norms)
            similarities[np.arange(len(batch)), batch] = 0.0

            # one sparse row of neighbour weights per reader, then one product
            rows, cols, vals = [], [], []
            for i, row in enumerate(similarities):
                best, sims = _best(row, self.k)
                rows.append(np.full(len(best), i))
                cols.append(best)
                vals.append(sims)
            weights = sp.csr_matrix(
                (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                shape=(len(batch), len(norms)),
            )
            out[start : start + len(batch)] = (weights @ reads).toarray()
        return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)

    def params(self) -> dict[str, Any]:
        return {"k": self.k, "similarity": self.similarity}

    def save(self, directory: Path) -> list[str]:
        """Write the binary matrix (``.npz``), the norms (``.npy``) and, for
        pearson, the centred ratings (``.npz``)."""
        reads, vectors, norms = self._fitted()
        sp.save_npz(directory / _READS_FILE, reads, compressed=False)
        np.save(directory / _NORMS_FILE, norms, allow_pickle=False)
        if self.similarity == "cosine":
            return [_READS_FILE, _NORMS_FILE]
        sp.save_npz(directory / _VECTORS_FILE, vectors, compressed=False)
        return [_READS_FILE, _NORMS_FILE, _VECTORS_FILE]

    @classmethod
    def load(cls, directory: Path, params: dict[str, Any]) -> Self:
        """Read what ``save`` wrote.

        Raises
        ------
        ValueError
            Naming the file, if one cannot be read or the shapes disagree.
        """
        model = cls(**params)
        model._check_params()
        reads = _load_csr(directory / _READS_FILE)
        vectors = reads
        if model.similarity == "pearson":
            vectors = _load_csr(directory / _VECTORS_FILE)
        norms = np.asarray(load_array(directory / _NORMS_FILE, mmap=False))
        if vectors.shape != reads.shape:
            raise ValueError(
                f"{_VECTORS_FILE}: shape must be {reads.shape}, got {vectors.shape}"
            )
        if norms.shape != (reads.shape[0],):
            raise ValueError(
                f"{_NORMS_FILE}: shape must be ({reads.shape[0]},), got {norms.shape}"
            )
        model.reads_, model.vectors_, model.norms_ = reads, vectors, norms
        return model


def _centred_ratings(dataset: Dataset) -> sp.csr_matrix:
    """Explicit ratings minus each reader's mean explicit rating; 0 elsewhere.

    Repeated (reader, book) ratings are averaged first. Returns (n_users,
    n_items) float32 CSR over the explicit pairs only.
    """
    explicit = dataset.ratings > 0
    users, items = dataset.users[explicit], dataset.items[explicit]
    shape = (dataset.n_users, dataset.n_items)
    totals = sp.csr_matrix(
        (dataset.ratings[explicit].astype(np.float64), (users, items)), shape
    )
    counts = sp.csr_matrix((np.ones(len(users)), (users, items)), shape)
    ratings = totals.multiply(counts.power(-1)).tocsr()

    # centre each row on its own mean
    per_row = np.diff(ratings.indptr)
    means = np.asarray(ratings.sum(axis=1)).ravel() / np.maximum(per_row, 1)
    ratings.data -= np.repeat(means, per_row)
    return sp.csr_matrix(ratings, dtype=np.float32)


def _cosines(dots: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """``dots / (left_i right_j)``, 0 where either norm is 0: (b, n_users)."""
    denominator = left[:, None] * right[None, :].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        cosines = np.where(denominator > 0, dots / denominator, 0.0)
    return np.nan_to_num(cosines, nan=0.0, posinf=0.0, neginf=0.0)


def _best(similarities: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest positive similarities, best first, ties to lower index."""
    best = top_k(similarities, k)
    best = best[similarities[best] > 0]
    return best, similarities[best]


def _load_csr(path: Path) -> sp.csr_matrix:
    """``scipy.sparse.load_npz`` (no pickle) as float32 CSR, naming the file."""
    try:
        matrix = sp.load_npz(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path.name}: cannot read sparse matrix ({exc})") from exc
    return sp.csr_matrix(matrix, dtype=np.float32)
