"""Editions grouped into works on a tiny catalogue."""

from __future__ import annotations

import numpy as np
import pytest

from bookverse.models.dataset import Catalogue, Dataset
from bookverse.training.works import (
    WORK_ALIASES_KEY,
    author_key,
    group_works,
    title_key,
)

TITLES = [
    "The Lovely Bones: A Novel",
    "Lovely Bones (Paperback)",
    "The Lovely Bones",
    "",
    "",
]
AUTHORS = ["Alice Sebold", "SEBOLD, ALICE", "John Smith", "", ""]
IDS = ["9780316666343", "9780316168816", "9780000000002", "ODD1", "ODD2"]


def _dataset(users: list[int], items: list[int]) -> Dataset:
    catalogue = Catalogue(
        item_ids=np.array(IDS),
        titles=list(TITLES),
        authors=list(AUTHORS),
        years=np.array([2002, 2004, 1999, 0, 0], dtype=np.int32),
        publishers=["Little, Brown", "Back Bay", "X", "", ""],
        genres=[()] * 5,
    )
    n = len(users)
    return Dataset(
        name="tiny",
        user_ids=np.array([str(u) for u in range(max(users) + 1)]),
        catalogue=catalogue,
        users=np.array(users, dtype=np.int32),
        items=np.array(items, dtype=np.int32),
        ratings=np.arange(n, dtype=np.float32),
        timestamps=np.zeros(n, dtype=np.int64),
        rating_scale=(1.0, 10.0),
        id_scheme="isbn",
        extras={
            "item_has_metadata": np.array([True, True, True, False, False]),
            "user_age": np.zeros(max(users) + 1, dtype=np.float32),
        },
    )


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("The Lovely Bones: A Novel", "lovely bones"),
        ("Lovely Bones (Paperback)", "lovely bones"),
        ("Dracula (Signet Classics (Paperback))", "dracula"),
        ("Angels &amp; Demons", "angels and demons"),
        ("El disputado voto del seÃ±or Cayo", "disputado voto del senor cayo"),
        ("Blackberry Wine : a Kate Shugak novel", "blackberry wine"),
        ("Emma: 10th Anniversary Edition", "emma"),
        ("The", "the"),
    ],
)
def test_title_key(raw: str, key: str) -> None:
    assert title_key(raw) == key


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("J.K. Rowling", "rowling j"),
        ("Joanne K. Rowling", "rowling j"),
        ("ROWLING, J. K.", "rowling j"),
        ("Martin Luther King Jr.", "king m"),
        ("Voltaire", "voltaire"),
        ("Émile Zola", "zola e"),
        ("", ""),
    ],
)
def test_author_key(raw: str, key: str) -> None:
    assert author_key(raw) == key


def test_two_editions_of_one_book_merge_under_the_most_read_one() -> None:
    # reader 0 read both editions; readers 1 and 2 read the paperback (1)
    data = _dataset([0, 0, 1, 2, 0, 1], [0, 1, 1, 1, 2, 3])
    grouped, work_map = group_works(data)

    assert grouped.catalogue.item_ids.tolist() == [IDS[1], IDS[2], IDS[3], IDS[4]]
    assert grouped.catalogue.authors[0] == "SEBOLD, ALICE"
    assert grouped.catalogue.years.tolist() == [2004, 1999, 0, 0]
    assert work_map.aliases == {IDS[0]: IDS[1]}
    assert work_map.resolve(IDS[0]) == IDS[1] and work_map.resolve(IDS[2]) == IDS[2]
    assert (work_map.n_grouped_editions, work_map.n_grouped_works) == (2, 1)
    assert grouped.extras[WORK_ALIASES_KEY] == work_map.aliases

    # reader 0's two editions became one (reader, work) pair
    pairs = sorted(zip(grouped.users.tolist(), grouped.items.tolist(), strict=True))
    assert pairs == [(0, 0), (0, 1), (1, 0), (1, 2), (2, 0)]
    assert grouped.extras["item_has_metadata"].tolist() == [True, True, False, False]
    assert len(grouped.extras["user_age"]) == 3


def test_same_title_other_author_and_books_without_metadata_stay_apart() -> None:
    data = _dataset([0, 1, 2, 3], [0, 2, 3, 4])
    grouped, work_map = group_works(data)
    titles = grouped.catalogue.titles
    assert grouped.n_items == 4
    assert "The Lovely Bones" in titles and "" in titles
    assert titles.count("") == 2
    assert work_map.aliases == {IDS[1]: IDS[0]}


def test_editions_read_equally_often_merge_under_the_lower_index() -> None:
    grouped, work_map = group_works(_dataset([0, 1], [2, 3]))
    assert work_map.aliases == {IDS[1]: IDS[0]}
    assert grouped.n_items == 4 and grouped.n_interactions == 2


def test_misaligned_item_extra_is_refused() -> None:
    data = _dataset([0], [0])
    data.extras["item_bad"] = [1, 2]
    with pytest.raises(ValueError, match="item_bad"):
        group_works(data)
