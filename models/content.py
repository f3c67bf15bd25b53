"""Content similarity: TF-IDF over what the catalogue says about each book,
genre overlap and author match.

Each book's text (title, author, publisher, genres, and a description where
the data set has one) becomes an L2-normalised TF-IDF row of word 1- and
2-grams. A reader's profile is the weighted mean of the rows of their books,
normalised again, and the text score is the cosine of a book's row with the
profile. Two more signals join it where the data set has them::

    genre(i)  = sum_h w_h * |G_i & G_h| / |G_i | G_h|  /  sum_h w_h   (Jaccard)
    author(i) = sum_h w_h * [author_i == author_h]     /  sum_h w_h

and a book's score is ``(a * text + b * genre + c * author) / (a + b + c)``
with ``a, b, c = text_weight, genre_weight, author_weight``. A book with no
genres (or no author) scores 0 on that part. It needs no interactions, so it
serves the session-based cold start (``similar_to``) and books that nobody
has read yet.

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

from bookverse.models.base import (
    UserProfile,
    check_rules,
    clean_history,
    load_array,
    top_k,
)
from bookverse.models.dataset import Dataset

logger = logging.getLogger(__name__)

_MATRIX_FILE = "content.tfidf.npz"
_GENRES_FILE = "content.genres.npz"
_AUTHORS_FILE = "content.authors.npy"

# keeps one-letter and numeric tokens ("V", "1984") and any script's words
TOKEN_PATTERN = r"(?u)\b\w+\b"


class ContentTFIDF:
    """TF-IDF cosine between a reader's books and the catalogue.

    Parameters
    ----------
    max_features : int or None, default 50000
        Vocabulary size cap (most frequent terms kept); ``None`` keeps all.
    min_similarity : float, default 0.05
        Retrieval (``similar_to``) returns only items whose score with the
        seeds is at least this; in [0, 1). Scores are not cut.
    max_count : int, default 200
        Retrieval returns at most this many items, whatever is asked; >= 1.
    text_weight, genre_weight, author_weight : float, default 1.0, 0.0, 0.5
        Weights of the three signals in the score; >= 0, not all 0. The
        defaults are what measured best on the evaluation splits: the author
        match helps on Book-Crossing (nDCG@10 0.0520 against 0.0512 for text
        alone), genre overlap lowered MovieLens-100k (0.0567 against 0.0599
        at weight 0.5), so it is off unless tuned (``bookverse-train tune
        --model content``).

    Attributes
    ----------
    tfidf_ : (n_items, n_terms) float32 CSR
        Rows of unit L2 norm, or all zero.
    genres_ : (n_items, n_genres) float32 CSR of 0/1
    authors_ : (n_items,) int32 author code, -1 where unknown
    """

    name: ClassVar[str] = "content"

    def __init__(
        self,
        max_features: int | None = 50_000,
        min_similarity: float = 0.05,
        max_count: int = 200,
        text_weight: float = 1.0,
        genre_weight: float = 0.0,
        author_weight: float = 0.5,
    ) -> None:
        self.max_features = max_features
        self.min_similarity = min_similarity
        self.max_count = max_count
        self.text_weight = text_weight
        self.genre_weight = genre_weight
        self.author_weight = author_weight
        self.tfidf_: sp.csr_matrix | None = None
        self.genres_: sp.csr_matrix | None = None
        self.authors_: np.ndarray | None = None

    def _check_params(self) -> None:
        weights = (self.text_weight, self.genre_weight, self.author_weight)
        check_rules(
            (
                (
                    "max_features",
                    self.max_features,
                    self.max_features is None or self.max_features >= 1,
                    ">= 1 or None",
                ),
                (
                    "min_similarity",
                    self.min_similarity,
                    0 <= self.min_similarity < 1,
                    "in [0, 1)",
                ),
                ("max_count", self.max_count, self.max_count >= 1, ">= 1"),
                ("text_weight", self.text_weight, self.text_weight >= 0, ">= 0"),
                ("genre_weight", self.genre_weight, self.genre_weight >= 0, ">= 0"),
                (
                    "author_weight",
                    self.author_weight,
                    self.author_weight >= 0,
                    ">= 0",
                ),
                ("the sum of the weights", sum(weights), sum(weights) > 0, "> 0"),
            )
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
        self.genres_ = _genre_matrix(catalogue.genres)
        self.authors_ = _author_codes(catalogue.authors)

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

    def _sides(self) -> tuple[sp.csr_matrix, np.ndarray]:
        if self.genres_ is None or self.authors_ is None:
            raise RuntimeError("content model is not fitted: call fit or load")
        return self.genres_, self.authors_

    def _profile_scores(self, items: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """The weighted mix of text cosine, genre Jaccard and author match."""
        tfidf = self._fitted()
        scores = np.zeros(tfidf.shape[0], dtype=np.float32)
        total = float(weights.sum())
        if len(items) == 0 or not np.isfinite(total) or total <= 0:
            return scores

        # cosine of every row with the normalised weighted mean of the history
        profile = np.asarray(tfidf[items].T @ weights.astype(np.float32)).ravel()
        norm = float(np.linalg.norm(profile))
        if np.isfinite(norm) and norm > 0:
            scores += self.text_weight * (tfidf @ (profile / norm))

        genres, authors = self._sides()
        if self.genre_weight > 0 and genres.nnz:
            scores += self.genre_weight * _jaccard(genres, items, weights / total)
        if self.author_weight > 0:
            scores += self.author_weight * _author_share(authors, items, weights)
        scores /= self.text_weight + self.genre_weight + self.author_weight
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
        """Scores for training readers: (len(users), n_items) float32."""
        tfidf = self._fitted()
        genres, authors = self._sides()
        rows = sp.csr_matrix(user_items[users], dtype=np.float32)
        profiles = np.asarray((rows @ tfidf).toarray(), dtype=np.float32)
        norms = np.linalg.norm(profiles, axis=1, keepdims=True)
        profiles /= np.where(norms > 0, norms, 1.0)

        # (T @ P^T)^T: sparse times dense stays in compiled code
        scores = self.text_weight * np.asarray((tfidf @ profiles.T).T, np.float32)
        totals = np.asarray(rows.sum(axis=1)).ravel()
        if self.author_weight > 0:
            scores += self.author_weight * _author_shares(authors, rows, totals)
        if self.genre_weight > 0 and genres.nnz:
            for i in range(rows.shape[0]):
                start, stop = rows.indptr[i], rows.indptr[i + 1]
                if totals[i] > 0:
                    share = rows.data[start:stop] / totals[i]
                    history = rows.indices[start:stop]
                    scores[i] += self.genre_weight * _jaccard(genres, history, share)
        scores /= self.text_weight + self.genre_weight + self.author_weight
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
        best = top_k(scores, min(k, self.max_count))
        best = best[(scores[best] > 0) & (scores[best] >= self.min_similarity)]
        return best, scores[best]

    def params(self) -> dict[str, Any]:
        return {
            "max_features": self.max_features,
            "min_similarity": self.min_similarity,
            "max_count": self.max_count,
            "text_weight": self.text_weight,
            "genre_weight": self.genre_weight,
            "author_weight": self.author_weight,
        }

    def save(self, directory: Path) -> list[str]:
        """Write the item x term matrix, the genre matrix and author codes."""
        genres, authors = self._sides()
        sp.save_npz(directory / _MATRIX_FILE, self._fitted(), compressed=False)
        sp.save_npz(directory / _GENRES_FILE, genres, compressed=False)
        np.save(directory / _AUTHORS_FILE, authors)
        return [_MATRIX_FILE, _GENRES_FILE, _AUTHORS_FILE]

    @classmethod
    def load(cls, directory: Path, params: dict[str, Any]) -> Self:
        """Read what ``save`` wrote.

        Raises
        ------
        ValueError
            If the file cannot be read or holds non-finite values.
        """
        model = cls(**params)
        model.tfidf_ = _read_matrix(directory / _MATRIX_FILE)
        model.genres_ = _read_matrix(directory / _GENRES_FILE)
        model.authors_ = np.asarray(load_array(directory / _AUTHORS_FILE), np.int32)
        n_items = model.tfidf_.shape[0]
        if model.genres_.shape[0] != n_items or len(model.authors_) != n_items:
            raise ValueError(
                f"{_GENRES_FILE} and {_AUTHORS_FILE} must have one row per book "
                f"({n_items}), got {model.genres_.shape[0]} and {len(model.authors_)}"
            )
        return model


def _read_matrix(path: Path) -> sp.csr_matrix:
    """A finite float32 CSR matrix from ``path``; ValueError naming the file."""
    try:
        matrix = sp.csr_matrix(sp.load_npz(path), dtype=np.float32)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path.name}: cannot read sparse matrix ({exc})") from exc
    if not np.all(np.isfinite(matrix.data)):
        raise ValueError(f"{path.name}: matrix must be finite")
    return matrix


def _genre_matrix(genres: list[tuple[str, ...]]) -> sp.csr_matrix:
    """(n_items, n_genres) 0/1 matrix of each book's genre set."""
    vocabulary: dict[str, int] = {}
    rows, cols = [], []
    for item, names in enumerate(genres):
        for name in set(names):
            rows.append(item)
            cols.append(vocabulary.setdefault(name, len(vocabulary)))
    shape = (len(genres), max(len(vocabulary), 1))
    values = np.ones(len(rows), dtype=np.float32)
    return sp.csr_matrix((values, (rows, cols)), shape=shape)


