"""Content similarity: TF-IDF over what the catalogue says about each book.

Each book's text (title, author, publisher, genres, and a description where
the data set has one) becomes an L2-normalised TF-IDF row of word 1- and
2-grams. A reader's profile is the weighted mean of the rows of their books,
normalised again, and a book's score is the cosine of its row with the
profile. It needs no interactions, so it serves the session-based cold start
(``similar_to``) and books that nobody has read yet.

Only the item x term matrix is kept: serving never meets new text, so the
vocabulary is not stored. A book without any usable word has an all-zero row:
it scores 0 for everyone and is never retrieved.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import scipy.sparse as sp

from bookverse.models.base import UserProfile, clean_history, top_k
from bookverse.models.dataset import Dataset

logger = logging.getLogger(__name__)

_MATRIX_FILE = "content.tfidf.npz"

# keeps one-letter and numeric tokens ("V", "1984") and any script's words
TOKEN_PATTERN = r"(?u)\b\w+\b"


class ContentTFIDF:
    """TF-IDF cosine between a reader's books and the catalogue.

    Parameters
    ----------
    max_features : int or None, default 50000
        Vocabulary size cap (most frequent terms kept); ``None`` keeps all.
    min_similarity : float, default 0.05
        Retrieval (``similar_to``) returns only items whose cosine with the
        seeds is at least this; in [0, 1). Scores are not cut.

    Attributes
    ----------
    tfidf_ : (n_items, n_terms) float32 CSR
        Rows of unit L2 norm, or all zero.
    """

    name: ClassVar[str] = "content"

    def __init__(
        self, max_features: int | None = 50_000, min_similarity: float = 0.05
    ) -> None:
        self.max_features = max_features
        self.min_similarity = min_similarity
        self.tfidf_: sp.csr_matrix | None = None

    def _check_params(self) -> None:
        if self.max_features is not None and self.max_features < 1:
            raise ValueError(
                f"max_features must be >= 1 or None, got {self.max_features!r}"
            )
        if not 0 <= self.min_similarity < 1:
            raise ValueError(
                f"min_similarity must be in [0, 1), got {self.min_similarity!r}"
            )

    def fit(self, dataset: Dataset) -> Self:
        """Vectorise ``dataset.catalogue.text(i)`` for every item.

        Raises
        ------
        ValueError
            If a parameter breaks its rule.
        """
        from sklearn.feature_extraction.text import TfidfVectorizer

        self._check_params()
        started = time.perf_counter()
        catalogue = dataset.catalogue
        texts = [catalogue.text(i) for i in range(len(catalogue))]

        vectorizer = TfidfVectorizer(
            ngram_range=(1, 2),
            stop_words="english",
            token_pattern=TOKEN_PATTERN,
            max_features=self.max_features,
            sublinear_tf=True,
            dtype=np.float32,
        )
        try:
            matrix = vectorizer.fit_transform(texts)
        except ValueError:
            # no item has a single usable word (e.g. a catalogue of bare ids)
            logger.warning("content: catalogue has no usable text; all rows zero")
            matrix = sp.csr_matrix((len(texts), 1), dtype=np.float32)
        self.tfidf_ = sp.csr_matrix(matrix, dtype=np.float32)

        logger.info(
            "content fitted: %s items x %s terms in %.1fs",
            self.tfidf_.shape[0],
            self.tfidf_.shape[1],
            time.perf_counter() - started,
        )
        return self

    def _fitted(self) -> sp.csr_matrix:
        if self.tfidf_ is None:
            raise RuntimeError("content model is not fitted: call fit or load")
        return self.tfidf_

    def _profile_scores(self, items: np.ndarray, weights: np.ndarray) -> np.ndarray:
        # cosine of every row with the normalised weighted mean of the history
        tfidf = self._fitted()
        scores = np.zeros(tfidf.shape[0], dtype=np.float32)
        if len(items) == 0:
            return scores
        profile = np.asarray(tfidf[items].T @ weights.astype(np.float32)).ravel()
        norm = float(np.linalg.norm(profile))
        if not np.isfinite(norm) or norm == 0:
            return scores
        scores[:] = tfidf @ (profile / norm)
        return np.nan_to_num(scores, nan=0.0, posinf=0.0, neginf=0.0)

    def score(
        self, profile: UserProfile, items: np.ndarray | None = None
    ) -> np.ndarray:
        """Cosine of each item's text with the reader's text profile.

        Returns
        -------
        (len(items),) or (n_items,) float32 in [0, 1]; zeros for no history.

        Raises
        ------
        ValueError
            If a history item is outside ``[0, n_items)``.
        """
        tfidf = self._fitted()
        history, weights = clean_history(
            profile.items, profile.weights, tfidf.shape[0], np.float32
        )
        scores = self._profile_scores(history, weights)
        if items is None:
            return scores
        return scores[np.asarray(items, dtype=np.int64)]

    def score_users(self, user_items: sp.csr_matrix, users: np.ndarray) -> np.ndarray:
        """Profile cosines for training readers: (len(users), n_items) float32."""
        tfidf = self._fitted()
        profiles = np.asarray((user_items[users] @ tfidf).toarray(), dtype=np.float32)
        norms = np.linalg.norm(profiles, axis=1, keepdims=True)
        profiles /= np.where(norms > 0, norms, 1.0)

        # (T @ P^T)^T: sparse times dense stays in compiled code
        scores = np.asarray((tfidf @ profiles.T).T, dtype=np.float32)
        return np.nan_to_num(scores, nan=0.0, posinf=0.0, neginf=0.0)

    def similar_to(self, items: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Items whose text is closest to the given ones (e.g. a session's books).

        Returns
        -------
        items : (m,) int64, best first, ``m <= k``; the seeds, items with an
            all-zero text row and items below ``min_similarity`` left out.
        scores : (m,) float32 cosines

        Raises
        ------
        ValueError
            If a seed is outside ``[0, n_items)``.
        """
        tfidf = self._fitted()
        seeds = np.asarray(items, dtype=np.int64)
        profile = UserProfile(None, seeds, np.ones(len(seeds), dtype=np.float32))
        seeds, weights = clean_history(
            profile.items, profile.weights, tfidf.shape[0], np.float32
        )
        scores = self._profile_scores(seeds, weights)
        scores[seeds] = 0.0
        best = top_k(scores, k)
        best = best[(scores[best] > 0) & (scores[best] >= self.min_similarity)]
        return best, scores[best]

    def params(self) -> dict[str, Any]:
        return {
            "max_features": self.max_features,
            "min_similarity": self.min_similarity,
        }

    def save(self, directory: Path) -> list[str]:
        """Write the item x term matrix as ``content.tfidf.npz``."""
        sp.save_npz(directory / _MATRIX_FILE, self._fitted(), compressed=False)
        return [_MATRIX_FILE]

    @classmethod
    def load(cls, directory: Path, params: dict[str, Any]) -> Self:
        """Read what ``save`` wrote.

        Raises
        ------
        ValueError
            If the file cannot be read or holds non-finite values.
        """
        model = cls(**params)
        path = directory / _MATRIX_FILE
        try:
            matrix = sp.csr_matrix(sp.load_npz(path), dtype=np.float32)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path.name}: cannot read sparse matrix ({exc})") from exc
        if not np.all(np.isfinite(matrix.data)):
            raise ValueError(f"{path.name}: matrix must be finite")
        model.tfidf_ = matrix
        return model
