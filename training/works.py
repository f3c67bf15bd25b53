"""Editions of one book grouped into one work.

Book-Crossing names a book by its ISBN, so a paperback, a hardcover and a
reprint of one novel are three books that split their readers. Here editions
are grouped by a work key, their normalised title and author:

- title: mis-decoded UTF-8 repaired, HTML entities decoded, accents folded,
  lower-cased; bracketed parts ("(Paperback)", "(Harry Potter, Book 1)"),
  a novel subtitle (": A Novel", ": a Kate Shugak novel") and edition
  markers ("paperback", "large print", "10th anniversary edition", ...)
  removed; punctuation folded to spaces; a leading article dropped;
- author: the same folding; "Last, First" turned round; suffixes ("Jr.",
  "III", "PhD") dropped; then last name and first initial ("J.K. Rowling",
  "Joanne K. Rowling" and "ROWLING, J. K." are all ``rowling j``).

A book without a title or an author (no metadata row) stays a work of its own.
Each work keeps the catalogue row of its most-read edition (ties: the lower
index), under that edition's canonical id; the other editions' interactions
point at it, and a ``WorkMap`` records which id each merged edition became,
so that serving can resolve any edition id.
"""

from __future__ import annotations

import html
import logging
import re
import time
import unicodedata
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from bookverse.models.dataset import Catalogue, Dataset
from bookverse.training.prepare import drop_duplicate_pairs, subset_catalogue

logger = logging.getLogger(__name__)

WORK_ALIASES_KEY = "work_aliases"
"""``Dataset.extras`` key of the ``dict[str, str]`` edition id -> work id."""

_BRACKETED = re.compile(r"\([^()]*\)|\[[^\[\]]*\]")
_NOVEL_SUBTITLE = re.compile(r"[:;]\s*(?:a|an)\b[^:;]{0,40}\bnovel(?:la)?s?\s*$")
_EDITION_MARKERS = re.compile(
    r"\b(?:"
    r"a novel|paperback|hardcover|hardback|mass market|trade paperback|"
    r"large print|large type|unabridged|abridged|audio cd|audio cassette|"
    r"book club edition|movie tie[ -]in|tie[ -]in edition|reprint|"
    r"(?:\w+ )?anniversary edition|"
    r"(?:\d+(?:st|nd|rd|th)|first|second|third|revised|special|deluxe|"
    r"illustrated|collector s|new|updated|expanded) edition"
    r")\b"
)
_NOT_WORD = re.compile(r"[^0-9a-z]+")
_ARTICLES = frozenset({"the", "a", "an", "le", "la", "les", "el", "der", "die", "das"})
_NAME_SUFFIXES = frozenset({"jr", "sr", "ii", "iii", "iv", "phd", "md", "dr"})


@dataclass(frozen=True)
class WorkMap:
    """Which work each merged edition became.

    Attributes
    ----------
    aliases : dict of str to str
        Canonical id of every edition merged away -> the canonical id of its
        work's representative edition (which is in the catalogue). Ids that
        are not keys (representatives, books left alone) name themselves.
    n_grouped_editions : int
        Editions in works of two or more editions, representatives included.
    n_grouped_works : int
        Works of two or more editions.
    """

    aliases: dict[str, str]
    n_grouped_editions: int
    n_grouped_works: int

    def resolve(self, item_id: str) -> str:
        """The work id of an edition id (itself when it was not merged)."""
        return self.aliases.get(item_id, item_id)


def fold_text(text: str) -> str:
    """Lower-case ASCII words separated by single spaces.

    Latin-1 read UTF-8 ("colecciÃ³n") is repaired first, HTML entities are
    decoded, accents are folded ("é" -> "e"), "&" becomes "and" and every run
    of other characters a space.
    """
    text = html.unescape(_repair(text)).replace("&", " and ").replace("'", "")
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore")
    return _NOT_WORD.sub(" ", ascii_text.decode("ascii").lower()).strip()


def _repair(text: str) -> str:
    """UTF-8 that was read as latin-1, decoded again; other text unchanged."""
    try:
        return text.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return text


def title_key(title: str) -> str:
    """The normalised form of a title; ``""`` when nothing is left."""
    text = _repair(title).lower()
    previous = None
    while previous != text:
        previous, text = text, _BRACKETED.sub(" ", text)
    text = _NOVEL_SUBTITLE.sub("", text.strip())
    words = _EDITION_MARKERS.sub(" ", fold_text(text)).split()
    if len(words) > 1 and words[0] in _ARTICLES:
        words = words[1:]
    return " ".join(words)


