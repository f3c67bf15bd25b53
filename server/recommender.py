"""The request-time pipeline: from a checked query to ranked, explained books.

Pure Python and numpy over one :class:`~bookverse.server.bundle.ServingBundle`;
no gRPC types. One Recommend call runs these stages, each after a look at the
clock and at the client:

1. **Reader.** A reader known to training starts from the training history
   (their stored ALS factors are used as is). Their tracked events (the
   latest :data:`RECENT_EVENTS`), read from the interaction store, are
   merged in; a history that grew this way is
   scored with ``user_index=None``, so factor models fold it in and the whole
   ranking moves, not only the tracked book. A reader known only from
   tracked events is folded in the same way. A reader with no history at all
   is a cold start: popular books, plus books like the session's
   (``context.session_book_ids``, which join every reader's profile).
2. **Candidates** (a few hundred, never the whole catalogue): ALS nearest
   items from the FAISS index, item-kNN neighbours of the recent books,
   content neighbours of the session's (or recent) books, and the most
   popular books; books by ``only_authors`` are added when that filter is
   set. Filters then remove books (below); if fewer than ``n`` remain, the
   most popular books that pass the filters top the set up.
3. **Scores and blend.** Every model scores every candidate; each model's
   scores are min-max normalised over the candidates and summed with the
   bundle's (or the experiment's) weights (``WeightedBlend``).
4. **Meta-ranker** (bundles with one, readers with a history, and time for
   it: twice the deadline margin left). The ranker's own pool replaces
   stages 2-3: every base model scores the whole catalogue and each one's
   ``pool`` best books that the filters allow and the reader has not read
   join it (``MetaRanker.candidates``); the ranker scores their feature rows
   (the reader's training row and the request context, :class:`RequestContext`)
   and that score is the relevance. The blend is still computed over the
   pool: its normalised scores give confidence, reasons and Explain's
   contributions. An item's source is the base model that ranks it highest
   in the pool (:data:`MODEL_SOURCES`). If the filters leave fewer than
   ``n`` pooled books, the blend's candidates top the list up below every
   pooled book. A ranker that fails or gives scores that are not finite
   hands the call to the blend path, as does too little time.
5. **Rank.** By relevance (blended or ranker score), descending, ties by
   book id ascending. Without re-ranking the first ``n`` are the answer and
   their relevance is their score. Ids are unique because candidate indices
   are.
6. **Re-rank** (bundles with ``rerank``; every strategy but the degraded
   answer). The best ``max(5 n, 50)`` by relevance go through
   :func:`~bookverse.models.rerank.mmr` with the bundle's diversity,
   similarity threshold and author cap, over ALS item factors or TF-IDF rows
   (the other one when the bundle lacks the one named; no similarity when it
   has neither) and case-folded authors. MMR's score is the final score;
   items are sorted by it, ties by book id. An author cap may shorten the
   list. With ``rerank.exposure`` MMR orders the best ``depth`` instead, and
   the bundle's :class:`~bookverse.models.rerank.ExposureLedger` arranges
   the answer: the first ``head`` places as MMR put them, the others to the
   best books shown fewer than ``limit`` times lately (catalogue coverage
   across readers; a repeated call may so see other books in those places).
   Scores are then the running minimum in that order (ties by book id, as
   always).

Filters: books without a title (ratings of ISBNs the catalogue has no row
for) are never recommended; books the reader already read are removed unless
``include_already_read``; ``exclude_book_ids``; ``only_authors`` and
``exclude_authors`` compare case-folded names; a year bound removes books of
unknown year (0). Unknown ids in filters or context are ignored and counted.

Per item, ``confidence`` in [0, 1] is the evidence behind it, not its score:
the share of weighted models that place the item in their own top
``max(3 n, 30)`` of the candidates, times a history factor
``0.3 + 0.7 * min(1, history / 20)`` (history = books in the reader's
profile; 0 for a cold start, so a cold start stays at or below 0.3). Items of
a popularity fallback get :data:`FALLBACK_CONFIDENCE`. ``reason`` names what
found the item: "Readers of <title> also read this" (item neighbours, and
EASE through item-kNN's strongest contributor), "Similar to <title>"
(content), "Readers with tastes like yours read this" (user neighbours),
"Matches your reading" (ALS, neural, EASE without an anchor) or "Popular
with readers"; when several sources found it, the one whose model adds most
to its blended score speaks (on the ranker path: the base model ranking it
highest in the pool).

Edge cases, each one flagged answer and never an exception: an empty
catalogue, filters that leave nothing, and a reader who has read every book
the filters allow give an empty list with ``strategy_reason`` saying why;
scores that are not finite give the popularity fallback; too little time
before the deadline gives the popularity fallback with ``degraded=True``
(never re-ranked); an unreadable interaction store serves the training
history, flagged degraded.
A cancelled call raises :class:`~bookverse.server.errors.Cancelled`.
"""

from __future__ import annotations

import enum
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from bookverse.models.base import Model, UserProfile
from bookverse.models.features import RequestContext, ranks
from bookverse.models.hybrid import WeightedBlend, min_max
from bookverse.models.ids import normalize_user_id
from bookverse.models.rerank import mmr
from bookverse.server.bundle import RerankSettings, ServingBundle
from bookverse.server.config import ExperimentConfig
from bookverse.server.errors import Cancelled, DeadlineExceeded, NotFound
from bookverse.server.validation import ExplainQuery, Filters, RecommendQuery

logger = logging.getLogger(__name__)

FALLBACK_CONFIDENCE = 0.1

# the blend of a reader with no history: popular books, lifted by likeness
# to the session's books (content, item neighbours) when there is a session
COLD_START_WEIGHTS = {"popularity": 1.0, "content": 1.0, "item_knn": 1.0}
"""Confidence of every item of a popularity fallback: one weak signal."""

KIND_WEIGHTS: dict[str, float] = {
    "view": 0.5,
    "click": 0.5,
    "add_to_list": 1.0,
    "purchase": 1.0,
    "rating": 1.0,
    "finished": 1.0,
}
"""Weight of a tracked event in the reader's profile, by kind (training
interactions weigh 1.0): a glance counts half a reading."""

