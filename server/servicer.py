"""The gRPC edge: protobuf in, domain calls, protobuf or a status out.

Each method validates its request, takes ONE reference to the current bundle
for the whole call, runs the recommender or the interaction store, and turns
the result into the response message. Every exception ends in
:func:`~bookverse.server.errors.status_for`, the single mapping from errors to
status codes. The request id (the caller's, or a fresh one) is logged with
every call, returned as ``x-request-id`` trailing metadata and, where the
response has the field, in the response.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from bookverse.models.features import RequestContext
from bookverse.models.ids import normalize_user_id
from bookverse.recommendations.v1 import recommendations_pb2 as pb
from bookverse.recommendations.v1 import recommendations_pb2_grpc as pb_grpc
from bookverse.server.bundle import ServingBundle
from bookverse.server.errors import InvalidArgument, Unavailable, status_for
from bookverse.server.interactions import (
    Interaction,
    InteractionStoreError,
    TrackResult,
)
from bookverse.server.metrics import Metrics
from bookverse.server.recommender import (
    Explanation,
    Recommendations,
    Recommender,
    Source,
    Strategy,
)
from bookverse.server.validation import (
    request_id_of,
    validate_explain,
    validate_recommend,
    validate_track,
)

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
NO_DEADLINE_S = 10 * 365 * 86_400.0
"""A deadline further away than this is no deadline."""
TRACK_TIMEOUT_S = 30.0
"""Longest TrackInteraction waits for durability when the client set no
deadline; past it the call fails UNAVAILABLE (a retry is a safe duplicate)."""

_T = TypeVar("_T")

STRATEGIES = {
    Strategy.PERSONALIZED: pb.STRATEGY_PERSONALIZED,
    Strategy.COLD_START: pb.STRATEGY_COLD_START,
    Strategy.FALLBACK: pb.STRATEGY_FALLBACK,
}
SOURCES = {
    Source.MATRIX_FACTORIZATION: pb.SOURCE_MATRIX_FACTORIZATION,
    Source.ITEM_NEIGHBORS: pb.SOURCE_ITEM_NEIGHBORS,
    Source.USER_NEIGHBORS: pb.SOURCE_USER_NEIGHBORS,
    Source.CONTENT: pb.SOURCE_CONTENT,
    Source.POPULARITY: pb.SOURCE_POPULARITY,
    Source.NEURAL: pb.SOURCE_NEURAL,
}
DEVICES = {
    pb.DEVICE_WEB: "web",
    pb.DEVICE_MOBILE: "mobile",
    pb.DEVICE_TABLET: "tablet",
    pb.DEVICE_EREADER: "ereader",
}
"""Device of the proto -> the ranker's device value (``DEVICE_UNSPECIFIED``
is unknown)."""
SECONDS_PER_DAY = 86_400
EPOCH_WEEKDAY = 3
"""1970-01-01 was a Thursday (0 = Monday)."""


class BundleSource(Protocol):
    """Hands out the current bundle (``ModelStore``)."""

    def current(self) -> ServingBundle: ...


class EventSink(Protocol):
    """Stores one interaction durably (``InteractionStore``)."""

    def track(self, event: Interaction, timeout: float | None = None) -> TrackResult:
        """Returns once the event is on disk."""
        ...


class RecommendationServicer(pb_grpc.RecommendationServiceServicer):
    """Recommend, Explain and TrackInteraction over the current bundle.

    Parameters
    ----------
    bundles : BundleSource
        Gives the bundle a call uses from start to end.
    recommender : Recommender
    events : EventSink
        The durable interaction store.
    metrics : Metrics
    clock : callable, default ``time.time``
        Wall clock, Unix seconds (event times).
    """

    def __init__(
        self,
        bundles: BundleSource,
        recommender: Recommender,
        events: EventSink,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.bundles = bundles
        self.recommender = recommender
        self.events = events
        self.metrics = metrics
        self.clock = clock

    def Recommend(  # noqa: N802 (RPC names as in the proto)
        self, request: pb.RecommendRequest, context: grpc.ServicerContext
    ) -> pb.RecommendResponse:
        request_id = request_id_of(request.request_id)
        return _at_edge(context, request_id, lambda: self._recommend(request, context))

    def Explain(  # noqa: N802
        self, request: pb.ExplainRequest, context: grpc.ServicerContext
    ) -> pb.ExplainResponse:
        request_id = request_id_of(request.request_id)
        return _at_edge(context, request_id, lambda: self._explain(request, context))

    def TrackInteraction(  # noqa: N802
        self, request: pb.TrackInteractionRequest, context: grpc.ServicerContext
    ) -> pb.TrackInteractionResponse:
        request_id = request_id_of("")
        return _at_edge(context, request_id, lambda: self._track(request, context))

    def _recommend(
        self, request: pb.RecommendRequest, context: grpc.ServicerContext
    ) -> pb.RecommendResponse:
        query = validate_recommend(request)
        bundle = self.bundles.current()
        answer = self.recommender.recommend(
            bundle,
            query,
            _deadline(context),
            lambda: not context.is_active(),
            request_context(request.context),
        )
        self._count(answer)
        return _recommend_response(answer, query.request_id)

    def _explain(
        self, request: pb.ExplainRequest, context: grpc.ServicerContext
    ) -> pb.ExplainResponse:
        query = validate_explain(request)
        bundle = self.bundles.current()
        answer = self.recommender.explain(
            bundle, query, _deadline(context), lambda: not context.is_active()
        )
        return _explain_response(answer)

    def _track(
        self, request: pb.TrackInteractionRequest, context: grpc.ServicerContext
    ) -> pb.TrackInteractionResponse:
        bundle = self.bundles.current()
        query = validate_track(request, bundle.rating_scale, self.clock())
        book_id = bundle.canonical_book(query.book_id)
        if not book_id:
            raise InvalidArgument("book_id", "must contain letters or digits")
        event = Interaction(
            user_id=normalize_user_id(query.user_id),
            book_id=book_id,
            kind=query.kind,
            rating=query.rating,
            event_time=query.event_time,
            client_event_id=query.client_event_id,
        )
        left = _time_left(context)
        result = self._store(event, TRACK_TIMEOUT_S if left is None else left)
        if result.conflict:
            raise InvalidArgument(
                "client_event_id", "was already used for a different event"
            )
        self.metrics.interactions_tracked.labels(
            kind=query.kind, duplicate=str(result.duplicate).lower()
        ).inc()
        row = bundle.book_row(book_id)
        received = Timestamp()
        received.FromNanoseconds(int(result.received_time * 1e9))
        return pb.TrackInteractionResponse(
            acknowledged=True,
            duplicate=result.duplicate,
            book_known_to_model=row is not None and bundle.readers_per_item[row] > 0,
            event_id=result.event_id,
            received_time=received,
        )

    def _store(self, event: Interaction, timeout: float) -> TrackResult:
        """Store durably, or say the store is unavailable (never half-true)."""
        try:
            return self.events.track(event, timeout)
        except InteractionStoreError as exc:
            logger.warning("interaction store failed: %s", exc)
            raise Unavailable("the event could not be stored; retry") from exc

    def _count(self, answer: Recommendations) -> None:
        self.metrics.strategies.labels(strategy=answer.strategy.value).inc()
        self.metrics.candidates_scored.observe(answer.candidates_scored)
        if answer.ignored_unknown_ids:
            self.metrics.ignored_ids.inc(answer.ignored_unknown_ids)
        if answer.degraded:
            self.metrics.degraded.labels(reason=answer.degraded_code).inc()


def request_context(context: pb.Context) -> RequestContext:
    """The reader's local hour and weekday (0 = Monday) and device.

    The local time is ``local_time`` shifted by ``utc_offset_minutes``; hour
    and weekday are None when ``local_time`` is unset, the device when it is
    ``DEVICE_UNSPECIFIED``. Expects a validated context.
    """
    device = DEVICES.get(context.device)
    if not context.HasField("local_time"):
        return RequestContext(device=device)

    # integer arithmetic: any int64 instant works, no calendar overflow
    seconds = context.local_time.seconds + 60 * context.utc_offset_minutes
    days, in_day = divmod(seconds, SECONDS_PER_DAY)
    weekday = (days + EPOCH_WEEKDAY) % 7
    return RequestContext(hour=in_day // 3600, weekday=weekday, device=device)


def _at_edge(
    context: grpc.ServicerContext, request_id: str, handle: Callable[[], _T]
) -> _T:
    """Run one call; map any exception to its status with the request id."""
    started = time.perf_counter()
    context.set_trailing_metadata(((REQUEST_ID_HEADER, request_id),))
    try:
        response = handle()
    except Exception as exc:  # every error leaves through status_for
        code, message = status_for(exc, request_id)
        logger.info("request %s failed: %s %s", request_id, code.name, message)
        context.abort(code, message)
    logger.debug(
        "request %s done in %.2f ms", request_id, (time.perf_counter() - started) * 1e3
    )
    return response


def _time_left(context: grpc.ServicerContext) -> float | None:
    """Seconds until the call's deadline; None when the client set none.

    gRPC reports a call without a deadline as a huge number of seconds.
    """
    left = context.time_remaining()
    if left is None or left > NO_DEADLINE_S:
        return None
    return max(float(left), 0.0)


def _deadline(context: grpc.ServicerContext) -> float:
    """The call's deadline on the ``time.monotonic`` clock (inf if none)."""
    left = _time_left(context)
    return math.inf if left is None else time.monotonic() + left