def _author_codes(authors: list[str]) -> np.ndarray:
    """(n_items,) int32: one code per case-folded author, -1 where empty."""
    codes: dict[str, int] = {}
    keys = [a.strip().casefold() for a in authors]
    return np.array(
        [codes.setdefault(k, len(codes)) if k else -1 for k in keys], dtype=np.int32
    )


def _jaccard(
    genres: sp.csr_matrix, items: np.ndarray, shares: np.ndarray
) -> np.ndarray:
    """Share-weighted mean Jaccard of every book's genre set with the history's.

    Books of one genre set are grouped first, so the work grows with the
    number of distinct sets in the history, not with its length.
    """
    history = genres[items]
    keys, group = np.unique(history.toarray(), axis=0, return_inverse=True)
    weight = np.bincount(group.ravel(), weights=shares, minlength=len(keys))
    sets = sp.csr_matrix(keys, dtype=np.float32)
    inter = np.asarray((genres @ sets.T).todense(), dtype=np.float32)
    sizes = np.asarray(genres.sum(axis=1), dtype=np.float32)
    union = sizes + np.asarray(sets.sum(axis=1), dtype=np.float32).T - inter
    ratio = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return np.asarray(ratio @ weight, dtype=np.float32)


def _author_share(
    authors: np.ndarray, items: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """Share of the history's weight by each book's author (0 if unknown)."""
    known = authors[items] >= 0
    counts = np.bincount(
        authors[items][known],
        weights=weights[known],
        minlength=int(authors.max(initial=-1)) + 1,
    )
    per_author = counts.astype(np.float64) / max(float(weights.sum()), 1e-12)
    scores = np.zeros(len(authors), dtype=np.float32)
    has = authors >= 0
    scores[has] = per_author[authors[has]]
    return scores


def _author_shares(
    authors: np.ndarray, rows: sp.csr_matrix, totals: np.ndarray
) -> np.ndarray:
    """``_author_share`` for many readers at once: (n_readers, n_items)."""
    has = authors >= 0
    n_authors = int(authors.max(initial=-1)) + 1
    if n_authors == 0:
        return np.zeros(rows.shape, dtype=np.float32)
    by_author = sp.csr_matrix(
        (np.ones(int(has.sum()), np.float32), (np.flatnonzero(has), authors[has])),
        shape=(len(authors), n_authors),
    )
    per_author = np.asarray((rows @ by_author).todense(), dtype=np.float32)
    per_author /= np.maximum(totals, 1e-12)[:, None]
    scores = np.zeros(rows.shape, dtype=np.float32)
    scores[:, has] = per_author[:, authors[has]]
    return scores
