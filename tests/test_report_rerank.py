"""Choosing the re-ranking setting of ``bookverse-train evaluate`` on
validation pools, and the meta-ranker's validation folds."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from test_features import small_dataset

from bookverse.models.rerank import ExposureSettings
from bookverse.training import report
from bookverse.training.ranker import FOLD_READERS, MAX_FOLDS, folds_for

N_READERS, N_ITEMS, WIDTH = 300, 400, 220


def crowded_pools(seed: int = 0) -> tuple[report.Pools, sp.csr_matrix]:
    """Every reader ranks the same popular head first, then books of their
    own; each reader's one target book sits at one of the first three places,
    which every grid setting keeps."""
    rng = np.random.default_rng(seed)
    candidates = np.empty((N_READERS, WIDTH), dtype=np.int64)
    targets = np.empty(N_READERS, dtype=np.int64)
    for reader in range(N_READERS):
        own = rng.permutation(np.arange(20, N_ITEMS))[: WIDTH - 20]
        candidates[reader] = np.concatenate([rng.permutation(20), own])
        targets[reader] = candidates[reader, rng.integers(0, 3)]
    scores = np.tile(np.linspace(1.0, 0.0, WIDTH, dtype=np.float32), (N_READERS, 1))
    test = sp.csr_matrix(
        (np.ones(N_READERS), (np.arange(N_READERS), targets)),
        shape=(N_READERS, N_ITEMS),
    )
    return report.Pools(np.arange(N_READERS), candidates, scores), test


def test_the_chosen_setting_meets_the_target_and_is_in_the_grid() -> None:
    pools, test = crowded_pools()
    embeddings = np.eye(N_ITEMS, 4, dtype=np.float32)
    choice = report.choose_rerank(pools, test, embeddings, k=10)
    assert choice["met"]
    assert isinstance(choice["exposure"], ExposureSettings)
    tried = [g["exposure"] for g in choice["grid"]]
    assert choice["exposure"] in tried
    assert len(tried) == len(report.EXPOSURE_HEADS) * len(report.EXPOSURE_DEPTHS)
    best = choice["grid"][tried.index(choice["exposure"])]
    assert best["coverage_ratio"] >= report.COVERAGE_GAIN
    assert best["ndcg_ratio"] >= report.NDCG_KEPT
    # no other setting meeting the target lies farther inside both bounds
    meeting = [
        g
        for g in choice["grid"]
        if g["coverage_ratio"] >= report.COVERAGE_GAIN
        and g["ndcg_ratio"] >= report.NDCG_KEPT
    ]
    assert all(report._margin(g) <= report._margin(best) for g in meeting)
    # the plain lists (top 10 of the shared head of 20) are the base
    assert choice["base"]["coverage"] == pytest.approx(20 / N_ITEMS)


def test_applying_the_choice_reproduces_its_validation_ratio() -> None:
    pools, test = crowded_pools(seed=1)
    embeddings = np.eye(N_ITEMS, 4, dtype=np.float32)
    choice = report.choose_rerank(pools, test, embeddings, k=10)
    setting = report.Rerank(embeddings, 0.0, None, exposure=choice["exposure"])
    # each pass starts a fresh ledger, so a second pass gives the same lists
    first = pools.lists(test, 10, setting).top
    again = pools.lists(test, 10, setting).top
    np.testing.assert_array_equal(first, again)
    covered = len(np.unique(first[first >= 0])) / N_ITEMS
    grid = {g["exposure"]: g for g in choice["grid"]}
    expected = grid[choice["exposure"]]["coverage_ratio"]
    assert covered / choice["base"]["coverage"] == pytest.approx(expected)


def test_the_author_cap_holds_in_every_list_measured() -> None:
    pools, test = crowded_pools(seed=2)
    embeddings = np.eye(N_ITEMS, 4, dtype=np.float32)
    authors = np.array([f"author {i % 7}" for i in range(N_ITEMS)])
    choice = report.choose_rerank(pools, test, embeddings, 10, authors, 2)
    assert choice["max_per_author"] == 2
    assert report.manifest_rerank(choice)["max_per_author"] == 2
    setting = report.Rerank(
        embeddings,
        0.0,
        None,
        exposure=choice["exposure"],
        authors=authors,
        max_per_author=2,
    )
    top = pools.lists(test, 10, setting).top
    for row in top:
        books = row[row >= 0]
        _, per_author = np.unique(authors[books], return_counts=True)
        assert per_author.max() <= 2
        assert len(books) == 10  # 7 authors x 2 leave room for 10


def test_margin_is_the_tighter_of_the_two_bounds() -> None:
    inside = {"coverage_ratio": 3.0, "ndcg_ratio": 0.99}  # 0.5 and 0.8 of room
    assert report._margin(inside) == pytest.approx(0.5)
    tight = {"coverage_ratio": 4.0, "ndcg_ratio": 0.955}  # 1.0 and 0.1
    assert report._margin(tight) == pytest.approx(0.1)
    outside = {"coverage_ratio": 1.5, "ndcg_ratio": 1.0}
    assert report._margin(outside) < 0


def test_manifest_section_carries_the_exposure_setting() -> None:
    choice = {
        "diversity": 0.0,
        "threshold": None,
        "penalty": 0.0,
        "pool": None,
        "head": 0,
        "exposure": ExposureSettings(head=7, depth=50),
    }
    section = report.manifest_rerank(choice)
    assert section["exposure"] == {"head": 7, "depth": 50, "limit": 1, "window": 20000}


def test_small_data_sets_get_more_ranker_folds() -> None:
    data = small_dataset(seed=0)
    readers = int((data.user_items().getnnz(axis=1) > 0).sum())
    expected = min(MAX_FOLDS, max(1, -(-FOLD_READERS // readers)))
    assert folds_for(data) == expected
    assert 1 <= folds_for(data) <= MAX_FOLDS