def author_key(author: str) -> str:
    """Last name and first initial of an author; ``""`` when none.

    A single name ("Voltaire") is kept whole.
    """
    if "," in author:
        last, _, first = author.partition(",")
        author = f"{first} {last}"
    words = [w for w in fold_text(author).split() if w not in _NAME_SUFFIXES]
    if not words:
        return ""
    if len(words) == 1:
        return words[0]
    return f"{words[-1]} {words[0][0]}"


def work_keys(catalogue: Catalogue) -> list[str]:
    """One work key per catalogue row, ``""`` for a row without title or author."""
    keys = []
    for title, author in zip(catalogue.titles, catalogue.authors, strict=True):
        t, a = title_key(title), author_key(author)
        keys.append(f"{t}|{a}" if t and a else "")
    return keys


def group_works(dataset: Dataset) -> tuple[Dataset, WorkMap]:
    """Merge the editions of each work into one catalogue row.

    Parameters
    ----------
    dataset : Dataset
        Interactions over (n_items,) editions.

    Returns
    -------
    dataset : Dataset
        Interactions over (n_works,) works, each under its most-read edition's
        id and metadata, repeated (reader, work) pairs dropped
        (``prepare.drop_duplicate_pairs``); ``item_`` extras take the
        representative's value and ``extras[WORK_ALIASES_KEY]`` holds
        ``WorkMap.aliases``. Works keep their representatives' relative order.
    work_map : WorkMap

    Raises
    ------
    ValueError
        If an ``item_`` extra is not one entry per catalogue row.
    """
    started = time.perf_counter()
    group = _group_codes(work_keys(dataset.catalogue))
    counts = np.bincount(dataset.items, minlength=dataset.n_items)

    # representative: most interactions, then the lower index
    rows = np.arange(dataset.n_items)
    order = np.lexsort((rows, -counts, group))
    first = np.ones(len(order), dtype=bool)
    first[1:] = group[order[1:]] != group[order[:-1]]
    representatives = np.sort(order[first])

    # old item index -> new work index, through the group
    work_of_group = np.empty(len(representatives), dtype=np.int64)
    work_of_group[group[representatives]] = np.arange(len(representatives))
    item_map = work_of_group[group]

    ids = dataset.catalogue.item_ids
    merged = np.ones(dataset.n_items, dtype=bool)
    merged[representatives] = False
    aliases = dict(
        zip(
            ids[merged].tolist(),
            ids[representatives[item_map[merged]]].tolist(),
            strict=True,
        )
    )
    sizes = np.bincount(group)
    work_map = WorkMap(aliases, int(sizes[sizes > 1].sum()), int((sizes > 1).sum()))

    grouped = replace(
        dataset,
        catalogue=subset_catalogue(dataset.catalogue, representatives),
        items=item_map[dataset.items].astype(np.int32),
        extras={
            **_item_extras(dataset, representatives),
            WORK_ALIASES_KEY: aliases,
        },
    )
    deduped = drop_duplicate_pairs(grouped)
    logger.info(
        "works: %s editions merged into %s works (%s catalogue rows -> %s); "
        "%s repeated (reader, work) pairs dropped, in %.1fs",
        work_map.n_grouped_editions,
        work_map.n_grouped_works,
        dataset.n_items,
        deduped.n_items,
        grouped.n_interactions - deduped.n_interactions,
        time.perf_counter() - started,
    )
    return deduped, work_map


def _group_codes(keys: list[str]) -> np.ndarray:
    """A group per distinct non-empty key, a group of its own per empty one."""
    codes, uniques = pd.factorize(pd.Series(keys, dtype=object))
    codes = codes.astype(np.int64)
    empty = np.flatnonzero(np.asarray(keys, dtype=object) == "")
    if len(uniques) and "" in set(uniques.tolist()):
        codes[empty] = len(uniques) + np.arange(len(empty))
    # renumber densely, so that codes index arrays of the number of groups
    _, dense = np.unique(codes, return_inverse=True)
    return dense.ravel().astype(np.int64)


def _item_extras(dataset: Dataset, representatives: np.ndarray) -> dict[str, Any]:
    """Extras with every ``item_`` entry cut to the representatives."""
    extras: dict[str, Any] = {}
    for key, value in dataset.extras.items():
        entries: Any = value
        if not key.startswith("item_"):
            extras[key] = entries
        elif len(entries) != dataset.n_items:
            raise ValueError(
                f"extras[{key!r}] must have one entry per book ({dataset.n_items}), "
                f"got {len(entries)}"
            )
        elif isinstance(entries, np.ndarray):
            extras[key] = entries[representatives]
        else:
            extras[key] = [entries[i] for i in representatives.tolist()]
    return extras
