"""Maximal marginal relevance re-ranking on small lists worked out by hand."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import scipy.sparse as sp

from bookverse.models.rerank import (
    ExposureLedger,
    ExposureSettings,
    cosine_matrix,
    mmr,
)

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


# -- the sort that stands in for the greedy loop when no pick depends on another


def _greedy_reference(
    candidates: np.ndarray, relevance: np.ndarray, n: int, **kwargs: object
) -> tuple[np.ndarray, np.ndarray]:
    """The greedy loop itself: a threshold far above any cosine forces it
    without changing what it picks."""
    return mmr(
        candidates,
        relevance,
        np.eye(len(candidates)),
        n,
        diversity=0.0,
        similarity_threshold=1e9,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("head", [0, 2, 5])
@pytest.mark.parametrize("penalty", [0.0, 1.5])
@pytest.mark.parametrize("cap", [None, 1, 2])
def test_sorted_picks_equal_the_greedy_loop(
    head: int, penalty: float, cap: int | None
) -> None:
    rng = np.random.default_rng(head * 10 + int(penalty))
    candidates = rng.permutation(400)[:60]
    relevance = np.round(rng.random(60), 1)  # many ties
    readers = rng.integers(0, 50, 60).astype(float)
    authors = [["", "a", "b", "c", "d"][i] for i in rng.integers(0, 5, 60)]
    kwargs = {
        "popularity": readers,
        "popularity_penalty": penalty,
        "head": head,
        "authors": authors,
        "max_per_author": cap,
    }
    fast = mmr(candidates, relevance, np.eye(60), 25, diversity=0.0, **kwargs)
    slow = _greedy_reference(candidates, relevance, 25, **kwargs)
    assert fast[0].tolist() == slow[0].tolist()
    np.testing.assert_allclose(fast[1], slow[1], atol=1e-6)


# -- the exposure ledger -----------------------------------------------------------


def test_ledger_gives_tail_places_to_books_not_shown_yet() -> None:
    ledger = ExposureLedger(20, ExposureSettings(head=2, depth=6))
    ranked = np.array([5, 6, 7, 8, 9, 10, 11])
    first = ranked[ledger.arrange(ranked, 4)]
    assert first.tolist() == [5, 6, 7, 8]
    # 7 and 8 were shown: the next list keeps the head, then 9 and 10
    second = ranked[ledger.arrange(ranked, 4)]
    assert second.tolist() == [5, 6, 9, 10]
    assert ledger.shown(np.array([5, 7, 9, 11])).tolist() == [2, 1, 1, 0]


def test_ledger_fills_from_the_best_shown_books_when_depth_runs_out() -> None:
    ledger = ExposureLedger(10, ExposureSettings(head=1, depth=3))
    ranked = np.array([0, 1, 2, 3, 4])
    ledger.arrange(ranked, 3)  # shows 0, 1, 2
    # within depth 3 nothing is fresh: the best remaining places, in order
    assert ranked[ledger.arrange(ranked, 3)].tolist() == [0, 1, 2]


def test_ledger_limit_counts_a_book_as_shown_only_at_the_limit() -> None:
    ledger = ExposureLedger(10, ExposureSettings(head=0, depth=4, limit=2))
    ranked = np.array([0, 1, 2, 3])
    assert ranked[ledger.arrange(ranked, 2)].tolist() == [0, 1]
    assert ranked[ledger.arrange(ranked, 2)].tolist() == [0, 1]
    assert ranked[ledger.arrange(ranked, 2)].tolist() == [2, 3]


def test_ledger_window_forgets_lists_two_generations_old() -> None:
    ledger = ExposureLedger(5, ExposureSettings(head=0, depth=5, window=2))
    ranked = np.array([0, 1, 2, 3, 4])
    ledger.arrange(ranked, 1)  # generation 1: 0
    ledger.arrange(ranked, 1)  # generation 1: 1; full, becomes the previous
    assert ledger.shown(ranked).tolist() == [1, 1, 0, 0, 0]
    ledger.arrange(ranked, 1)  # generation 2: 2
    ledger.arrange(ranked, 1)  # generation 2: 3; generation 1 is forgotten
    assert ledger.shown(ranked).tolist() == [0, 0, 1, 1, 0]


def test_ledger_never_reaches_below_depth() -> None:
    # depth 2 < n: after the two best were shown, the list is the plain order
    ledger = ExposureLedger(10, ExposureSettings(head=0, depth=2))
    ledger.arrange(np.arange(10), 2)
    assert ledger.arrange(np.arange(10), 4).tolist() == [0, 1, 2, 3]
    # depth 4, head 1: 2 and 3 were not shown, 1 was: [0, 2, 3] then 1
    ledger = ExposureLedger(10, ExposureSettings(head=1, depth=4))
    ledger.arrange(np.arange(10), 2)  # shows 0 and 1
    assert ledger.arrange(np.arange(10), 4).tolist() == [0, 2, 3, 1]


def test_ledger_clear_forgets_everything() -> None:
    ledger = ExposureLedger(5, ExposureSettings(head=0, depth=5, window=2))
    for _ in range(3):
        ledger.arrange(np.arange(5), 2)
    assert ledger.shown(np.arange(5)).sum() > 0
    ledger.clear()
    assert ledger.shown(np.arange(5)).tolist() == [0, 0, 0, 0, 0]
    assert ledger.arrange(np.arange(5), 2).tolist() == [0, 1]


def test_ledger_short_rankings_and_zero_n() -> None:
    ledger = ExposureLedger(5, ExposureSettings(head=3, depth=10))
    assert ledger.arrange(np.array([4, 2]), 5).tolist() == [0, 1]
    assert ledger.arrange(np.array([4, 2]), 0).tolist() == []
    assert ledger.shown(np.array([4, 2])).tolist() == [1, 1]


def test_ledger_spreads_many_readers_over_more_books() -> None:
    # every reader ranks the same 50 books a little differently: plain top-5
    # lists cover few books, arranged ones cover many more at the same depth
    rng = np.random.default_rng(0)
    ledger = ExposureLedger(50, ExposureSettings(head=2, depth=30))
    plain, arranged = set(), set()
    for _ in range(40):
        ranked = np.argsort(-(np.linspace(1, 0, 50) + rng.normal(0, 0.05, 50)))
        plain.update(ranked[:5].tolist())
        arranged.update(ranked[ledger.arrange(ranked, 5)].tolist())
    assert len(arranged) >= 2 * len(plain)


def test_ledger_lists_from_many_threads_never_share_a_fresh_book() -> None:
    ledger = ExposureLedger(2000, ExposureSettings(head=0, depth=2000))
    ranked = np.arange(2000)
    lists: list[list[int]] = []

    def serve() -> None:
        for _ in range(25):
            lists.append(ranked[ledger.arrange(ranked, 10)].tolist())

    threads = [threading.Thread(target=serve) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    books = [book for one in lists for book in one]
    assert len(books) == 8 * 25 * 10 == len(set(books))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"head": -1, "depth": 5}, "head"),
        ({"head": 1, "depth": 0}, "depth"),
        ({"head": 1, "depth": 5, "limit": 0}, "limit"),
        ({"head": 1, "depth": 5, "window": 0}, "window"),
        ({"head": 1.5, "depth": 5}, "head"),
        ({"head": True, "depth": 5}, "head"),
        ({"head": 1, "depth": 10_001}, "depth"),
        ({"head": 1, "depth": 5, "window": 2**31}, "window"),
    ],
)
def test_bad_exposure_settings_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"exposure\.{field} must be an integer in"):
        ExposureSettings(**kwargs)
