"""Prometheus metrics of one server process, in their own registry.

The gRPC series follow the names that existing gRPC dashboards know
(``grpc_server_started_total``, ``grpc_server_handled_total``,
``grpc_server_handling_seconds``, labelled by ``grpc_type``,
``grpc_service``, ``grpc_method`` and, once handled, ``grpc_code``); a
:class:`MetricsInterceptor` records them for every call. The service's own
series carry a ``bookverse_`` prefix. No label ever holds a reader or book id:
every label takes its values from a small fixed set.

The metrics are served over plain HTTP on their own port by
:func:`start_metrics_server`, bound to loopback unless configured otherwise.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import start_http_server

logger = logging.getLogger(__name__)

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0
)  # fmt: skip
_CANDIDATE_BUCKETS = (0, 10, 25, 50, 100, 200, 400, 800, 1600)
_GRPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")


@dataclass(frozen=True)
class Metrics:
    """Every series the server exports, registered in ``registry``.

    Build it with :func:`create_metrics`.
    """

    registry: CollectorRegistry
    started: Counter
    handled: Counter
    handling_seconds: Histogram
    model_info: Gauge
    model_reloads: Counter
    strategies: Counter
    candidates_scored: Histogram
    interactions_tracked: Counter
    ignored_ids: Counter
    degraded: Counter
    rejected_overload: Counter

    def set_model_version(self, version: str) -> None:
        """Make ``version`` the one version ``bookverse_model_info`` reports."""
        self.model_info.clear()
        self.model_info.labels(version=version).set(1)


def create_metrics() -> Metrics:
    """A fresh :class:`Metrics` in a new registry (one per server)."""
    registry = CollectorRegistry(auto_describe=True)
    return Metrics(
        registry=registry,
        started=Counter(
            "grpc_server_started",
            "Calls started on the server.",
            _GRPC_LABELS,
            registry=registry,
        ),
        handled=Counter(
            "grpc_server_handled",
            "Calls completed on the server, whatever their status.",
            (*_GRPC_LABELS, "grpc_code"),
            registry=registry,
        ),
        handling_seconds=Histogram(
            "grpc_server_handling_seconds",
            "Time from the start of a call to its status, in seconds.",
            (*_GRPC_LABELS, "grpc_code"),
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        ),
        model_info=Gauge(
            "bookverse_model_info",
            "1 for the bundle version being served.",
            ("version",),
            registry=registry,
        ),
        model_reloads=Counter(
            "bookverse_model_reload",
            "Bundle loads by result (success, failure).",
            ("result",),
            registry=registry,
        ),
        strategies=Counter(
            "bookverse_recommend_strategy",
            "Recommend answers by strategy served.",
            ("strategy",),
            registry=registry,
        ),
        candidates_scored=Histogram(
            "bookverse_candidates_scored",
            "Candidates scored per Recommend call.",
            buckets=_CANDIDATE_BUCKETS,
            registry=registry,
        ),
        interactions_tracked=Counter(
            "bookverse_interactions_tracked",
            "Interactions acknowledged, by kind and whether already stored.",
            ("kind", "duplicate"),
            registry=registry,
        ),
        ignored_ids=Counter(
            "bookverse_ignored_ids",
            "Ids in filters or context that the catalogue does not know.",
            registry=registry,
        ),
        degraded=Counter(
            "bookverse_degraded",
            "Answers cut short, by reason code.",
            ("reason",),
            registry=registry,
        ),
        rejected_overload=Counter(
            "bookverse_rejected_overload",
            "Calls refused with RESOURCE_EXHAUSTED because too many were in flight.",
            registry=registry,
        ),
    )


def start_metrics_server(metrics: Metrics, host: str, port: int) -> tuple[Any, int]:
    """Serve ``/metrics`` over HTTP on ``host:port`` in a daemon thread.

    Parameters
    ----------
    metrics : Metrics
    host : str
        Address to bind; the configuration's default is loopback.
    port : int
        0 picks a free port.

    Returns
    -------
    (server, port)
        The HTTP server (``shutdown()`` stops it) and the port it bound.

    Raises
    ------
    OSError
        If the address cannot be bound.
    """
    httpd, _ = start_http_server(port, addr=host, registry=metrics.registry)
    bound = int(httpd.server_port)
    logger.info("metrics on http://%s:%s/metrics", host, bound)
    return httpd, bound


class MetricsInterceptor(grpc.ServerInterceptor):
    """Records the ``grpc_server_*`` series for every call.

    gRPC refuses a call over its ``maximum_concurrent_rpcs`` after asking the
    interceptors for a handler but without running it, and tells nobody. So
    each handler returned here carries a :class:`_CallRecord`; a handler
    dropped without ever running is counted as refused with
    ``RESOURCE_EXHAUSTED`` (CPython frees it at once). The only other calls
    whose handler never runs are the rare ones cancelled by the client before
    their request arrived; they are counted the same way.

    Parameters
    ----------
    metrics : Metrics
    """

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        service, method = _split(handler_call_details.method)
        record = _CallRecord(self, (_grpc_type(handler), service, method))
        self.metrics.started.labels(*record.labels).inc()
        wrapped, behavior = _wrap(handler, record)
        weakref.finalize(behavior, record.dropped)
        return wrapped

    def observe(
        self, labels: tuple[str, str, str], code: grpc.StatusCode, seconds: float
    ) -> None:
        """Count one finished call with its status code and duration."""
        self.metrics.handled.labels(*labels, code.name).inc()
        self.metrics.handling_seconds.labels(*labels, code.name).observe(seconds)


@dataclass
class _CallRecord:
    """What the interceptor knows of one call: its labels and whether it ran."""

    interceptor: MetricsInterceptor
    labels: tuple[str, str, str]
    ran: bool = False

    def finished(self, code: grpc.StatusCode, seconds: float) -> None:
        self.interceptor.observe(self.labels, code, seconds)

    def dropped(self) -> None:
        if not self.ran:
            self.interceptor.observe(
                self.labels, grpc.StatusCode.RESOURCE_EXHAUSTED, 0.0
            )
            self.interceptor.metrics.rejected_overload.inc()


def _split(full_method: str) -> tuple[str, str]:
    """``"/pkg.Service/Method"`` -> ``("pkg.Service", "Method")``."""
    service, _, method = full_method.lstrip("/").partition("/")
    return service, method


def _grpc_type(handler: grpc.RpcMethodHandler) -> str:
    if handler.request_streaming and handler.response_streaming:
        return "BIDI_STREAMING"
    if handler.request_streaming:
        return "CLIENT_STREAMING"
    if handler.response_streaming:
        return "SERVER_STREAMING"
    return "UNARY"


def _final_code(context: grpc.ServicerContext, failed: bool) -> grpc.StatusCode:
    code = context.code()  # type: ignore[attr-defined]
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK


def _wrap(
    handler: grpc.RpcMethodHandler, record: _CallRecord
) -> tuple[grpc.RpcMethodHandler, Callable[..., Any]]:
    """The same handler reporting to ``record``, and its new behaviour."""

    def unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
        def call(request: Any, context: grpc.ServicerContext) -> Any:
            record.ran = True
            started = time.perf_counter()
            failed = True
            try:
                response = behavior(request, context)
                failed = False
                return response
            finally:
                code = _final_code(context, failed)
                record.finished(code, time.perf_counter() - started)

        return call

    def streaming(behavior: Callable[..., Any]) -> Callable[..., Any]:
        def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            record.ran = True
            started = time.perf_counter()
            failed = True
            try:
                yield from behavior(request, context)
                failed = False
            finally:
                code = _final_code(context, failed)
                record.finished(code, time.perf_counter() - started)

        return call

    kinds = (
        ("unary_unary", unary),
        ("stream_unary", unary),
        ("unary_stream", streaming),
        ("stream_stream", streaming),
    )
    for kind, wrap in kinds:
        behavior = getattr(handler, kind)
        if behavior is not None:
            wrapped = wrap(behavior)
            return handler._replace(**{kind: wrapped}), wrapped  # type: ignore[attr-defined]
    raise ValueError("handler has no behaviour")
