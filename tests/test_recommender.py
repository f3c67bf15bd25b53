"""The request-time pipeline on in-memory bundles: normal paths and edge cases."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import BLEND_WEIGHTS, fit_models, synthetic_dataset

from bookverse.models.base import UserProfile
from bookverse.models.dataset import Catalogue, Dataset
from bookverse.server.bundle import ServingBundle
from bookverse.server.config import ExperimentConfig
from bookverse.server.errors import Cancelled, NotFound
from bookverse.server.recommender import (
    FALLBACK_CONFIDENCE,
    Recommender,
    Source,
    Strategy,
)
from bookverse.server.validation import ExplainQuery, Filters, RecommendQuery


@dataclass(frozen=True)
class Event:
    book_id: str
    kind: str


@dataclass
class FakeEvents:
    """Tracked events by reader, newest first; ``fail`` makes reads raise."""

    by_reader: dict[str, list[Event]] = field(default_factory=dict)
    fail: bool = False

    def recent(self, user_id: str, limit: int = 200) -> list[Event]:
        if self.fail:
            raise RuntimeError("database is locked")
        return self.by_reader.get(user_id, [])[:limit]


@dataclass
class FixedModel:
    """Scores every reader alike from a fixed array (for edge cases)."""

    values: np.ndarray

    def score(self, profile: UserProfile, items: Any = None) -> np.ndarray:
        values = np.asarray(self.values, dtype=np.float32)
        return values if items is None else values[np.asarray(items, dtype=np.int64)]


def bundle_of(
    dataset: Dataset, models: dict[str, Any], weights: dict[str, float]
) -> ServingBundle:
    return ServingBundle.from_parts(
        version="test-v1",
        catalogue=dataset.catalogue,
        user_ids=dataset.user_ids,
        user_items=dataset.user_items(),
        models=models,
        weights=weights,
        id_scheme=dataset.id_scheme,
        rating_scale=dataset.rating_scale,
    )


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return synthetic_dataset()


@pytest.fixture(scope="module")
def bundle(dataset: Dataset) -> ServingBundle:
    return bundle_of(dataset, fit_models(dataset), BLEND_WEIGHTS)


def query(user_id: str, n: int = 10, **filters: Any) -> RecommendQuery:
    session = tuple(filters.pop("session", ()))
    return RecommendQuery(user_id, n, Filters(**filters), session, "test")


def recommender(events: FakeEvents | None = None, margin: float = 0.0) -> Recommender:
    return Recommender(events or FakeEvents(), ExperimentConfig(), margin)


def history_ids(dataset: Dataset, user: int) -> set[str]:
    return set(dataset.catalogue.item_ids[dataset.items[dataset.users == user]])


def test_known_reader_is_personalized_sorted_and_unique(
    bundle: ServingBundle, dataset: Dataset
) -> None:
    answer = recommender().recommend(bundle, query(str(dataset.user_ids[0]), n=12))
    assert answer.strategy is Strategy.PERSONALIZED
    assert len(answer.items) == 12
    ids = [item.book_id for item in answer.items]
    assert len(set(ids)) == 12
    assert not set(ids) & history_ids(dataset, 0)
    keys = [(-item.score, item.book_id) for item in answer.items]
    assert keys == sorted(keys)
    for item in answer.items:
        assert 0.0 <= item.confidence <= 1.0
        assert item.reason
    assert answer.candidates_scored >= 12
    # confidence measures agreement, not the score
    confidences = [item.confidence for item in answer.items]
    assert confidences != [item.score for item in answer.items]


def test_tracked_events_fold_in_and_move_the_whole_ranking(
    bundle: ServingBundle, dataset: Dataset
) -> None:
    user = str(dataset.user_ids[7])
    before = recommender().recommend(bundle, query(user, n=40))
    tracked = [Event(before.items[i].book_id, "purchase") for i in (0, 5)]
    events = FakeEvents({user: tracked})

    reader = recommender(events).resolve(bundle, user, np.zeros(0, np.int64))
    assert reader.profile.user_index is None
    assert reader.known

    after = recommender(events).recommend(bundle, query(user, n=40))
    gone = {e.book_id for e in tracked}
    assert not gone & {item.book_id for item in after.items}
    old = {i.book_id: i.score for i in before.items if i.book_id not in gone}
    new = {i.book_id: i.score for i in after.items}
    common = [b for b in old if b in new]
    assert any(abs(old[b] - new[b]) > 1e-6 for b in common)


def test_reader_known_only_from_events_is_personalized(
    bundle: ServingBundle, dataset: Dataset
) -> None:
    book = str(dataset.catalogue.item_ids[3])
    events = FakeEvents({"fresh": [Event(book, "view"), Event("unknown", "view")]})
    answer = recommender(events).recommend(bundle, query("fresh"))
    assert answer.strategy is Strategy.PERSONALIZED
    assert book not in {item.book_id for item in answer.items}


def test_unknown_reader_is_cold_start_and_follows_the_session(
    bundle: ServingBundle, dataset: Dataset
) -> None:
    plain = recommender().recommend(bundle, query("stranger"))
    assert plain.strategy is Strategy.COLD_START
    assert all(item.confidence <= 0.3 for item in plain.items)
    assert all(item.source is Source.POPULARITY for item in plain.items)

    # a session of poetry books (genre 5) pulls poetry up
    poetry = [str(dataset.catalogue.item_ids[i]) for i in (5, 11, 17)]
    shaped = recommender().recommend(bundle, query("stranger", session=poetry))
    assert shaped.strategy is Strategy.COLD_START
    assert not set(poetry) & {item.book_id for item in shaped.items}
    rows = [bundle.book_index[item.book_id] for item in shaped.items[:5]]
    assert sum(dataset.catalogue.genres[r] == ("poetry",) for r in rows) >= 3


def test_unknown_ids_in_filters_and_context_are_ignored_and_counted(
    bundle: ServingBundle,
) -> None:
    answer = recommender().recommend(
        bundle,
        query(
            "stranger",
            session=["no-such-book", "9780000000000"],
            exclude_book_ids=("nope",),
        ),
    )
    assert answer.ignored_unknown_ids == 3
    assert len(answer.items) == 10


def test_filters_on_authors_and_years(bundle: ServingBundle, dataset: Dataset) -> None:
    author = dataset.catalogue.authors[4]
    only = recommender().recommend(
        bundle, query("1001", only_authors=(author.upper().casefold(),))
    )
    assert only.items
    assert {item.author for item in only.items} == {author}

    ranged = recommender().recommend(bundle, query("1001", n=50, min_year=1980))
    assert ranged.items
    assert all(item.year >= 1980 for item in ranged.items)  # unknown (0) left out

    excluded = recommender().recommend(
        bundle, query("1001", n=50, exclude_authors=(author.casefold(),))
    )
    assert author not in {item.author for item in excluded.items}


def test_include_already_read_flags_seen_books(
    bundle: ServingBundle, dataset: Dataset
) -> None:
    user = str(dataset.user_ids[2])
    answer = recommender().recommend(
        bundle, query(user, n=100, include_already_read=True)
    )
    seen = {item.book_id for item in answer.items if item.already_seen}
    assert seen and seen <= history_ids(dataset, 2)


def test_filters_that_leave_nothing_give_an_empty_flagged_answer(
    bundle: ServingBundle,
) -> None:
    answer = recommender().recommend(
        bundle, query("1001", only_authors=("nobody by this name",))
    )
    assert answer.items == []
    assert answer.strategy is Strategy.PERSONALIZED
    assert "filters" in answer.strategy_reason


def test_reader_who_read_everything_gets_an_empty_flagged_answer(
    bundle: ServingBundle, dataset: Dataset
) -> None:
    everything = [Event(str(b), "finished") for b in dataset.catalogue.item_ids]
    events = FakeEvents({"bookworm": everything})
    answer = recommender(events).recommend(bundle, query("bookworm"))
    assert answer.items == []
    assert "already read every book" in answer.strategy_reason


def test_reader_who_saw_every_candidate_gets_popular_unread_books(
    bundle: ServingBundle, dataset: Dataset
) -> None:
    # everything but the three least popular books
    unread = bundle.popular_order[-3:]
    read = [
        Event(str(b), "finished")
        for row, b in enumerate(dataset.catalogue.item_ids)
        if row not in unread
    ]
    answer = recommender(FakeEvents({"nearly": read})).recommend(
        bundle, query("nearly", n=5)
    )
    assert {bundle.book_index[i.book_id] for i in answer.items} == set(unread.tolist())


def test_non_finite_scores_fall_back_to_popular_books(
    bundle: ServingBundle, dataset: Dataset
) -> None:
    broken = np.full(bundle.n_items, np.nan, dtype=np.float32)
    models = {**bundle.models, "als": FixedModel(broken)}
    nan_bundle = replace(bundle, models=models)
    answer = recommender().recommend(nan_bundle, query(str(dataset.user_ids[0])))
    assert answer.strategy is Strategy.FALLBACK
    assert "not finite" in answer.strategy_reason
    assert len(answer.items) == 10
    assert all(item.confidence == FALLBACK_CONFIDENCE for item in answer.items)
    assert not {i.book_id for i in answer.items} & history_ids(dataset, 0)


def test_empty_catalogue_gives_an_empty_flagged_answer() -> None:
    catalogue = Catalogue(
        np.array([], dtype=str), [], [], np.zeros(0, np.int32), [], []
    )
    empty = ServingBundle.from_parts(
        version="empty",
        catalogue=catalogue,
        user_ids=np.array([], dtype=str),
        user_items=sp.csr_matrix((0, 0), dtype=np.float32),
        models={"popularity": FixedModel(np.zeros(0))},
        weights={"popularity": 1.0},
        id_scheme="isbn",
        rating_scale=(1.0, 10.0),
    )
    answer = recommender().recommend(empty, query("anyone"))
    assert answer.items == []
    assert answer.strategy is Strategy.FALLBACK
    assert "empty" in answer.strategy_reason


def test_ties_are_broken_by_book_id(dataset: Dataset) -> None:
    flat = {"popularity": FixedModel(np.ones(dataset.n_items))}
    tied = bundle_of(dataset, flat, {"popularity": 1.0})
    answer = recommender().recommend(tied, query("stranger", n=20))
    ids = [item.book_id for item in answer.items]
    assert ids == sorted(ids)


def test_deadline_too_close_gives_a_degraded_popularity_answer(
    bundle: ServingBundle, dataset: Dataset
) -> None:
    user = str(dataset.user_ids[0])
    answer = recommender(margin=0.05).recommend(
        bundle, query(user), deadline=time.monotonic() + 0.01
    )
    assert answer.degraded and answer.degraded_code == "deadline"
    assert answer.strategy is Strategy.FALLBACK
    assert answer.degraded_reason
    assert len(answer.items) == 10
    assert not {i.book_id for i in answer.items} & history_ids(dataset, 0)


def test_a_cancelled_call_stops(bundle: ServingBundle) -> None:
    with pytest.raises(Cancelled):
        recommender().recommend(bundle, query("1000"), math.inf, lambda: True)


def test_unreadable_events_serve_the_training_history_flagged(
    bundle: ServingBundle, dataset: Dataset
) -> None:
    answer = recommender(FakeEvents(fail=True)).recommend(
        bundle, query(str(dataset.user_ids[0]))
    )
    assert answer.strategy is Strategy.PERSONALIZED
    assert answer.degraded and answer.degraded_code == "events"
    assert len(answer.items) == 10


def test_experiment_weights_replace_the_bundle_weights(
    bundle: ServingBundle, dataset: Dataset
) -> None:
    only_popularity = ExperimentConfig(
        variant="popular-only",
        weights=(("als", 0.0), ("item_knn", 0.0), ("content", 0.0)),
    )
    answer = Recommender(FakeEvents(), only_popularity, 0.0).recommend(
        bundle, query(str(dataset.user_ids[0]))
    )
    assert answer.experiment_variant == "popular-only"
    rows = [bundle.book_index[item.book_id] for item in answer.items]
    popularity = bundle.models["popularity"].score(UserProfile.empty(), None)
    assert list(popularity[rows]) == sorted(popularity[rows], reverse=True)


def test_explain_unknown_book_is_not_found(bundle: ServingBundle) -> None:
    with pytest.raises(NotFound) as caught:
        recommender().explain(bundle, ExplainQuery("1000", "no-such-book", "t"))
    assert caught.value.field == "book_id"


def test_explain_matches_recommend_and_adds_up(
    bundle: ServingBundle, dataset: Dataset
) -> None:
    user = str(dataset.user_ids[0])
    top = recommender().recommend(bundle, query(user, n=1)).items[0]
    answer = recommender().explain(bundle, ExplainQuery(user, top.book_id, "t"))
    assert answer.known_to_model and not answer.already_seen
    assert answer.score == pytest.approx(top.score, abs=1e-6)
    total = sum(c.contribution for c in answer.contributions)
    assert answer.score == pytest.approx(total, abs=1e-5)
    assert answer.reasons


def test_explain_book_unknown_to_the_models(dataset: Dataset) -> None:
    # a catalogue row that nobody read
    unread = np.setdiff1d(np.arange(dataset.n_items), dataset.items)
    if len(unread) == 0:
        keep = dataset.items != 0
        dataset = replace(
            dataset,
            users=dataset.users[keep],
            items=dataset.items[keep],
            ratings=dataset.ratings[keep],
            timestamps=dataset.timestamps[keep],
        )
        unread = np.array([0])
    fresh = bundle_of(dataset, fit_models(dataset), BLEND_WEIGHTS)
    book = str(dataset.catalogue.item_ids[unread[0]])
    answer = recommender().explain(fresh, ExplainQuery("1000", book, "t"))
    assert not answer.known_to_model
    assert any("No reader" in reason for reason in answer.reasons)


def test_an_edition_merged_into_a_work_resolves_to_it(
    bundle: ServingBundle, dataset: Dataset
) -> None:
    work = str(dataset.catalogue.item_ids[4])
    edition = "9780000000019"  # ISBN-10 0-00-000001-X, not in the catalogue
    aliased = replace(bundle, aliases={edition: work})
    answer = recommender().explain(aliased, ExplainQuery("1000", "0-00-000001-X", "t"))
    assert answer.book_id == work
    shaped = recommender().recommend(aliased, query("stranger", session=[edition]))
    assert shaped.ignored_unknown_ids == 0
    assert work not in {item.book_id for item in shaped.items}