def _recommend_response(
    answer: Recommendations, request_id: str
) -> pb.RecommendResponse:
    items = [
        pb.RecommendedItem(
            book_id=item.book_id,
            title=item.title,
            author=item.author,
            score=item.score,
            confidence=item.confidence,
            reason=item.reason,
            source=SOURCES[item.source],
            already_seen=item.already_seen,
            year=item.year,
        )
        for item in answer.items
    ]
    return pb.RecommendResponse(
        items=items,
        strategy=STRATEGIES[answer.strategy],
        strategy_reason=answer.strategy_reason,
        model_version=answer.model_version,
        experiment_variant=answer.experiment_variant,
        returned_count=len(items),
        degraded=answer.degraded,
        degraded_reason=answer.degraded_reason,
        request_id=request_id,
        ignored_unknown_ids=answer.ignored_unknown_ids,
    )


def _explain_response(answer: Explanation) -> pb.ExplainResponse:
    return pb.ExplainResponse(
        book_id=answer.book_id,
        title=answer.title,
        author=answer.author,
        reasons=answer.reasons,
        contributions=[
            pb.ModelContribution(
                model=c.model,
                score=c.score,
                weight=c.weight,
                contribution=c.contribution,
            )
            for c in answer.contributions
        ],
        score=answer.score,
        strategy=STRATEGIES[answer.strategy],
        model_version=answer.model_version,
        already_seen=answer.already_seen,
        known_to_model=answer.known_to_model,
        experiment_variant=answer.experiment_variant,
    )
