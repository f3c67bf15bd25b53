"""Serving the meta-ranker and MMR re-ranking from a real published bundle.

The bundle is ``ranker_published``: the served model families and a small
real meta-ranker trained on the same data. Recommend and Explain go over a
real channel to a server on 127.0.0.1; the re-ranking variants are published
beside it and loaded with the real ``ServingBundle.load``.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import LiveServer, Published, serving

from bookverse.models.base import Model, UserProfile
from bookverse.models.bundle import MANIFEST, POINTER, BundleError, read_manifest
from bookverse.models.features import RequestContext
from bookverse.models.ranker import MetaRanker
from bookverse.models.registry import load_model
from bookverse.recommendations.v1 import recommendations_pb2 as pb
from bookverse.server.app import warm_up
from bookverse.server.bundle import ServingBundle
from bookverse.server.config import ExperimentConfig
from bookverse.server.recommender import Recommendations, Recommender
from bookverse.server.validation import Filters, RecommendQuery

TIMEOUT = 30.0
READERS = 5


# offline: the ranker's order recomputed from the bundle's files


def folder_of(published: Published) -> Path:
    return published.root / "versions" / published.version


def offline_order(folder: Path, row: int, n: int) -> tuple[list[str], np.ndarray]:
    """Book ids and ranker scores of a training reader's best ``n``, computed
    from the files alone: models, ranker, training history."""
    manifest = read_manifest(folder)
    models: dict[str, Model] = {
        name: load_model(name, folder / name, dict(spec["params"]))
        for name, spec in manifest.models.items()
    }
    ranker = MetaRanker.load(folder / "meta_ranker", manifest.data["ranker"]["params"])
    history = sp.load_npz(folder / "user_items.npz").tocsr()[row]
    profile = UserProfile(
        row,
        history.indices.astype(np.int64),
        history.data.astype(np.float32),
    )
    # the server never recommends a book without a title
    titles = json.loads((folder / "catalogue.json").read_text())["titles"]
    untitled = np.flatnonzero([not t.strip() for t in titles])
    pool, base = ranker.candidates(models, profile, exclude=untitled)
    rows = ranker.build(pool, base, profile, reader=row, context=RequestContext())
    scores = ranker.score(rows)
    ids = np.load(folder / "item_ids.npy")[pool]
    order = np.lexsort((ids, -scores))[:n]
    return [str(i) for i in ids[order]], scores[order]


def readers_with_history(bundle: ServingBundle, count: int) -> list[tuple[str, int]]:
    """``count`` training readers (id, row) spread over the reader rows."""
    rows = np.linspace(0, bundle.n_users - 1, count).astype(int)
    ids = {row: user for user, row in bundle.user_index.items()}
    return [(ids[int(row)], int(row)) for row in rows]


def assert_list_contract(items: Any, n: int, ids: set[str]) -> None:
    """Unique, known, finite, at most ``n``, by score desc then id asc."""
    books = [item.book_id for item in items]
    assert len(books) <= n
    assert len(set(books)) == len(books)
    assert set(books) <= ids
    scores = [item.score for item in items]
    assert all(math.isfinite(s) for s in scores)
    assert all(0.0 <= item.confidence <= 1.0 for item in items)
    keys = [(-s, b) for s, b in zip(scores, books, strict=True)]
    assert keys == sorted(keys)


# fixtures


@pytest.fixture(scope="module")
def ranker_bundle(ranker_published: Published) -> ServingBundle:
    return ServingBundle.load(folder_of(ranker_published))


@pytest.fixture(scope="module")
def ranker_server(
    ranker_published: Published, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """The real server on 127.0.0.1:0 over the ranker bundle."""
    events_db = tmp_path_factory.mktemp("ranker-events") / "events.db"
    with serving(ranker_published.root, events_db) as live:
        yield live


def variant(
    published: Published,
    tmp_path: Path,
    change: Callable[[dict[str, Any]], None],
) -> Path:
    """A copy of the published bundle with its manifest changed by ``change``."""
    folder = tmp_path / "versions" / published.version
    shutil.copytree(folder_of(published), folder)
    path = folder / MANIFEST
    manifest = json.loads(path.read_text(encoding="utf-8"))
    change(manifest)
    path.write_text(json.dumps(manifest), encoding="utf-8")
    return folder


def with_rerank(
    published: Published, tmp_path: Path, rerank: dict[str, Any]
) -> ServingBundle:
    return ServingBundle.load(
        variant(published, tmp_path, lambda m: m.update(rerank=rerank))
    )


def recommend(
    bundle: ServingBundle, user: str, n: int = 10, **filters: Any
) -> Recommendations:
    query = RecommendQuery(user, n, Filters(**filters), (), "test")
    return Recommender(None, ExperimentConfig(), 0.0).recommend(bundle, query)


# the ranker path over a real channel


def test_a_known_reader_gets_the_rankers_own_order(
    ranker_server: LiveServer,
    ranker_published: Published,
    ranker_bundle: ServingBundle,
) -> None:
    folder = folder_of(ranker_published)
    for user, row in readers_with_history(ranker_bundle, READERS):
        answer = ranker_server.stub.Recommend(
            pb.RecommendRequest(user_id=user, n=10), timeout=TIMEOUT
        )
        books, scores = offline_order(folder, row, 10)
        assert answer.strategy == pb.STRATEGY_PERSONALIZED
        assert "meta-ranker" in answer.strategy_reason
        assert [item.book_id for item in answer.items] == books
        np.testing.assert_allclose(
            [item.score for item in answer.items], scores, rtol=1e-5, atol=1e-6
        )


FILTERS: dict[str, dict[str, Any]] = {
    "none": {},
    "already read allowed": {"include_already_read": True},
    "recent books only": {"min_year": 1995},
    "old books only": {"max_year": 1980},
}


@pytest.mark.parametrize("n", [1, 10, 100])
@pytest.mark.parametrize("name", sorted(FILTERS))
def test_the_list_contract_holds_on_the_ranker_path(
    ranker_server: LiveServer, ranker_bundle: ServingBundle, name: str, n: int
) -> None:
    ids = set(map(str, ranker_bundle.catalogue.item_ids))
    for user, _ in readers_with_history(ranker_bundle, 3):
        request = pb.RecommendRequest(
            user_id=user, n=n, filters=pb.Filters(**FILTERS[name])
        )
        answer = ranker_server.stub.Recommend(request, timeout=TIMEOUT)
        assert answer.items, f"{name}: nothing for {user}"
        assert_list_contract(answer.items, n, ids)
        years = [item.year for item in answer.items]
        if "min_year" in FILTERS[name]:
            assert all(year >= 1995 for year in years)
        if "max_year" in FILTERS[name]:
            assert all(0 < year <= 1980 for year in years)


def test_an_author_filter_tops_the_pool_up_from_the_blend(
    ranker_server: LiveServer, ranker_bundle: ServingBundle
) -> None:
    user, _ = readers_with_history(ranker_bundle, 1)[0]
    first = ranker_server.stub.Recommend(
        pb.RecommendRequest(user_id=user, n=10), timeout=TIMEOUT
    )
    author = first.items[0].author
    request = pb.RecommendRequest(
        user_id=user, n=30, filters=pb.Filters(only_authors=[author])
    )
    answer = ranker_server.stub.Recommend(request, timeout=TIMEOUT)
    ids = set(map(str, ranker_bundle.catalogue.item_ids))
    assert answer.items
    assert_list_contract(answer.items, 30, ids)
    assert {item.author.casefold() for item in answer.items} == {author.casefold()}


def test_the_request_context_reaches_the_ranker_path(
    ranker_server: LiveServer, ranker_bundle: ServingBundle
) -> None:
    user, _ = readers_with_history(ranker_bundle, 1)[0]
    context = pb.Context(device=pb.DEVICE_EREADER, utc_offset_minutes=-300)
    context.local_time.FromSeconds(1_733_000_000)
    answer = ranker_server.stub.Recommend(
        pb.RecommendRequest(user_id=user, context=context), timeout=TIMEOUT
    )
    assert answer.strategy == pb.STRATEGY_PERSONALIZED
    assert "meta-ranker" in answer.strategy_reason
    assert len(answer.items) == 10


def test_a_tracked_book_grows_the_history_the_ranker_scores(
    ranker_server: LiveServer, ranker_bundle: ServingBundle
) -> None:
    # a reader no other test asks for: their history changes here
    user = next(u for u, row in ranker_bundle.user_index.items() if row == 1)
    before = ranker_server.stub.Recommend(
        pb.RecommendRequest(user_id=user, n=10), timeout=TIMEOUT
    )
    book = before.items[0].book_id
    ranker_server.stub.TrackInteraction(
        pb.TrackInteractionRequest(
            user_id=user, book_id=book, type=pb.INTERACTION_TYPE_FINISHED
        ),
        timeout=TIMEOUT,
    )
    after = ranker_server.stub.Recommend(
        pb.RecommendRequest(user_id=user, n=10), timeout=TIMEOUT
    )
    assert "meta-ranker" in after.strategy_reason
    assert book not in [item.book_id for item in after.items]
    assert len(after.items) == 10


def test_an_unknown_reader_keeps_the_blend(ranker_server: LiveServer) -> None:
    answer = ranker_server.stub.Recommend(
        pb.RecommendRequest(user_id="never-seen-reader"), timeout=TIMEOUT
    )
    assert answer.strategy == pb.STRATEGY_COLD_START
    assert "meta-ranker" not in answer.strategy_reason
    assert len(answer.items) == 10


def test_explain_names_the_rankers_place_and_score(
    ranker_server: LiveServer, ranker_bundle: ServingBundle
) -> None:
    user, _ = readers_with_history(ranker_bundle, 1)[0]
    answer = ranker_server.stub.Recommend(
        pb.RecommendRequest(user_id=user, n=3), timeout=TIMEOUT
    )
    for rank, item in enumerate(answer.items, start=1):
        explained = ranker_server.stub.Explain(
            pb.ExplainRequest(user_id=user, book_id=item.book_id), timeout=TIMEOUT
        )
        lines = [r for r in explained.reasons if "meta-ranker" in r]
        assert len(lines) == 1
        assert f"rank {rank} of the" in lines[0]
        assert explained.score == pytest.approx(item.score, rel=1e-5)
        assert explained.contributions


# re-ranking, on bundles loaded by the real ServingBundle.load


def test_an_author_cap_of_one_gives_one_book_per_author(
    ranker_published: Published, ranker_bundle: ServingBundle, tmp_path: Path
) -> None:
    capped = with_rerank(
        ranker_published, tmp_path, {"diversity": 0.3, "max_per_author": 1}
    )
    ids = set(map(str, capped.catalogue.item_ids))
    for user, _ in readers_with_history(ranker_bundle, READERS):
        answer = recommend(capped, user, n=20)
        assert answer.items
        assert "re-ranked" in answer.strategy_reason
        assert_list_contract(answer.items, 20, ids)
        authors = [i.author.strip().casefold() for i in answer.items if i.author]
        assert len(authors) == len(set(authors))
    cold = recommend(capped, "never-seen-reader", n=20)
    authors = [i.author.strip().casefold() for i in cold.items if i.author]
    assert len(authors) == len(set(authors))


def test_no_diversity_and_no_cap_keep_the_plain_order(
    ranker_published: Published, ranker_bundle: ServingBundle, tmp_path: Path
) -> None:
    plain_mmr = with_rerank(ranker_published, tmp_path, {"diversity": 0.0})
    users = [user for user, _ in readers_with_history(ranker_bundle, READERS)]
    for user in [*users, "never-seen-reader"]:
        for n in (1, 10, 40):
            plain = recommend(ranker_bundle, user, n=n)
            reranked = recommend(plain_mmr, user, n=n)
            assert [i.book_id for i in reranked.items] == [
                i.book_id for i in plain.items
            ]


def test_diversity_changes_the_list_but_keeps_its_contract(
    ranker_published: Published, ranker_bundle: ServingBundle, tmp_path: Path
) -> None:
    diverse = with_rerank(
        ranker_published, tmp_path, {"diversity": 0.9, "embedding": "content"}
    )
    ids = set(map(str, diverse.catalogue.item_ids))
    changed = 0
    for user, _ in readers_with_history(ranker_bundle, READERS):
        plain = recommend(ranker_bundle, user, n=10)
        reranked = recommend(diverse, user, n=10)
        assert_list_contract(reranked.items, 10, ids)
        changed += [i.book_id for i in reranked.items] != [
            i.book_id for i in plain.items
        ]
    assert changed


# a ranker or re-ranking the server must refuse


def swap_first_two(features: list[str]) -> list[str]:
    return [features[1], features[0], *features[2:]]


REFUSALS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "manifest list differs from the ranker's params": (
        lambda m: m["ranker"].update(features=swap_first_two(m["ranker"]["features"])),
        "ranker.params.features",
    ),
    "both lists differ from the booster's": (
        lambda m: [
            m["ranker"].update(features=swap_first_two(m["ranker"]["features"])),
            m["ranker"]["params"].update(features=m["ranker"]["features"]),
        ],
        "meta_ranker/",
    ),
    "a feature the ranker cannot build": (
        lambda m: [
            m["ranker"].update(features=[*m["ranker"]["features"], "moon_phase"]),
            m["ranker"]["params"].update(features=m["ranker"]["features"]),
        ],
        "moon_phase",
    ),
    "a base model the bundle lacks": (
        lambda m: m["ranker"]["params"].update(
            base_models=[*m["ranker"]["params"]["base_models"], "ease"]
        ),
        "base_models",
    ),
    "a ranker file outside the checksums": (
        lambda m: m["ranker"].update(files=["meta_ranker/elsewhere.json"]),
        "checksummed",
    ),
    "diversity above 1": (
        lambda m: m.update(rerank={"diversity": 1.5}),
        "rerank.diversity",
    ),
    "an author cap of 0": (
        lambda m: m.update(rerank={"max_per_author": 0}),
        "rerank.max_per_author",
    ),
    "an unknown embedding": (
        lambda m: m.update(rerank={"embedding": "bert"}),
        "rerank.embedding",
    ),
    "a threshold that is no number": (
        lambda m: m.update(rerank={"similarity_threshold": "high"}),
        "rerank.similarity_threshold",
    ),
}


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_a_broken_ranker_or_rerank_is_refused(
    ranker_published: Published, tmp_path: Path, name: str
) -> None:
    change, named = REFUSALS[name]
    folder = variant(ranker_published, tmp_path, change)
    with pytest.raises(BundleError, match=named.replace(".", r"\.")):
        ServingBundle.load(folder)


def test_an_unknown_rerank_key_is_ignored_with_one_warning(
    ranker_published: Published, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="bookverse.server.bundle"):
        bundle = with_rerank(
            ranker_published, tmp_path, {"diversity": 0.2, "colour_penalty": 0.5}
        )
    warnings = [r for r in caplog.records if "colour_penalty" in r.getMessage()]
    assert len(warnings) == 1
    assert bundle.rerank is not None
    assert "colour_penalty" not in bundle.rerank.extra


# time


def test_too_little_time_for_the_ranker_serves_the_blend(
    ranker_bundle: ServingBundle, published: Published
) -> None:
    blend_only = ServingBundle.load(folder_of(published))
    user, _ = readers_with_history(ranker_bundle, 1)[0]
    query = RecommendQuery(user, 10, Filters(), (), "test")
    margin = 5.0
    late = Recommender(None, ExperimentConfig(), margin).recommend(
        ranker_bundle, query, deadline=time.monotonic() + 1.5 * margin
    )
    blend = Recommender(None, ExperimentConfig(), 0.0).recommend(blend_only, query)
    assert not late.degraded
    assert "meta-ranker" not in late.strategy_reason
    assert [i.book_id for i in late.items] == [i.book_id for i in blend.items]


# answers a new user found wrong


def test_an_unknown_reader_gets_the_most_popular_books_first(
    ranker_bundle: ServingBundle,
) -> None:
    answer = recommend(ranker_bundle, "brand-new-reader", n=5)
    popular = ranker_bundle.popular_order
    expected = [
        str(ranker_bundle.catalogue.item_ids[r])
        for r in popular[ranker_bundle.titled[popular]][:2]
    ]
    ids = [item.book_id for item in answer.items]
    # the re-ranking may move books below the first places, not the head
    assert ids[:2] == expected
    assert all(item.score > 0 for item in answer.items[:2])


def test_only_authors_lifts_the_author_cap(
    ranker_published: Published, ranker_bundle: ServingBundle, tmp_path: Path
) -> None:
    capped = with_rerank(
        ranker_published, tmp_path, {"diversity": 0.0, "max_per_author": 1}
    )
    counts = np.bincount(np.unique(capped.author_keys, return_inverse=True)[1].ravel())
    keys = np.unique(capped.author_keys)
    author = next(k for k, c in zip(keys, counts, strict=True) if k and c >= 4)
    user, _ = readers_with_history(ranker_bundle, 1)[0]
    answer = recommend(capped, user, n=3, only_authors=(author,))
    assert len(answer.items) == 3
    assert {i.author.strip().casefold() for i in answer.items} == {author}


def test_include_already_read_brings_read_books_back_with_a_ranker(
    ranker_bundle: ServingBundle,
) -> None:
    user, row = readers_with_history(ranker_bundle, 1)[0]
    read = ranker_bundle.user_items[row].indices
    authors = {ranker_bundle.author_keys[b] for b in read} - {""}
    answer = recommend(
        ranker_bundle,
        user,
        n=100,
        include_already_read=True,
        only_authors=tuple(authors),
    )
    assert any(item.already_seen for item in answer.items)


# the exposure ledger: tail places spread over readers, the head stays


EXPOSURE = {"diversity": 0.0, "exposure": {"head": 3, "depth": 40}}

EXPOSURE_REFUSALS = {
    "not an object": ("high", "rerank.exposure must be an object"),
    "a negative head": ({"head": -1, "depth": 40}, "rerank.exposure.head"),
    "a zero depth": ({"head": 3, "depth": 0}, "rerank.exposure.depth"),
    "a window that is no integer": (
        {"head": 3, "depth": 40, "window": 2.5},
        "rerank.exposure.window",
    ),
    "no depth": ({"head": 3}, "must give \\['depth'\\]"),
    "a depth beyond the bound": (
        {"head": 3, "depth": 10**30},
        "rerank.exposure.depth must be an integer in 1..10000",
    ),
    "an unknown key": ({"head": 3, "depth": 40, "tilt": 1}, "tilt"),
}


@pytest.mark.parametrize("name", sorted(EXPOSURE_REFUSALS))
def test_a_broken_exposure_setting_is_refused(
    ranker_published: Published, tmp_path: Path, name: str
) -> None:
    exposure, named = EXPOSURE_REFUSALS[name]
    folder = variant(
        ranker_published, tmp_path, lambda m: m.update(rerank={"exposure": exposure})
    )
    with pytest.raises(BundleError, match=named):
        ServingBundle.load(folder)


def test_exposure_keeps_the_head_and_moves_the_tail_on_a_repeat(
    ranker_published: Published, tmp_path: Path
) -> None:
    bundle = with_rerank(ranker_published, tmp_path, EXPOSURE)
    plain = with_rerank(ranker_published, tmp_path / "plain", {"diversity": 0.0})
    (user, _), *_ = readers_with_history(bundle, 1)
    expected = [item.book_id for item in recommend(plain, user).items]
    answer = recommend(bundle, user)
    assert "the places after the first 3 given to books shown less" in (
        answer.strategy_reason
    )
    first = [item.book_id for item in answer.items]
    second = [item.book_id for item in recommend(bundle, user).items]
    assert first == expected  # a fresh ledger has shown nothing yet
    assert set(second[:3]) == set(expected[:3])
    assert not set(second[3:]) & set(first[3:])  # shown once: other books now
    for answer in (first, second):
        assert len(answer) == 10 == len(set(answer))


def test_exposure_covers_more_books_over_many_readers(
    ranker_published: Published, tmp_path: Path
) -> None:
    bundle = with_rerank(ranker_published, tmp_path, EXPOSURE)
    plain = with_rerank(ranker_published, tmp_path / "plain", {"diversity": 0.0})
    readers = readers_with_history(bundle, 30)
    covered = {
        name: {
            item.book_id
            for user, _ in readers
            for item in recommend(served, user).items
        }
        for name, served in (("plain", plain), ("exposure", bundle))
    }
    slots = 10 * len(readers)
    assert len(covered["exposure"]) > len(covered["plain"])
    assert len(covered["exposure"]) >= 0.95 * slots  # nearly every place a new book


def test_exposure_answers_keep_the_list_contract_over_a_channel(
    ranker_published: Published, tmp_path: Path
) -> None:
    folder = variant(ranker_published, tmp_path, lambda m: m.update(rerank=EXPOSURE))
    bundle = ServingBundle.load(folder)
    ids = set(bundle.catalogue.item_ids.tolist())
    (tmp_path / POINTER).write_text(folder.name, encoding="utf-8")
    with serving(tmp_path, tmp_path / "events.db") as live:
        for user, _ in readers_with_history(bundle, READERS):
            answers = []
            for _ in range(3):
                answer = live.stub.Recommend(
                    pb.RecommendRequest(user_id=user, n=10), timeout=TIMEOUT
                )
                assert len(answer.items) == 10
                assert_list_contract(answer.items, 10, ids)
                answers.append([item.book_id for item in answer.items])
            # the served bundle is the exposure one: a repeat moves the tail
            assert answers[0][3:] != answers[1][3:]


def test_the_warm_up_leaves_a_fresh_ledger(
    ranker_published: Published, tmp_path: Path
) -> None:
    bundle = with_rerank(ranker_published, tmp_path, EXPOSURE)
    assert bundle.ledger is not None
    everything = np.arange(bundle.n_items)
    recommend(bundle, readers_with_history(bundle, 1)[0][0])
    assert bundle.ledger.shown(everything).sum() == 10  # a real answer counts
    warm_up(Recommender(None, ExperimentConfig(), 0.0), bundle, threads=1)
    assert bundle.ledger.shown(everything).sum() == 0


def test_a_depth_below_n_keeps_the_order_beyond_it(
    ranker_published: Published, tmp_path: Path
) -> None:
    shallow = {"diversity": 0.0, "exposure": {"head": 0, "depth": 3}}
    bundle = with_rerank(ranker_published, tmp_path, shallow)
    plain = with_rerank(ranker_published, tmp_path / "plain", {"diversity": 0.0})
    user = readers_with_history(bundle, 1)[0][0]
    expected = [item.book_id for item in recommend(plain, user).items]
    recommend(bundle, user, n=3)  # shows the three best
    again = [item.book_id for item in recommend(bundle, user).items]
    assert again == expected  # nothing fresh within depth: the plain order
