"""The one small interface every model family implements.

A model is fitted from a ``Dataset`` (training), saved to plain files in a
bundle folder, loaded back (serving), and asked for scores. Serving asks about
one reader at a time through a ``UserProfile``; evaluation asks about many
training readers at once through ``score_users``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self

import numpy as np
import scipy.sparse as sp

from bookverse.models.dataset import Dataset


@dataclass(frozen=True)
class UserProfile:
    """What serving knows about one reader.

    ``user_index`` is the reader's training row when the history is exactly
    the training history (so stored per-reader state such as ALS factors may
    be used as is); ``None`` for a reader unknown to training or one whose
    history grew since (tracked events): models then work from ``items``.
    ``items`` are item indices (int64), ``weights`` a float32 confidence per
    item (1.0 for one plain interaction), both of the same length.
    """

    user_index: int | None
    items: np.ndarray
    weights: np.ndarray

    @classmethod
    def empty(cls) -> UserProfile:
        return cls(None, np.zeros(0, np.int64), np.zeros(0, np.float32))

    @property
    def is_empty(self) -> bool:
        return len(self.items) == 0


class Model(Protocol):
    """fit / score / save / load: the contract of a model family."""

    name: ClassVar[str]

    def fit(self, dataset: Dataset) -> Self:
        """Learn from ``dataset``; returns self."""
        ...

    def score(
        self, profile: UserProfile, items: np.ndarray | None = None
    ) -> np.ndarray:
        """Scores of ``items`` (int64 indices; ``None`` = whole catalogue) for
        one reader, float32 of the same length, finite; higher is better."""
        ...

    def score_users(self, user_items: sp.csr_matrix, users: np.ndarray) -> np.ndarray:
        """Scores of the whole catalogue for training readers ``users``.

        ``user_items`` is the (n_users, n_items) training matrix. Returns a
        dense float32 array of shape (len(users), n_items).
        """
        ...

    def params(self) -> dict[str, Any]:
        """Hyperparameters, JSON-serialisable, as stored in the manifest."""
        ...

    def save(self, directory: Path) -> list[str]:
        """Write the fitted state as plain files (no pickle) into ``directory``;
        returns the file names written (relative to ``directory``)."""
        ...

    @classmethod
    def load(cls, directory: Path, params: dict[str, Any]) -> Self:
        """Read what ``save`` wrote; large arrays memory-mapped. Raises
        ``ValueError`` naming the file when a file is malformed."""
        ...


def check_rules(rules: Iterable[tuple[str, object, bool, str]]) -> None:
    """Raise for the first broken rule of a declarative constraints table.

    Each rule is ``(name, value, holds, rule text)``.

    Raises
    ------
    ValueError
        ``"<name> must be <rule>, got <value>"`` for the first rule that does
        not hold.
    """
    for name, value, holds, rule in rules:
        if not holds:
            raise ValueError(f"{name} must be {rule}, got {value!r}")


def stored_row(rows: np.ndarray, user_index: int) -> np.ndarray:
    """Row ``user_index`` of a per-reader array (factors, embeddings), float32.

    Raises
    ------
    ValueError
        If ``user_index`` is outside ``[0, len(rows))``.
    """
    if not 0 <= user_index < len(rows):
        raise ValueError(
            f"profile.user_index must be in [0, {len(rows)}), got {user_index}"
        )
    return np.asarray(rows[user_index], dtype=np.float32)


def clean_history(
    items: np.ndarray,
    weights: np.ndarray,
    n_items: int,
    dtype: type[np.floating[Any]] = np.float64,
) -> tuple[np.ndarray, np.ndarray]:
    """A reader's history, range-checked, with unusable weights dropped.

    Returns ``items`` as int64 and ``weights`` as ``dtype``, keeping only the
    entries whose weight is finite and non-negative.

    Raises
    ------
    ValueError
        ``weights`` and ``items`` differ in shape, or an item index lies
        outside ``[0, n_items)``.
    """
    items = np.asarray(items, dtype=np.int64)
    weights = np.asarray(weights, dtype=dtype)
    if items.shape != weights.shape:
        raise ValueError(
            f"profile.weights must have the shape of profile.items {items.shape}, "
            f"got {weights.shape}"
        )
    if len(items) and (items.min() < 0 or items.max() >= n_items):
        raise ValueError(
            f"profile.items must be in [0, {n_items}), got {items.min()}..{items.max()}"
        )
    keep = np.isfinite(weights) & (weights >= 0)
    return items[keep], weights[keep]


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest scores, best first; ties by lower index."""
    k = min(k, len(scores))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    part = np.argpartition(-scores, k - 1)[:k]
    order = np.lexsort((part, -scores[part]))
    return part[order].astype(np.int64)


def load_array(path: Path, mmap: bool = True) -> np.ndarray:
    """``np.load`` without pickle, naming the file in any error."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path.name}: cannot read array ({exc})") from exc
