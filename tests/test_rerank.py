"""Maximal marginal relevance re-ranking on small lists worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from bookverse.models.rerank import cosine_matrix, mmr

# items 10 and 11 point the same way, 12 is orthogonal to both
CANDIDATES = np.array([10, 11, 12])
RELEVANCE = np.array([1.0, 0.9, 0.0])
VECTORS = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])


def test_no_diversity_keeps_the_relevance_order() -> None:
    items, scores = mmr(CANDIDATES, RELEVANCE, VECTORS, n=3, diversity=0.0)
    assert items.tolist() == [10, 11, 12]
    np.testing.assert_allclose(scores, [1.0, 0.9, 0.0], atol=1e-6)


def test_diversity_moves_the_near_duplicate_down() -> None:
    # step 1: 0.5*[1, .9, 0] -> 10 (0.5); max_sim becomes [1, 1, 0]
    # step 2: 11: 0.45 - 0.5 = -0.05, 12: 0 - 0 = 0 -> 12; step 3: 11
    items, scores = mmr(CANDIDATES, RELEVANCE, VECTORS, n=3, diversity=0.5)
    assert items.tolist() == [10, 12, 11]
    np.testing.assert_allclose(scores, [0.5, 0.0, -0.05], atol=1e-6)


def test_threshold_skips_close_items_while_others_remain() -> None:
    # 11 is too close to 10, so 12 comes first; then only 11 is left
    items, scores = mmr(
        CANDIDATES, RELEVANCE, VECTORS, n=3, diversity=0.0, similarity_threshold=0.5
    )
    assert items.tolist() == [10, 12, 11]
    # 11's own marginal score (0.9) is above 12's: the running minimum keeps
    # the scores in list order
    np.testing.assert_allclose(scores, [1.0, 0.0, 0.0], atol=1e-6)


def test_author_cap_limits_books_per_author_but_not_unknown_authors() -> None:
    items, _ = mmr(
        CANDIDATES,
        RELEVANCE,
        VECTORS,
        n=3,
        diversity=0.0,
        authors=["Ann Lee", "ann lee ", "Bo Yu"],
        max_per_author=1,
    )
    assert items.tolist() == [10, 12]
    items, _ = mmr(
        CANDIDATES,
        RELEVANCE,
        VECTORS,
        n=3,
        diversity=0.0,
        authors=["", "", "Bo Yu"],
        max_per_author=1,
    )
    assert items.tolist() == [10, 11, 12]


def test_ties_go_to_the_lower_item_index() -> None:
    items, _ = mmr(np.array([7, 3, 5]), np.ones(3), np.eye(3), n=3, diversity=0.2)
    assert items.tolist() == [3, 5, 7]


def test_n_cuts_the_list_and_zero_gives_nothing() -> None:
    items, scores = mmr(CANDIDATES, RELEVANCE, VECTORS, n=1)
    assert items.tolist() == [10] and scores.shape == (1,)
    items, scores = mmr(CANDIDATES, RELEVANCE, VECTORS, n=0)
    assert items.shape == (0,) and scores.shape == (0,)


def test_scores_never_increase_and_sorting_by_them_keeps_the_order() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        c = 40
        vectors = rng.normal(size=(c, 4))
        candidates = rng.permutation(1000)[:c]
        relevance = rng.random(c)
        items, scores = mmr(
            candidates,
            relevance,
            vectors,
            n=15,
            diversity=0.4,
            similarity_threshold=0.3,
            authors=[f"a{i % 5}" for i in range(c)],
            max_per_author=3,
        )
        assert np.all(np.diff(scores) <= 0)
        assert items[np.argsort(-scores, kind="stable")].tolist() == items.tolist()
        assert len(set(items.tolist())) == len(items) == 15


def test_function_dense_and_sparse_similarities_agree() -> None:
    dense = mmr(CANDIDATES, RELEVANCE, VECTORS, n=3, diversity=0.5)
    sparse = mmr(CANDIDATES, RELEVANCE, sp.csr_matrix(VECTORS), n=3, diversity=0.5)
    by_fn = mmr(
        CANDIDATES,
        RELEVANCE,
        lambda items: cosine_matrix(VECTORS[items - 10]),
        n=3,
        diversity=0.5,
    )
    for items, scores in (sparse, by_fn):
        assert items.tolist() == dense[0].tolist()
        np.testing.assert_allclose(scores, dense[1])


def test_cosine_matrix_of_a_zero_row_is_zero() -> None:
    cosines = cosine_matrix(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(cosines, [[1.0, 0.0], [0.0, 0.0]])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"diversity": 1.5}, "diversity"),
        ({"n": -1}, "n must"),
        ({"similarity_threshold": float("nan")}, "similarity_threshold"),
        ({"max_per_author": 0}, "max_per_author"),
        ({"max_per_author": 1}, "authors"),
    ],
)
def test_bad_arguments_name_the_parameter(kwargs: dict, field: str) -> None:
    args = {"n": 3, **kwargs}
    with pytest.raises(ValueError, match=field):
        mmr(CANDIDATES, RELEVANCE, VECTORS, **args)


def test_misaligned_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="relevance"):
        mmr(CANDIDATES, RELEVANCE[:2], VECTORS, n=2)
    with pytest.raises(ValueError, match="similarity"):
        mmr(CANDIDATES, RELEVANCE, VECTORS[:2], n=2)
    with pytest.raises(ValueError, match="distinct"):
        mmr(np.array([1, 1]), np.ones(2), np.eye(2), n=2)


# -- the popularity penalty and the pool ----------------------------------------

# 10 read by 3 readers, 11 by 1, 12 by none: log(1 + count) / log(4) = 1, 0.5, 0
READERS = np.array([3.0, 1.0, 0.0])


def test_penalty_moves_the_popular_item_down_by_beta() -> None:
    # only 10 is read: rel' = [1 - 0.2, 0.9, 0] -> 11 ahead of 10
    items, scores = mmr(
        CANDIDATES,
        RELEVANCE,
        VECTORS,
        n=3,
        diversity=0.0,
        popularity=np.array([3.0, 0.0, 0.0]),
        popularity_penalty=0.2,
    )
    assert items.tolist() == [11, 10, 12]
    np.testing.assert_allclose(scores, [0.9, 0.8, 0.0], atol=1e-6)


def test_penalty_scales_with_log_readers() -> None:
    # rel' = [1 - 0.2 * 1, 0.9 - 0.2 * 0.5, 0 - 0] = [0.8, 0.8, 0]; a tie
    # goes to the lower item index
    items, scores = mmr(
        CANDIDATES,
        RELEVANCE,
        VECTORS,
        n=3,
        diversity=0.0,
        popularity=READERS,
        popularity_penalty=0.2,
    )
    assert items.tolist() == [10, 11, 12]
    np.testing.assert_allclose(scores, [0.8, 0.8, 0.0], atol=1e-6)


def test_penalty_is_scaled_with_relevance_under_diversity() -> None:
    # lambda 0.5: base = 0.5 * [0.8, 0.8, 0] -> 10 (0.4); max_sim [1, 1, 0]
    # then 11: 0.4 - 0.5 = -0.1, 12: 0 -> 12, then 11
    items, scores = mmr(
        CANDIDATES,
        RELEVANCE,
        VECTORS,
        n=3,
        diversity=0.5,
        popularity=READERS,
        popularity_penalty=0.2,
    )
    assert items.tolist() == [10, 12, 11]
    np.testing.assert_allclose(scores, [0.4, 0.0, -0.1], atol=1e-6)


def test_unread_candidates_take_no_penalty() -> None:
    plain = mmr(CANDIDATES, RELEVANCE, VECTORS, n=3, diversity=0.3)
    unread = mmr(
        CANDIDATES,
        RELEVANCE,
        VECTORS,
        n=3,
        diversity=0.3,
        popularity=np.zeros(3),
        popularity_penalty=5.0,
    )
    assert unread[0].tolist() == plain[0].tolist()
    np.testing.assert_allclose(unread[1], plain[1])


def test_pool_drops_all_but_the_most_relevant() -> None:
    # pool 2 keeps 10 and 11; 12 (orthogonal, the diverse pick) is gone
    items, scores = mmr(CANDIDATES, RELEVANCE, VECTORS, n=3, diversity=0.5, pool=2)
    assert items.tolist() == [10, 11]
    # relevance is normalised over the pool: [1, 0] -> 0.5 then 0 - 0.5
    np.testing.assert_allclose(scores, [0.5, -0.5], atol=1e-6)


def test_pool_ties_go_to_the_lower_item_index() -> None:
    items, _ = mmr(
        np.array([7, 3, 5]), np.ones(3), np.eye(3), n=3, diversity=0.0, pool=2
    )
    assert items.tolist() == [3, 5]


def test_pool_with_vectors_and_with_a_function_agree() -> None:
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(30, 4))
    candidates = rng.permutation(100)[:30]
    relevance = rng.random(30)
    readers = rng.integers(0, 50, size=30).astype(float)
    order = {int(item): j for j, item in enumerate(candidates)}
    by_fn = mmr(
        candidates,
        relevance,
        lambda items: cosine_matrix(vectors[[order[int(i)] for i in items]]),
        n=8,
        diversity=0.4,
        popularity=readers,
        popularity_penalty=0.5,
        pool=12,
    )
    dense = mmr(
        candidates,
        relevance,
        vectors,
        n=8,
        diversity=0.4,
        popularity=readers,
        popularity_penalty=0.5,
        pool=12,
    )
    assert by_fn[0].tolist() == dense[0].tolist()
    np.testing.assert_allclose(by_fn[1], dense[1])
    assert set(dense[0].tolist()) <= set(candidates[np.argsort(-relevance)[:12]])


def test_head_places_go_by_relevance_alone() -> None:
    # head 1: 10 first by relevance (1.0) though penalised to 0.5 * 0.8; then
    # 0.5 * [., 0.8, 0] - 0.5 * max_sim [., 1, 0] -> 12 (0), 11 (-0.1)
    items, scores = mmr(
        CANDIDATES,
        RELEVANCE,
        VECTORS,
        n=3,
        diversity=0.5,
        popularity=READERS,
        popularity_penalty=0.2,
        head=1,
    )
    assert items.tolist() == [10, 12, 11]
    np.testing.assert_allclose(scores, [1.0, 0.0, -0.1], atol=1e-6)
    # a head as long as the list is the relevance order
    items, _ = mmr(
        CANDIDATES,
        RELEVANCE,
        VECTORS,
        n=3,
        diversity=0.9,
        popularity=READERS,
        popularity_penalty=1.0,
        head=3,
    )
    assert items.tolist() == [10, 11, 12]


def test_defaults_leave_the_list_unchanged() -> None:
    rng = np.random.default_rng(2)
    for _ in range(10):
        c = 40
        vectors = rng.normal(size=(c, 4))
        candidates = rng.permutation(1000)[:c]
        relevance = rng.random(c)
        args = (candidates, relevance, vectors, 15, 0.4, 0.3)
        before = mmr(*args)
        for kwargs in (
            {"popularity": rng.integers(0, 9, size=c).astype(float)},
            {"popularity_penalty": 0.0},
            {"pool": None},
            {"pool": c},
            {"pool": c + 5},
            {"head": 0},
        ):
            after = mmr(*args, **kwargs)  # type: ignore[arg-type]
            assert after[0].tolist() == before[0].tolist()
            np.testing.assert_array_equal(after[1], before[1])


def test_existing_parameters_keep_their_order_and_defaults() -> None:
    import inspect

    parameters = list(inspect.signature(mmr).parameters.values())
    assert [(p.name, p.default) for p in parameters[3:8]] == [
        ("n", inspect.Parameter.empty),
        ("diversity", 0.3),
        ("similarity_threshold", None),
        ("authors", None),
        ("max_per_author", None),
    ]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters[8:])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"popularity_penalty": -0.1, "popularity": READERS}, "popularity_penalty"),
        (
            {"popularity_penalty": float("nan"), "popularity": READERS},
            "popularity_penalty",
        ),
        ({"popularity_penalty": 0.5}, "popularity must"),
        ({"popularity": READERS[:2]}, "popularity must"),
        ({"popularity": np.array([1.0, -1.0, 0.0])}, "popularity must"),
        ({"pool": 0}, "pool"),
        ({"head": -1}, "head"),
    ],
)
def test_bad_popularity_arguments_name_the_parameter(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        mmr(CANDIDATES, RELEVANCE, VECTORS, n=3, **kwargs)