MF_CANDIDATES = 200
NEIGHBOUR_CANDIDATES = 100
CONTENT_CANDIDATES = 50
POPULAR_CANDIDATES = 100
RECENT_SEEDS = 50
CONTENT_SEEDS = 20
REASON_SEEDS = 3
RECENT_EVENTS = 500
HISTORY_FOR_FULL_CONFIDENCE = 20
POPULAR_REASON_RANK = 100
RERANK_DEPTH = 5
"""MMR reads the best ``max(RERANK_DEPTH * n, MIN_RERANK)`` by relevance."""
MIN_RERANK = 50


class Strategy(enum.Enum):
    PERSONALIZED = "personalized"
    COLD_START = "cold_start"
    FALLBACK = "fallback"


class Source(enum.Enum):
    """What found an item; the value is the model whose scores speak for it."""

    MATRIX_FACTORIZATION = "als"
    ITEM_NEIGHBORS = "item_knn"
    USER_NEIGHBORS = "user_knn"
    CONTENT = "content"
    POPULARITY = "popularity"
    NEURAL = "neural"


# the order in which sources speak when their models add equally
_SOURCES = (
    Source.ITEM_NEIGHBORS,
    Source.CONTENT,
    Source.MATRIX_FACTORIZATION,
    Source.USER_NEIGHBORS,
    Source.NEURAL,
    Source.POPULARITY,
)

MODEL_SOURCES: dict[str, Source] = {
    "item_knn": Source.ITEM_NEIGHBORS,
    "ease": Source.ITEM_NEIGHBORS,
    "content": Source.CONTENT,
    "als": Source.MATRIX_FACTORIZATION,
    "bpr": Source.MATRIX_FACTORIZATION,
    "explicit_mf": Source.MATRIX_FACTORIZATION,
    "user_knn": Source.USER_NEIGHBORS,
    "neural": Source.NEURAL,
    "popularity": Source.POPULARITY,
    "quality": Source.POPULARITY,
}
"""Source of an item the meta-ranker serves, by the base model ranking it
highest in the pool; on equal ranks the model listed first speaks. EASE is an
item-item model. A model not listed counts as matrix factorisation."""


class EventSource(Protocol):
    """Where tracked events are read (``InteractionStore``)."""

    def recent(self, user_id: str, limit: int = ...) -> Sequence[_Event]: ...


class _Event(Protocol):
    book_id: str
    kind: str


@runtime_checkable
class _Retriever(Protocol):
    def candidates(
        self, profile: UserProfile, k: int
    ) -> tuple[np.ndarray, np.ndarray]: ...


