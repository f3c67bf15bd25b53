"""The in-memory form of a data set, shared by every model and loader.

A ``Dataset`` holds index-encoded interactions plus the catalogue. Loaders
build it; splits take row subsets of it (``Dataset.subset``); models are
fitted from it. Readers and books are addressed by their row index
(``user_ids[u]``, ``catalogue.item_ids[i]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import scipy.sparse as sp

from bookverse.models.ids import IdScheme

INTERACTION_KINDS: tuple[str, ...] = (
    "static",
    "view",
    "add_to_list",
    "purchase",
    "rating",
    "click",
    "finished",
)
"""Names of the codes of ``Dataset.kinds``: code ``c`` is ``INTERACTION_KINDS[c]``.

Code 0, ``"static"``, is a row of a static data set (a plain read or rating);
the others are the event kinds the server tracks.
"""


@dataclass(frozen=True)
class Catalogue:
    """Book (or film) metadata, one row per item index.

    ``years`` is 0 where unknown; ``authors`` and ``publishers`` are empty
    strings where the data set has none; ``genres`` is a tuple per item (empty
    where the data set has none). ``descriptions`` is optional free text.
    """

    item_ids: np.ndarray  # (n_items,) str
    titles: list[str]
    authors: list[str]
    years: np.ndarray  # (n_items,) int32
    publishers: list[str]
    genres: list[tuple[str, ...]]
    descriptions: list[str] | None = None

    def __len__(self) -> int:
        return len(self.item_ids)

    def text(self, item: int) -> str:
        """All free text known about an item, for content models."""
        parts = [self.titles[item], self.authors[item], self.publishers[item]]
        parts.extend(self.genres[item])
        if self.descriptions is not None:
            parts.append(self.descriptions[item])
        return " ".join(p for p in parts if p)


@dataclass(frozen=True)
class Dataset:
    """Interactions (one row each) over ``user_ids`` x ``catalogue``.

    Attributes
    ----------
    users, items : (n_interactions,) int32 row indices.
    ratings : (n_interactions,) float32; 0 means an implicit interaction.
    timestamps : (n_interactions,) int64 Unix seconds; 0 where unknown.
    rating_scale : (low, high) of explicit ratings.
    kinds : (n_interactions,) int8 codes into ``INTERACTION_KINDS``, or None.
        The type of each interaction; None when the data set has no
        interaction types (every row is a plain read or rating, as code 0).
    """

    name: str
    user_ids: np.ndarray  # (n_users,) str
    catalogue: Catalogue
    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray
    rating_scale: tuple[float, float]
    id_scheme: IdScheme
    extras: dict[str, object] = field(default_factory=dict)
    kinds: np.ndarray | None = None

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.catalogue)

    @property
    def n_interactions(self) -> int:
        return len(self.users)

    @property
    def has_timestamps(self) -> bool:
        return bool(self.n_interactions) and bool(np.all(self.timestamps > 0))

    def subset(self, mask: np.ndarray) -> Dataset:
        """The same readers and catalogue with only the interactions in ``mask``."""
        return replace(
            self,
            users=self.users[mask],
            items=self.items[mask],
            ratings=self.ratings[mask],
            timestamps=self.timestamps[mask],
            kinds=None if self.kinds is None else self.kinds[mask],
        )

    def user_items(self) -> sp.csr_matrix:
        """Binary reader x item matrix, (n_users, n_items) float32 CSR.

        Every interaction counts once, explicit rating or implicit event alike;
        repeated pairs are folded into one.
        """
        matrix = sp.csr_matrix(
            (np.ones(self.n_interactions, dtype=np.float32), (self.users, self.items)),
            shape=(self.n_users, self.n_items),
        )
        matrix.sum_duplicates()
        matrix.data[:] = 1.0
        return matrix
