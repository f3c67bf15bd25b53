"""Ranking metrics against values worked out by hand, and the evaluation loop."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import pytest
import scipy.sparse as sp

from bookverse.models.base import UserProfile
from bookverse.models.dataset import Catalogue, Dataset
from bookverse.training.evaluate import evaluate_model
from bookverse.training.metrics import (
    average_precision_at_k,
    catalogue_coverage,
    cosine_similarity_fn,
    gini_index,
    intra_list_diversity,
    mean_pairwise_overlap,
    ndcg_at_k,
    precision_at_k,
    ranking_metrics,
    recall_at_k,
)

# reader A: hits at ranks 1 and 3 of 5, |rel| = 3
#   precision = 2/5 = 0.4; recall = 2/3
#   DCG  = 1/log2(2) + 1/log2(4)                 = 1 + 0.5          = 1.5
#   IDCG = min(5, 3) = 3 hits: 1 + 1/log2(3) + 0.5 = 2.1309298
#   nDCG = 1.5 / 2.1309298                                          = 0.7039180
#   AP   = (P@1 + P@3) / |rel| = (1 + 2/3) / 3                      = 0.5555556
# reader B: one hit at rank 5 of 5, |rel| = 10
#   precision = 0.2; recall = 0.1
#   DCG  = 1/log2(6)                                                = 0.3868528
#   IDCG = 5 hits: 1 + 0.6309298 + 0.5 + 0.4306766 + 0.3868528     = 2.9484591
#   nDCG                                                            = 0.1312056
#   AP   = (P@5) / |rel| = 0.2 / 10                                 = 0.02
# reader C: no test books: left out of every mean
HITS = np.array(
    [[1, 0, 1, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]],
    dtype=bool,
)
N_RELEVANT = np.array([3, 10, 0])


def test_per_reader_metrics_by_hand() -> None:
    np.testing.assert_allclose(precision_at_k(HITS), [0.4, 0.2, 0.0])
    np.testing.assert_allclose(recall_at_k(HITS, N_RELEVANT), [2 / 3, 0.1, 0.0])
    np.testing.assert_allclose(
        ndcg_at_k(HITS, N_RELEVANT), [0.7039180, 0.1312056, 0.0], atol=1e-6
    )
    np.testing.assert_allclose(
        average_precision_at_k(HITS, N_RELEVANT), [5 / 9, 0.02, 0.0], atol=1e-9
    )


def test_means_leave_out_readers_without_test_books() -> None:
    means = ranking_metrics(HITS, N_RELEVANT)
    assert means["n_users"] == 2
    assert means["precision@5"] == pytest.approx(0.3)
    assert means["recall@5"] == pytest.approx((2 / 3 + 0.1) / 2)
    assert means["ndcg@5"] == pytest.approx((0.7039180 + 0.1312056) / 2, abs=1e-6)
    assert means["map@5"] == pytest.approx((5 / 9 + 0.02) / 2)


def test_perfect_list_scores_one_when_rel_fits() -> None:
    # |rel| = 2 < k = 4, both at the top: nDCG 1, AP 1, recall 1, precision 0.5
    hits = np.array([[1, 1, 0, 0]], dtype=bool)
    means = ranking_metrics(hits, np.array([2]))
    assert means["ndcg@4"] == pytest.approx(1.0)
    assert means["map@4"] == pytest.approx(1.0)
    assert means["recall@4"] == pytest.approx(1.0)
    assert means["precision@4"] == pytest.approx(0.5)


def test_more_hits_than_relevant_is_refused() -> None:
    with pytest.raises(ValueError, match="n_relevant must be >= the hits"):
        ranking_metrics(np.ones((1, 3), dtype=bool), np.array([2]))


def test_coverage_and_gini_by_hand() -> None:
    # counts over 5 items: [1, 2, 1, 0, 0]; coverage 3/5
    # sorted [0, 0, 1, 1, 2], weights 2i - n - 1 = [-4, -2, 0, 2, 4]
    # G = (0 + 0 + 0 + 2 + 8) / (5 * 4) = 0.5
    top = np.array([[0, 1], [1, 2]])
    assert catalogue_coverage(top, 5) == pytest.approx(0.6)
    assert gini_index(top, 5) == pytest.approx(0.5)
    assert gini_index(np.array([[0, 1], [2, 3]]), 4) == pytest.approx(0.0)
    assert gini_index(np.full((2, 2), -1), 4) == 0.0


def test_overlap_by_hand() -> None:
    # lists {0,1}, {1,2}, {0,1}, k = 2: pairs share 1, 2 and 1 items
    # -> (1/2 + 2/2 + 1/2) / 3 = 2/3
    top = np.array([[0, 1], [1, 2], [0, 1]])
    assert mean_pairwise_overlap(top) == pytest.approx(2 / 3)
    assert mean_pairwise_overlap(np.array([[0, 1], [0, 1]])) == pytest.approx(1.0)
    assert mean_pairwise_overlap(np.array([[0, 1], [2, 3]])) == pytest.approx(0.0)


def test_intra_list_diversity_by_hand() -> None:
    # e0 = (1, 0), e1 = (0, 1), e2 = (1, 1)/sqrt 2, e3 = 0
    # [0, 1]: 1 - 0 = 1;  [0, 2]: 1 - 0.7071068 = 0.2928932;  mean 0.6464466
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    top = np.array([[0, 1], [0, 2], [3, -1]])
    for form in (vectors, sp.csr_matrix(vectors)):
        similarity = cosine_similarity_fn(form)
        assert intra_list_diversity(top, similarity) == pytest.approx(0.6464466)
    assert cosine_similarity_fn(vectors)(np.array([3, 0]))[0, 1] == 0.0


# evaluation loop --------------------------------------------------------------


class Oracle:
    """Scores a fixed (n_users, n_items) table: test books high, others low."""

    name: ClassVar[str] = "oracle"

    def __init__(self, table: np.ndarray) -> None:
        self.table = table

    def fit(self, dataset: Dataset) -> Self:
        return self

    def score(self, profile: UserProfile, items: np.ndarray | None = None) -> Any:
        raise NotImplementedError

    def score_users(self, user_items: sp.csr_matrix, users: np.ndarray) -> Any:
        return self.table[users]

    def params(self) -> dict[str, Any]:
        return {}

    def save(self, directory: Path) -> list[str]:
        return []

    @classmethod
    def load(cls, directory: Path, params: dict[str, Any]) -> Self:
        raise NotImplementedError


def split_pair(n_users: int = 3, n_items: int = 6) -> tuple[Dataset, Dataset]:
    catalogue = Catalogue(
        item_ids=np.array([str(i) for i in range(n_items)]),
        titles=[""] * n_items,
        authors=[""] * n_items,
        years=np.zeros(n_items, np.int32),
        publishers=[""] * n_items,
        genres=[()] * n_items,
    )

    def part(users: list[int], items: list[int]) -> Dataset:
        n = len(users)
        return Dataset(
            "tiny",
            np.array([str(u) for u in range(n_users)]),
            catalogue,
            np.array(users, np.int32),
            np.array(items, np.int32),
            np.zeros(n, np.float32),
            np.zeros(n, np.int64),
            (1.0, 5.0),
            "plain",
        )

    # reader 0 read 0, 1 and will read 2, 3; reader 1 read 5, will read 0;
    # reader 2 read 4 and has no test book
    return part([0, 0, 1, 2], [0, 1, 5, 4]), part([0, 0, 1], [2, 3, 0])


def test_evaluate_model_masks_training_books_and_ranks_all() -> None:
    train, test = split_pair()
    # the table puts training books first: they must be skipped
    table = np.array(
        [
            [9, 8, 1, 7, 0, 2],  # unseen order: 3, 5, 2, 4 -> hits at 1 and 3
            [5, 0, 0, 0, 0, 9],  # unseen order: 0, ... -> hit at 1
            [0, 0, 0, 0, 0, 0],
        ],
        dtype=np.float32,
    )
    result = evaluate_model(Oracle(table), train, test, k=3, batch_size=1)
    # reader 0: hits [1, 0, 1], |rel| 2: P 2/3, R 1, AP (1 + 2/3)/2
    #   nDCG = (1 + 0.5) / (1 + 0.6309298) = 0.9197208
    # reader 1: hits [1, 0, 0], |rel| 1: P 1/3, R 1, AP 1, nDCG 1
    assert result["n_users"] == 2
    assert result["precision@3"] == pytest.approx(0.5)
    assert result["recall@3"] == pytest.approx(1.0)
    assert result["map@3"] == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)
    assert result["ndcg@3"] == pytest.approx((0.9197208 + 1) / 2, abs=1e-6)
    # lists: reader 0 -> 3, 5, 2; reader 1 -> 0 and two of 1..4
    assert 0 < result["coverage"] <= 1
    assert result["seconds"] >= 0


def test_evaluate_model_refuses_mismatched_splits() -> None:
    train, _ = split_pair()
    _, other = split_pair(n_users=4)
    with pytest.raises(ValueError, match="share readers and catalogue"):
        evaluate_model(Oracle(np.zeros((4, 6))), train, other)