@runtime_checkable
class _Neighbours(Protocol):
    def neighbours(
        self, items: np.ndarray, k: int, weights: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def top_contributor(self, profile: UserProfile, item: int) -> int | None: ...


@runtime_checkable
class _Content(Protocol):
    def similar_to(
        self, items: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class Item:
    """One recommended book."""

    book_id: str
    title: str
    author: str
    year: int
    score: float
    confidence: float
    reason: str
    source: Source
    already_seen: bool


@dataclass(frozen=True)
class Recommendations:
    """The answer to one Recommend call.

    ``degraded_code`` is a short fixed word for metrics ("deadline",
    "events"), empty when not degraded.
    """

    items: list[Item]
    strategy: Strategy
    strategy_reason: str
    model_version: str
    experiment_variant: str
    ignored_unknown_ids: int = 0
    candidates_scored: int = 0
    degraded: bool = False
    degraded_reason: str = ""
    degraded_code: str = ""


@dataclass(frozen=True)
class Contribution:
    """One model's part in a book's blended score."""

    model: str
    score: float
    weight: float
    contribution: float


@dataclass(frozen=True)
class Explanation:
    """The answer to one Explain call."""

    book_id: str
    title: str
    author: str
    reasons: list[str]
    contributions: list[Contribution]
    score: float
    strategy: Strategy
    model_version: str
    already_seen: bool
    known_to_model: bool
    experiment_variant: str


@dataclass(frozen=True)
class Reader:
    """What one call knows about its reader.

    ``profile`` is what the models score (history plus session books);
    ``seen`` the books already read (training and tracked); ``seeds`` the
    recent books, newest tracked first, that item neighbours start from.
    """

    user_id: str
    profile: UserProfile
    seen: np.ndarray
    seeds: np.ndarray
    history: int
    known: bool
    session: np.ndarray
    events_failed: bool = False
    training_row: int | None = None

    @property
    def strategy(self) -> Strategy:
        return Strategy.PERSONALIZED if self.history else Strategy.COLD_START


@dataclass
class _Call:
    """The clock and the client of one call, checked between stages."""

    deadline: float
    margin: float
    cancelled: Callable[[], bool]
    stage: str = "start"

    def enough_time(self, stage: str, reserve: float = 0.0) -> bool:
        """False when less than the margin (plus ``reserve``) is left.

        Raises
        ------
        Cancelled
            If the client has gone away.
        """
        self.stage = stage
        if self.cancelled():
            raise Cancelled("the call was cancelled")
        return time.monotonic() + self.margin + reserve < self.deadline


@dataclass(frozen=True)
class _Scored:
    """Candidates with their blend: aligned arrays over the candidate set."""

    items: np.ndarray
    blended: np.ndarray
    normalised: dict[str, np.ndarray]
    weights: dict[str, float]
    sources: dict[Source, set[int]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Ranked:
    """Candidates ready to rank: the blend, the relevance, who found each.

    ``relevance`` (aligned with ``scored.items``) orders the list before
    re-ranking: the blended score, or the meta-ranker's. ``source_of`` maps a
    position to the source that speaks for it; ``by_ranker`` says which path
    made the relevance.
    """

    scored: _Scored
    relevance: np.ndarray
    source_of: Callable[[int], Source]
    by_ranker: bool = False


class Recommender:
    """Answers Recommend and Explain over whichever bundle a call holds.

    Parameters
    ----------
    events : EventSource or None
        The interaction store; ``None`` serves training histories only.
    experiment : ExperimentConfig
        Variant name and blend-weight overrides.
    deadline_margin_s : float
        Time kept in reserve: a stage that would start with less left
        answers with the degraded popularity fallback instead.
    """

    def __init__(
        self,
        events: EventSource | None,
        experiment: ExperimentConfig,
        deadline_margin_s: float,
    ) -> None:
        self.events = events
        self.experiment = experiment
        self.deadline_margin_s = deadline_margin_s

    # Recommend

    def recommend(
        self,
        bundle: ServingBundle,
        query: RecommendQuery,
        deadline: float = math.inf,
        cancelled: Callable[[], bool] = lambda: False,
        context: RequestContext | None = None,
    ) -> Recommendations:
        """Rank books for one reader (module docstring for every stage).

        Parameters
        ----------
        bundle : ServingBundle
            The one bundle this call uses throughout.
        query : RecommendQuery
            The checked request.
        deadline : float
            ``time.monotonic()`` value by which the answer must be ready.
        cancelled : callable
            True once the client has gone away.
        context : RequestContext or None
            Local hour, weekday and device of the request, for the ranker.

        Returns
        -------
        Recommendations

        Raises
        ------
        Cancelled
            If ``cancelled()`` turns true between two stages.
        """
        call = _Call(deadline, self.deadline_margin_s, cancelled)
        if bundle.n_items == 0:
            return self._empty(bundle, Strategy.FALLBACK, "the catalogue is empty", 0)
        session, unknown_session = _book_rows(bundle, query.session_book_ids)
        excluded, unknown_excluded = _book_rows(bundle, query.filters.exclude_book_ids)
        ignored = unknown_session + unknown_excluded
        if not call.enough_time("reader"):
            return self._degraded(bundle, query, None, excluded, ignored, call)

        reader = self.resolve(bundle, query.user_id, session)
        if not call.enough_time("candidates"):
            return self._degraded(bundle, query, reader, excluded, ignored, call)

        # the session's own books are what the reader is looking at: never shown
        hidden = np.union1d(excluded, reader.session)
        allowed = _Allowed(bundle, query.filters, reader.seen, hidden)
        ranked: _Ranked | Recommendations | None = None
        if (
            bundle.ranker is not None
            and reader.history
            # the ranker's pool never holds read books; asked for, the blend
            # path (which can) serves
            and not query.filters.include_already_read
            and call.enough_time("ranker", reserve=self.deadline_margin_s)
        ):
            ranked = self._ranked(bundle, reader, query, allowed, context)
        if ranked is None:
            ranked = self._blended(bundle, reader, query, allowed, call, ignored)
        if isinstance(ranked, Recommendations):
            return ranked
        if not call.enough_time("ranking"):
            return self._degraded(bundle, query, reader, excluded, ignored, call)

        # a reader who asked for these authors is not capped per author
        cap = not query.filters.only_authors
        items = self._items(bundle, reader, ranked, query.n, cap_authors=cap)
        return Recommendations(
            items=items,
            strategy=reader.strategy,
            strategy_reason=_strategy_reason(reader, ranked, bundle.rerank, query.n),
            model_version=bundle.version,
            experiment_variant=self.experiment.variant,
            ignored_unknown_ids=ignored,
            candidates_scored=len(ranked.scored.items),
            degraded=reader.events_failed,
            degraded_reason=(
                "tracked events could not be read; training history served"
                if reader.events_failed
                else ""
            ),
            degraded_code="events" if reader.events_failed else "",
        )

    def resolve(
        self, bundle: ServingBundle, raw_user_id: str, session: np.ndarray
    ) -> Reader:
        """Build the reader's profile from training, tracked events and session.

        Parameters
        ----------
        bundle : ServingBundle
        raw_user_id : str
            As the client sent it; normalised here.
        session : (s,) int64
            Item rows of the session's books.
        """
        user_id = normalize_user_id(raw_user_id)
        row = bundle.user_index.get(user_id)
        items, weights = bundle.history(row) if row is not None else _no_history()
        tracked, tracked_weights, failed = self._tracked(bundle, user_id)

        seen = np.unique(np.concatenate([items, tracked]))
        history = len(seen)
        grown = len(tracked) > 0 or len(session) > 0
        profile = UserProfile(
            None if grown else row,
            np.concatenate([items, tracked, session]),
            np.concatenate(
                [weights, tracked_weights, np.ones(len(session), np.float32)]
            ),
        )
        seeds = _unique_in_order(np.concatenate([tracked, items[::-1]]))[:RECENT_SEEDS]
        return Reader(
            user_id=user_id,
            profile=profile,
            seen=seen,
            seeds=seeds,
            history=history,
            known=row is not None,
            session=session,
            events_failed=failed,
            training_row=row,
        )

    def _tracked(
        self, bundle: ServingBundle, user_id: str
    ) -> tuple[np.ndarray, np.ndarray, bool]:
        """Rows and weights of the reader's tracked books, newest first."""
        if self.events is None:
            return (*_no_history(), False)
        try:
            events = self.events.recent(user_id, RECENT_EVENTS)
        except Exception:  # the store failing must not fail recommendations
            logger.warning(
                "tracked events unreadable; serving training history", exc_info=True
            )
            return (*_no_history(), True)
        rows, weights = [], []
        for event in events:
            row = bundle.book_row(event.book_id)
            if row is not None:
                rows.append(row)
                weights.append(KIND_WEIGHTS.get(event.kind, 1.0))
        return (
            np.asarray(rows, dtype=np.int64),
            np.asarray(weights, dtype=np.float32),
            False,
        )

    def _sources(
        self, bundle: ServingBundle, reader: Reader, query: RecommendQuery
    ) -> dict[Source, np.ndarray]:
        """Candidate rows found by each source (before filters)."""
        profile = reader.profile
        found: dict[Source, np.ndarray] = {
            Source.POPULARITY: bundle.popular_order[:POPULAR_CANDIDATES]
        }
        als = bundle.models.get("als")
        if isinstance(als, _Retriever) and not profile.is_empty:
            found[Source.MATRIX_FACTORIZATION] = als.candidates(profile, MF_CANDIDATES)[
                0
            ]
        knn = bundle.models.get("item_knn")
        seeds = np.concatenate([reader.session, reader.seeds])[:RECENT_SEEDS]
        if isinstance(knn, _Neighbours) and len(seeds):
            found[Source.ITEM_NEIGHBORS] = knn.neighbours(seeds, NEIGHBOUR_CANDIDATES)[
                0
            ]
        content = bundle.models.get("content")
        if isinstance(content, _Content) and len(seeds):
            found[Source.CONTENT] = content.similar_to(
                seeds[:CONTENT_SEEDS], CONTENT_CANDIDATES
            )[0]
        return found

    def _blended(
        self,
        bundle: ServingBundle,
        reader: Reader,
        query: RecommendQuery,
        allowed: _Allowed,
        call: _Call,
        ignored: int,
    ) -> _Ranked | Recommendations:
        """Stages 2-3: candidates from every source, scored and blended.

        Returns the finished answer instead when nothing passes the filters,
        the scores are not finite, or time runs short.
        """
        found = self._sources(bundle, reader, query)
        candidates = _candidates(bundle, found, query, allowed)
        if len(candidates) == 0:
            reason = _nothing_left(bundle, query.filters, reader, allowed)
            return self._empty(bundle, reader.strategy, reason, ignored)
        if not call.enough_time("scoring"):
            return self._degraded(
                bundle, query, reader, allowed.excluded, ignored, call
            )

        scored = self._score(
            bundle, reader.profile, candidates, cold=not reader.history
        )
        if scored is None:
            return self._fallback(bundle, query, reader, allowed, ignored)
        scored = _with_sources(scored, found)
        return _Ranked(
            scored,
            scored.blended.astype(np.float64),
            lambda position: _speaking_source(scored, position),
        )

    def _ranked(
        self,
        bundle: ServingBundle,
        reader: Reader,
        query: RecommendQuery,
        allowed: _Allowed,
        context: RequestContext | None,
    ) -> _Ranked | None:
        """Stage 4: the meta-ranker's pool and scores; None hands the call to
        the blend (ranker failure, scores not finite, nothing allowed)."""
        ranker = bundle.ranker
        if ranker is None:
            return None
        profile = reader.profile
        forbidden = np.flatnonzero(~allowed.everywhere())
        try:
            pool, base = ranker.candidates(bundle.models, profile, exclude=forbidden)
            rows = ranker.build(
                pool, base, profile, reader=reader.training_row, context=context
            )
            relevance = np.asarray(ranker.score(rows), dtype=np.float64)
        except (ValueError, IndexError, RuntimeError):
            logger.warning("meta-ranker failed; serving the blend", exc_info=True)
            return None
        if relevance.shape != pool.shape or not np.all(np.isfinite(relevance)):
            logger.warning("meta-ranker scores not finite; serving the blend")
            return None

        # too few pooled books pass the filters: the blend's candidates below
        found: dict[Source, np.ndarray] = {}
        extra = np.zeros(0, np.int64)
        if len(pool) < query.n:
            found = self._sources(bundle, reader, query)
            extra = np.setdiff1d(_candidates(bundle, found, query, allowed), pool)
        items = np.union1d(pool, extra)
        if len(items) == 0:
            return None
        scored = self._score(bundle, profile, items)
        if scored is None:
            return None
        scored = _with_sources(scored, found)

        # relevance and source by position in ``items``; both ``items`` and
        # ``pool`` ascend, so the pooled positions take ``relevance`` in order
        in_pool = np.isin(items, pool)
        full = np.empty(len(items), dtype=np.float64)
        full[in_pool] = relevance
        if not in_pool.all():
            floor = float(relevance.min()) - 1.0 if len(relevance) else 0.0
            full[~in_pool] = floor + 0.5 * min_max(scored.blended[~in_pool])
        pooled = _pool_sources(base, ranker.base_models)
        slot = np.cumsum(in_pool) - 1

        def source_of(position: int) -> Source:
            if in_pool[position]:
                return pooled[int(slot[position])]
            return _speaking_source(scored, position)

        return _Ranked(scored, full, source_of, by_ranker=True)

    def _score(
        self,
        bundle: ServingBundle,
        profile: UserProfile,
        items: np.ndarray,
        cold: bool = False,
    ) -> _Scored | None:
        """Every model's scores over ``items``, blended; None if not finite.

        A ``cold`` reader (no history of their own) is blended with
        :data:`COLD_START_WEIGHTS`: the trained weights describe readers with
        a history, and most models have nothing to say without one.
        """
        scores = {}
        for name, model in bundle.models.items():
            values = np.asarray(model.score(profile, items), dtype=np.float32)
            if values.shape != items.shape or not np.all(np.isfinite(values)):
                logger.warning("model %s gave non-finite scores; falling back", name)
                return None
            scores[name] = values
        trained = COLD_START_WEIGHTS if cold else bundle.weights
        weights = self.experiment.blend_weights(trained)
        weights = {name: weights.get(name, 0.0) for name in bundle.models}
        if not any(w > 0 for w in weights.values()):
            weights = dict.fromkeys(weights, 1.0)  # none of those models here
        blended, normalised = WeightedBlend(weights).blend(scores)
        return _Scored(items, blended, normalised, weights)

    def _items(
        self,
        bundle: ServingBundle,
        reader: Reader,
        ranked: _Ranked,
        n: int,
        cap_authors: bool = True,
    ) -> list[Item]:
        """The best ``n`` candidates (re-ranked when the bundle says so) as
        answer items, with their final score, confidence and reason."""
        scored = ranked.scored
        positions, final = _final_order(
            bundle, scored.items, ranked.relevance, n, cap_authors
        )
        agree = _agreement(scored, max(3 * n, 30))
        factor = _history_factor(reader)
        content_anchor = self._content_anchors(bundle, reader, scored.items[positions])
        items = []
        for position, score in zip(positions.tolist(), final.tolist(), strict=True):
            row = int(scored.items[position])
            source = ranked.source_of(position)
            items.append(
                _item(
                    bundle,
                    row,
                    float(score),
                    float(agree[position] * factor),
                    self._reason(bundle, reader, source, row, content_anchor),
                    source,
                    bool(np.isin(row, reader.seen)),
                )
            )
        return items

    def _reason(
        self,
        bundle: ServingBundle,
        reader: Reader,
        source: Source,
        row: int,
        content_anchor: Mapping[int, int],
    ) -> str:
        """The short human-readable reason for one item found by ``source``."""
        if source is Source.ITEM_NEIGHBORS:
            knn = bundle.models.get("item_knn")
            anchor = (
                knn.top_contributor(reader.profile, row)
                if isinstance(knn, _Neighbours)
                else None
            )
            if anchor is not None:
                return f"Readers of {_title(bundle, anchor)} also read this"
        if source is Source.CONTENT and row in content_anchor:
            return f"Similar to {_title(bundle, content_anchor[row])}"
        author = _read_author(bundle, reader, row)
        if author and source in (Source.CONTENT, Source.MATRIX_FACTORIZATION):
            return f"By {author}, an author you read"
        if source is Source.POPULARITY:
            return "Popular with readers"
        if source is Source.USER_NEIGHBORS and reader.history:
            return "Readers with tastes like yours read this"
        if not reader.history:
            return "Matches the books you are looking at"
        return "Matches your reading"

    def _content_anchors(
        self, bundle: ServingBundle, reader: Reader, rows: np.ndarray
    ) -> dict[int, int]:
        """For each row, the seed book (of the first few) most like it in text.

        Returns
        -------
        dict of int to int
            Row -> seed row, for rows with some textual likeness to a seed
            other than themselves.
        """
        content = bundle.models.get("content")
        seeds = np.concatenate([reader.session, reader.seeds])[:REASON_SEEDS]
        if content is None or len(seeds) == 0 or len(rows) == 0:
            return {}

        # (n_seeds, n_rows) cosines, a book never its own anchor
        similarity = _text_cosines(content, seeds, rows)
        similarity[seeds[:, None] == rows[None, :]] = 0.0
        best = similarity.argmax(axis=0)
        return {
            int(row): int(seeds[best[i]])
            for i, row in enumerate(rows)
            if similarity[best[i], i] > 0
        }

    # answers without personal scoring

    def _empty(
        self, bundle: ServingBundle, strategy: Strategy, reason: str, ignored: int
    ) -> Recommendations:
        return Recommendations(
            items=[],
            strategy=strategy,
            strategy_reason=reason,
            model_version=bundle.version,
            experiment_variant=self.experiment.variant,
            ignored_unknown_ids=ignored,
        )

    def _fallback(
        self,
        bundle: ServingBundle,
        query: RecommendQuery,
        reader: Reader,
        allowed: _Allowed,
        ignored: int,
    ) -> Recommendations:
        """Popular books that pass the filters, after personal scores failed
        (re-ranked when the bundle says so)."""
        wanted = query.n
        if bundle.rerank is not None:
            wanted = max(_rerank_depth(query.n), _exposure_depth(bundle))
        rows = allowed.popular(wanted)
        relevance = 1.0 / (1.0 + np.arange(len(rows), dtype=np.float64))
        positions, final = _final_order(bundle, rows, relevance, query.n)
        items = [
            _item(
                bundle,
                int(rows[position]),
                float(score),
                FALLBACK_CONFIDENCE,
                "Popular with readers",
                Source.POPULARITY,
                bool(np.isin(rows[position], reader.seen)),
            )
            for position, score in zip(positions.tolist(), final.tolist(), strict=True)
        ]
        return Recommendations(
            items=items,
            strategy=Strategy.FALLBACK,
            strategy_reason="personal scores were not finite; popular books served",
            model_version=bundle.version,
            experiment_variant=self.experiment.variant,
            ignored_unknown_ids=ignored,
        )

    def _degraded(
        self,
        bundle: ServingBundle,
        query: RecommendQuery,
        reader: Reader | None,
        excluded: np.ndarray,
        ignored: int,
        call: _Call,
    ) -> Recommendations:
        """The fast popularity answer when time runs short before ``call.stage``.

        Without a resolved reader, the training history alone (one look-up,
        no store read) decides what counts as already read.
        """
        reader = reader or _training_only(bundle, query.user_id)
        allowed = _Allowed(bundle, query.filters, reader.seen, excluded)
        items = [
            _item(
                bundle,
                int(row),
                1.0 / (1 + rank),
                FALLBACK_CONFIDENCE,
                "Popular with readers",
                Source.POPULARITY,
                bool(np.isin(row, reader.seen)),
            )
            for rank, row in enumerate(allowed.popular(query.n))
        ]
        logger.warning("deadline near before %s; degraded answer", call.stage)
        return Recommendations(
            items=items,
            strategy=Strategy.FALLBACK,
            strategy_reason="too little time left; popular books served",
            model_version=bundle.version,
            experiment_variant=self.experiment.variant,
            ignored_unknown_ids=ignored,
            degraded=True,
            degraded_reason=f"deadline too close to run {call.stage}",
            degraded_code="deadline",
        )

    # Explain

    def explain(
        self,
        bundle: ServingBundle,
        query: ExplainQuery,
        deadline: float = math.inf,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> Explanation:
        """Why ``query.book_id`` suits ``query.user_id``: each model's part.

        The book is scored together with the reader's usual candidates, so its
        normalised scores mean what they mean in Recommend. With a meta-ranker
        and a reader with a history, the book's place in the ranker's pool
        (no filters, no request context) is one more reason, and its ranker
        score is the explained score; otherwise that is the blended score.

        Raises
        ------
        NotFound
            If the book is not in the catalogue.
        DeadlineExceeded
            If too little time is left to explain.
        Cancelled
            If the client went away.
        """
        call = _Call(deadline, self.deadline_margin_s, cancelled)
        row = bundle.book_row(bundle.canonical_book(query.book_id))
        if row is None:
            raise NotFound("book_id", "not in the catalogue")
        if not call.enough_time("reader"):
            raise DeadlineExceeded("deadline too close to explain")
        reader = self.resolve(bundle, query.user_id, np.zeros(0, np.int64))
        recommend = RecommendQuery(query.user_id, 10, Filters(), (), query.request_id)
        found = self._sources(bundle, reader, recommend)
        allowed = _Allowed(bundle, recommend.filters, reader.seen, reader.session)
        pool = _candidates(bundle, found, recommend, allowed)
        pool = np.union1d(pool, np.array([row], dtype=np.int64))
        if not call.enough_time("scoring"):
            raise DeadlineExceeded("deadline too close to explain")

        scored = self._score(bundle, reader.profile, pool)
        position = int(np.searchsorted(pool, row))
        contributions = _contributions(scored, position) if scored else []
        score = float(scored.blended[position]) if scored else 0.0
        place = None
        if scored and call.enough_time("ranker", reserve=self.deadline_margin_s):
            place = _ranker_place(bundle, reader, row)
        if place is not None:
            score = place.score
        already_seen = bool(np.isin(row, reader.seen))
        title, author, _ = _meta(bundle, row)
        return Explanation(
            book_id=str(bundle.catalogue.item_ids[row]),
            title=title,
            author=author,
            reasons=self._explain_reasons(bundle, reader, row, scored, position, place),
            contributions=contributions,
            score=score,
            strategy=reader.strategy if scored else Strategy.FALLBACK,
            model_version=bundle.version,
            already_seen=already_seen,
            known_to_model=bool(bundle.readers_per_item[row] > 0),
            experiment_variant=self.experiment.variant,
        )

    def _explain_reasons(
        self,
        bundle: ServingBundle,
        reader: Reader,
        row: int,
        scored: _Scored | None,
        position: int,
        place: _Place | None = None,
    ) -> list[str]:
        """Every reason that holds for this reader and book, strongest kind first."""
        reasons = []
        if np.isin(row, reader.seen):
            reasons.append("You already read this")
        knn = bundle.models.get("item_knn")
        if isinstance(knn, _Neighbours) and reader.history:
            anchor = knn.top_contributor(reader.profile, row)
            if anchor is not None:
                reasons.append(f"Readers of {_title(bundle, anchor)} also read this")
        anchors = self._content_anchors(bundle, reader, np.array([row]))
        if row in anchors:
            reasons.append(f"Similar to {_title(bundle, anchors[row])}")
        author = _read_author(bundle, reader, row)
        if author:
            reasons.append(f"By {author}, an author you read")
        als = scored.normalised.get("als") if scored else None
        if als is not None and reader.history and als[position] >= 0.5:
            reasons.append("Matches your reading")
        if np.isin(row, bundle.popular_order[:POPULAR_REASON_RANK]):
            reasons.append("Popular with readers")
        if bundle.readers_per_item[row] == 0:
            reasons.append("No reader of this book is known to the models yet")
        if place is not None:
            reasons.append(
                f"The meta-ranker placed it at rank {place.rank} of the "
                f"{place.size} books in your pool"
            )
        return reasons or ["Little links this book to the reader's history"]


class _Allowed:
    """The filters of one call as a vectorised test over item rows."""

    def __init__(
        self,
        bundle: ServingBundle,
        filters: Filters,
        seen: np.ndarray,
        excluded: np.ndarray,
    ) -> None:
        self.bundle = bundle
        self.filters = filters
        self.seen = seen
        self.excluded = excluded

    def mask(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows),) bool: which rows pass every filter."""
        keep = self.bundle.titled[rows] & ~np.isin(rows, self.excluded)
        if not self.filters.include_already_read:
            keep &= ~np.isin(rows, self.seen)
        return self._by_metadata(
            keep, self.bundle.author_keys[rows], self.bundle.catalogue.years[rows]
        )

    def everywhere(self) -> np.ndarray:
        """(n_items,) bool: ``mask`` over the whole catalogue, by direct index."""
        keep = self.bundle.titled.copy()
        keep[self.excluded] = False
        if not self.filters.include_already_read:
            keep[self.seen] = False
        return self._by_metadata(
            keep, self.bundle.author_keys, np.asarray(self.bundle.catalogue.years)
        )

    def _by_metadata(
        self, keep: np.ndarray, authors: np.ndarray, years: np.ndarray
    ) -> np.ndarray:
        """``keep`` narrowed by the author and year filters (aligned arrays)."""
        f = self.filters
        if f.only_authors:
            keep &= np.isin(authors, list(f.only_authors))
        if f.exclude_authors:
            keep &= ~np.isin(authors, list(f.exclude_authors))
        if f.min_year is not None:
            keep &= (years != 0) & (years >= f.min_year)
        if f.max_year is not None:
            keep &= (years != 0) & (years <= f.max_year)
        return keep

    def popular(self, n: int, besides: np.ndarray | None = None) -> np.ndarray:
        """The ``n`` most popular rows that pass, other than ``besides``."""
        order = self.bundle.popular_order
        chosen: list[np.ndarray] = []
        wanted = n
        for start in range(0, len(order), max(4 * n, 256)):
            block = order[start : start + max(4 * n, 256)]
            block = block[self.mask(block)]
            if besides is not None:
                block = block[~np.isin(block, besides)]
            chosen.append(block[:wanted])
            wanted -= len(chosen[-1])
            if wanted <= 0:
                break
        return np.concatenate(chosen) if chosen else np.zeros(0, np.int64)


# small helpers


def _no_history() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(0, np.int64), np.zeros(0, np.float32)


def _training_only(bundle: ServingBundle, raw_user_id: str) -> Reader:
    """The reader as training knew them: no events, no session."""
    user_id = normalize_user_id(raw_user_id)
    row = bundle.user_index.get(user_id)
    items, weights = bundle.history(row) if row is not None else _no_history()
    seen = np.unique(items)
    profile = UserProfile(row, items, weights)
    none = _no_history()[0]
    return Reader(
        user_id, profile, seen, seen, len(seen), row is not None, none, False, row
    )


def _book_rows(bundle: ServingBundle, raw_ids: Sequence[str]) -> tuple[np.ndarray, int]:
    """Rows of the known ids, in order and once each, and how many were unknown."""
    rows: list[int] = []
    unknown = 0
    for raw in raw_ids:
        row = bundle.book_row(bundle.canonical_book(raw))
        if row is None:
            unknown += 1
        elif row not in rows:
            rows.append(row)
    return np.asarray(rows, dtype=np.int64), unknown


def _candidates(
    bundle: ServingBundle,
    found: Mapping[Source, np.ndarray],
    query: RecommendQuery,
    allowed: _Allowed,
) -> np.ndarray:
    """Candidate rows that pass the filters, topped up to ``n`` if needed."""
    pool = np.unique(np.concatenate([*found.values(), _author_rows(bundle, query)]))
    pool = pool[allowed.mask(pool)]
    if len(pool) >= query.n:
        return pool
    return np.unique(np.concatenate([pool, allowed.popular(query.n, pool)]))


def _author_rows(bundle: ServingBundle, query: RecommendQuery) -> np.ndarray:
    """Every book by an author of ``only_authors`` (none when unset)."""
    if not query.filters.only_authors:
        return np.zeros(0, np.int64)
    hits = np.isin(bundle.author_keys, list(query.filters.only_authors))
    return np.flatnonzero(hits).astype(np.int64)


def _unique_in_order(rows: np.ndarray) -> np.ndarray:
    _, first = np.unique(rows, return_index=True)
    return rows[np.sort(first)]


def _nothing_left(
    bundle: ServingBundle, filters: Filters, reader: Reader, allowed: _Allowed
) -> str:
    """Why no book is left: the reader read them all, or the filters."""
    if not filters.include_already_read and len(reader.seen):
        unread = _Allowed(
            bundle,
            Filters(include_already_read=True, **_filter_fields(filters)),
            reader.seen,
            allowed.excluded,
        )
        if len(unread.popular(1)):
            return "the reader has already read every book the filters allow"
    return "no book in the catalogue passes the filters"


def _filter_fields(filters: Filters) -> dict[str, object]:
    return {
        "exclude_book_ids": filters.exclude_book_ids,
        "only_authors": filters.only_authors,
        "exclude_authors": filters.exclude_authors,
        "min_year": filters.min_year,
        "max_year": filters.max_year,
    }


def _with_sources(scored: _Scored, found: Mapping[Source, np.ndarray]) -> _Scored:
    """``scored`` with, per source, the positions of the candidates it found."""
    sources = {
        source: set(np.flatnonzero(np.isin(scored.items, rows)).tolist())
        for source, rows in found.items()
    }
    return _Scored(
        scored.items, scored.blended, scored.normalised, scored.weights, sources
    )


def _speaking_source(scored: _Scored, position: int) -> Source:
    """Of the sources that found the item, the one whose model adds most."""
    best, best_part = Source.POPULARITY, -1.0
    for source in _SOURCES:
        if position not in scored.sources.get(source, ()):
            continue
        name = source.value
        part = scored.weights.get(name, 0.0) * float(
            scored.normalised.get(name, np.zeros(position + 1))[position]
        )
        if part > best_part:
            best, best_part = source, part
    return best


def _pool_sources(
    scores: Mapping[str, np.ndarray], base_models: Sequence[str]
) -> list[Source]:
    """Per pooled candidate, the source of the base model ranking it highest.

    Parameters
    ----------
    scores : dict of str to (c,) float
        Each base model's scores of the pool.
    base_models : sequence of str

    Returns
    -------
    list of Source, (c,) long
        Equal ranks go to the model listed first in :data:`MODEL_SOURCES`.
    """
    preference = list(MODEL_SOURCES)
    names = sorted(
        base_models,
        key=lambda m: preference.index(m) if m in preference else len(preference),
    )
    if not names:
        return []
    stacked = np.stack([ranks(np.asarray(scores[m])) for m in names])
    best = np.argmin(stacked, axis=0)
    return [MODEL_SOURCES.get(names[int(b)], Source.MATRIX_FACTORIZATION) for b in best]


@dataclass(frozen=True)
class _Place:
    """Where the meta-ranker puts one book in the reader's pool."""

    rank: int
    size: int
    score: float


def _ranker_place(bundle: ServingBundle, reader: Reader, row: int) -> _Place | None:
    """The book's rank (1 = first) and score in the reader's ranker pool.

    None without a ranker, for a reader without history, when the book is
    not in the pool, or when the ranker fails.
    """
    ranker = bundle.ranker
    if ranker is None or not reader.history:
        return None
    try:
        pool, base = ranker.candidates(bundle.models, reader.profile)
        rows = ranker.build(pool, base, reader.profile, reader=reader.training_row)
        scores = ranker.score(rows)
    except (ValueError, IndexError, RuntimeError):
        logger.warning("meta-ranker failed while explaining", exc_info=True)
        return None
    hits = np.flatnonzero(pool == row)
    if len(hits) == 0 or not np.all(np.isfinite(scores)):
        return None
    mine = scores[hits[0]]
    return _Place(int((scores > mine).sum()) + 1, len(pool), float(mine))


def _rerank_depth(n: int) -> int:
    return max(RERANK_DEPTH * n, MIN_RERANK)


def _exposure_depth(bundle: ServingBundle) -> int:
    return 0 if bundle.ledger is None else bundle.ledger.settings.depth


def _final_order(
    bundle: ServingBundle,
    rows: np.ndarray,
    relevance: np.ndarray,
    n: int,
    cap_authors: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the answer in ``rows`` and their final scores.

    Parameters
    ----------
    bundle : ServingBundle
        Its ``rerank`` settings decide whether MMR runs.
    rows : (c,) int64
        Distinct candidate rows.
    relevance : (c,) float
        Higher is better.
    n : int
        Items wanted.

    Returns
    -------
    positions : (m,) int64, m <= n
        Into ``rows``, best first: by final score descending, ties by book id.
    scores : (m,) float64
        The relevance without re-ranking, MMR's score with it.
    """
    ids = bundle.catalogue.item_ids[rows]
    order = np.lexsort((ids, -relevance))
    settings = bundle.rerank
    if settings is None:
        top = order[:n]
        return top, np.asarray(relevance[top], dtype=np.float64)

    ledger = bundle.ledger
    depth = max(n, _exposure_depth(bundle))
    top = order[: max(_rerank_depth(n), depth)]
    extra = dict(settings.extra)
    if settings.with_popularity:
        extra["popularity"] = bundle.readers_per_item[rows[top]].astype(np.float64)
    try:
        picked, scores = mmr(
            rows[top],
            relevance[top],
            _embedding(bundle, rows[top], settings.embedding),
            depth,
            diversity=settings.diversity,
            similarity_threshold=settings.similarity_threshold,
            authors=list(bundle.author_keys[rows[top]]),
            max_per_author=settings.max_per_author if cap_authors else None,
            **extra,
        )
    except (ValueError, TypeError):
        logger.warning("re-ranking failed; relevance order served", exc_info=True)
        return order[:n], np.asarray(relevance[order[:n]], dtype=np.float64)
    if ledger is not None:
        # the tail places go to books shown least lately; the running minimum
        # keeps the scores non-increasing in the arranged order
        arranged = ledger.arrange(picked, n)
        picked = picked[arranged]
        scores = np.minimum.accumulate(scores[arranged].astype(np.float64))

    # MMR's scores are a running minimum: ties happen, and go to the book id
    where = {
        int(row): int(position) for row, position in zip(rows[top], top, strict=True)
    }
    positions = np.array([where[int(row)] for row in picked], dtype=np.int64)
    again = np.lexsort((ids[positions], -scores))
    return positions[again], np.asarray(scores[again], dtype=np.float64)


def _embedding(bundle: ServingBundle, rows: np.ndarray, preferred: str) -> Any:
    """(len(rows), d) item vectors for MMR's similarity.

    ALS item factors or TF-IDF rows, ``preferred`` first; a zero column (no
    book like another) when the bundle has neither.
    """
    for name in (preferred, *(e for e in ("als", "content") if e != preferred)):
        model = bundle.models.get(name)
        if name == "als" and model is not None:
            factors = getattr(model, "item_factors", None)
            if factors is not None:
                return np.asarray(factors[rows], dtype=np.float32)
        if name == "content" and model is not None:
            tfidf = getattr(model, "tfidf_", None)
            if tfidf is not None:
                return tfidf[rows]
    return np.zeros((len(rows), 1), dtype=np.float32)


def _text_cosines(content: Model, seeds: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(len(seeds), len(rows)) cosines of the books' text.

    Straight from the unit-norm TF-IDF rows (``tfidf_``) when the model
    exposes them; otherwise one whole-catalogue ``score`` per seed.
    """
    tfidf = getattr(content, "tfidf_", None)
    if tfidf is not None:
        product = tfidf[seeds] @ tfidf[rows].T
        dense = product.toarray() if hasattr(product, "toarray") else product
        return np.asarray(dense, dtype=np.float32)
    ones = np.ones(1, np.float32)
    return np.stack(
        [
            content.score(UserProfile(None, seeds[[i]], ones), rows)
            for i in range(len(seeds))
        ]
    )


def _agreement(scored: _Scored, top: int) -> np.ndarray:
    """(n_candidates,) share of weighted models ranking each candidate in their top."""
    voters = [name for name, w in scored.weights.items() if w > 0]
    if not voters:
        return np.zeros(len(scored.items), dtype=np.float32)
    votes = np.zeros(len(scored.items), dtype=np.float32)
    for name in voters:
        values = scored.normalised[name]
        if not np.any(values):
            continue
        best = np.argsort(-values, kind="stable")[:top]
        votes[best[values[best] > 0]] += 1.0
    return votes / len(voters)


def _history_factor(reader: Reader) -> float:
    """0.3 for no history, rising linearly to 1 at 20 books."""
    return 0.3 + 0.7 * min(1.0, reader.history / HISTORY_FOR_FULL_CONFIDENCE)


def _contributions(scored: _Scored, position: int) -> list[Contribution]:
    return [
        Contribution(
            model=name,
            score=float(values[position]),
            weight=float(scored.weights.get(name, 0.0)),
            contribution=float(scored.weights.get(name, 0.0) * values[position]),
        )
        for name, values in sorted(scored.normalised.items())
    ]


def _read_author(bundle: ServingBundle, reader: Reader, row: int) -> str:
    """The book's author as the catalogue spells it, when the reader has read
    another book by that author (names compared case-folded); else ""."""
    key = bundle.author_keys[row]
    if not key or len(reader.seen) == 0:
        return ""
    others = reader.seen[reader.seen != row]
    if not np.any(bundle.author_keys[others] == key):
        return ""
    return bundle.catalogue.authors[row].strip()


def _strategy_reason(
    reader: Reader, ranked: _Ranked, rerank: RerankSettings | None, n: int
) -> str:
    session = len(reader.session)
    if reader.history:
        text = f"personalised from {_books(reader.history)} of reading history"
    else:
        text = "unknown reader: popular books"
    if session:
        text += f" and {_books(session)} of this session"
    if ranked.by_ranker:
        text += ", ordered by the meta-ranker"
    if rerank is not None:
        text += ", re-ranked for diversity"
        if rerank.exposure is not None and n > rerank.exposure.head:
            text += (
                f", the places after the first {rerank.exposure.head} "
                "given to books shown less often"
            )
    return text


def _books(count: int) -> str:
    return "1 book" if count == 1 else f"{count} books"


def _meta(bundle: ServingBundle, row: int) -> tuple[str, str, int]:
    catalogue = bundle.catalogue
    return catalogue.titles[row], catalogue.authors[row], int(catalogue.years[row])


def _title(bundle: ServingBundle, row: int) -> str:
    return bundle.catalogue.titles[row] or str(bundle.catalogue.item_ids[row])


def _item(
    bundle: ServingBundle,
    row: int,
    score: float,
    confidence: float,
    reason: str,
    source: Source,
    already_seen: bool,
) -> Item:
    title, author, year = _meta(bundle, row)
    return Item(
        book_id=str(bundle.catalogue.item_ids[row]),
        title=title,
        author=author,
        year=year,
        score=score,
        confidence=min(1.0, max(0.0, confidence)),
        reason=reason,
        source=source,
        already_seen=already_seen,
    )
