"""Assemble the server, and the ``bookverse-serve`` entry point.

:func:`create_server` wires configuration, interaction store, model store,
recommender, metrics, health and reflection into one ``grpc.Server`` bound to
``config.host:config.port`` (port 0: a free one) and returns it unstarted
with the bound port and a :class:`Runtime` that starts and stops the
background parts. Only :func:`main` configures logging, reads the environment
and handles signals.

Threads: one call is one gRPC worker thread, so BLAS, OpenMP and FAISS get
``config.blas_threads`` threads each (more would only contend). OpenMP keeps
that setting per thread, so :func:`limit_threads` runs in every worker thread
as it starts and in the bundle warm-up thread, not only once in :func:`main`:
a server built in-process by :func:`create_server` is limited the same way.

Health (``grpc.health.v1``): both ``""`` and the recommendation service are
NOT_SERVING until the first bundle is loaded, verified and warmed up, then
SERVING (also while a new bundle loads in the background); NOT_SERVING again
from the moment shutdown begins. Shutdown first stops taking new calls, then
reports NOT_SERVING to health watchers, then gives calls in flight the grace
period: whoever sees NOT_SERVING knows that new calls are refused. Reflection lists
the recommendation, health and reflection services.

Load: calls beyond ``max_concurrent_rpcs`` in flight are refused at once with
RESOURCE_EXHAUSTED by gRPC itself, without waiting for a worker thread.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from concurrent import futures
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

import faiss
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from threadpoolctl import threadpool_limits

from bookverse.recommendations.v1 import recommendations_pb2 as pb
from bookverse.recommendations.v1 import recommendations_pb2_grpc as pb_grpc
from bookverse.server.bundle import ServingBundle
from bookverse.server.config import ConfigError, ServerConfig, from_env
from bookverse.server.interactions import InteractionStore, InteractionStoreError
from bookverse.server.metrics import (
    Metrics,
    MetricsInterceptor,
    create_metrics,
    start_metrics_server,
)
from bookverse.server.model_store import ModelStore
from bookverse.server.recommender import Recommender
from bookverse.server.servicer import RecommendationServicer
from bookverse.server.validation import Filters, RecommendQuery

logger = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RecommendationService"].full_name
HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
COLD_START_PROBE = "bookverse-warm-up-probe"

_limited = threading.local()


@dataclass
class Runtime:
    """The parts of a server that live beside the ``grpc.Server``.

    Attributes
    ----------
    config : ServerConfig
    server : grpc.Server
    port : int
        The gRPC port actually bound.
    health : HealthServicer
    models : ModelStore
    events : InteractionStore
    owns_events : bool
        Whether :meth:`stop` closes ``events`` (it was opened here).
    metrics : Metrics
    serving_event : threading.Event
        Set once the first bundle serves.
    metrics_port : int or None
        The bound ``/metrics`` port once started, if configured.
    """

    config: ServerConfig
    server: grpc.Server
    port: int
    health: health.HealthServicer
    models: ModelStore
    events: InteractionStore
    owns_events: bool
    metrics: Metrics
    serving_event: threading.Event
    metrics_port: int | None = None
    _metrics_server: Any = None

    def start(self) -> None:
        """Start the metrics endpoint (if configured) and the bundle poller.

        The caller starts the gRPC server itself (``server.start()``).

        Raises
        ------
        OSError
            If the metrics address cannot be bound.
        """
        if self.config.metrics_port is not None:
            self._metrics_server, self.metrics_port = start_metrics_server(
                self.metrics, self.config.metrics_host, self.config.metrics_port
            )
        self.models.start()

    def wait_until_serving(self, timeout: float | None = None) -> bool:
        """Block until the first bundle serves; False if ``timeout`` passed."""
        return self.serving_event.wait(timeout)

    def stop(self, grace: float | None = None) -> None:
        """Shut down: NOT_SERVING, let in-flight calls finish, release everything.

        Parameters
        ----------
        grace : float, optional
            Seconds in-flight calls get; ``config.shutdown_grace_s`` if None.
        """
        grace = self.config.shutdown_grace_s if grace is None else grace
        stopped = self.server.stop(grace)
        self.health.enter_graceful_shutdown()
        stopped.wait()
        self.models.stop(timeout=grace)
        if self.owns_events:
            self.events.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        logger.info("server on port %s stopped", self.port)


def create_server(
    config: ServerConfig, store: InteractionStore | None = None
) -> tuple[grpc.Server, int, Runtime]:
    """Build the gRPC server for ``config``, bound but not started.

    Parameters
    ----------
    config : ServerConfig
    store : InteractionStore, optional
        An open store to use (its owner closes it); by default one is opened
        on ``config.events_db`` and closed by :meth:`Runtime.stop`.

    Returns
    -------
    server : grpc.Server
        Call ``server.start()``, then ``runtime.start()``.
    port : int
        The port bound (the free one picked when ``config.port`` is 0).
    runtime : Runtime

    Raises
    ------
    InteractionStoreError
        If the events database cannot be opened.
    RuntimeError
        If the address cannot be bound.
    """
    config.validate()
    limit_threads(config.blas_threads)
    metrics = create_metrics()
    events = store if store is not None else InteractionStore(config.events_db).open()
    recommender = Recommender(events, config.experiment, config.deadline_margin_s)
    health_servicer = health.HealthServicer()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    server = grpc.server(
        futures.ThreadPoolExecutor(
            max_workers=config.worker_threads,
            thread_name_prefix="bookverse-rpc",
            initializer=partial(limit_threads, config.blas_threads),
        ),
        interceptors=(MetricsInterceptor(metrics),),
        options=(
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.max_receive_message_length", config.max_message_bytes),
            # off by default: a second server on a port in use must fail,
            # not share it; on for one process per core
            ("grpc.so_reuseport", int(config.reuse_port)),
        ),
        maximum_concurrent_rpcs=config.max_concurrent_rpcs,
    )
    serving = threading.Event()
    models = ModelStore(
        config.artifacts,
        config.reload_interval_s,
        metrics,
        warm_up=lambda bundle: warm_up(recommender, bundle, config.blas_threads),
        on_swap=lambda bundle: _mark_serving(health_servicer, serving),
    )
    try:
        port = _bind(server, config.host, config.port)
    except RuntimeError:
        if store is None:
            events.close()
        raise
    runtime = Runtime(
        config=config,
        server=server,
        port=port,
        health=health_servicer,
        models=models,
        events=events,
        owns_events=store is None,
        metrics=metrics,
        serving_event=serving,
    )

    servicer = RecommendationServicer(models, recommender, events, metrics)
    pb_grpc.add_RecommendationServiceServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    return server, port, runtime


def limit_threads(threads: int) -> None:
    """Cap BLAS, OpenMP and FAISS threads at ``threads`` for the calling thread.

    BLAS limits are process-wide, but OpenMP's (which FAISS and an OpenMP
    build of OpenBLAS use) belong to the thread that sets them: a thread that
    never called this would use every core. FAISS is set apart from the
    libraries ``threadpoolctl`` finds. Repeated calls in one thread are free.
    """
    if getattr(_limited, "threads", None) == threads:
        return
    threadpool_limits(limits=threads)
    faiss.omp_set_num_threads(threads)
    _limited.threads = threads


def warm_up(recommender: Recommender, bundle: ServingBundle, threads: int) -> None:
    """One real recommendation for a training reader and for a cold start.

    Runs in the model store's thread, under the same thread limits as a call.

    Raises
    ------
    Exception
        Whatever the pipeline raises; the model store then refuses the bundle.
    """
    limit_threads(threads)
    readers = [COLD_START_PROBE, *list(bundle.user_index)[:1]]
    for reader in readers:
        query = RecommendQuery(reader, 10, Filters(), (), "warm-up")
        recommender.recommend(bundle, query)
    if bundle.ledger is not None:
        bundle.ledger.clear()  # warm-up answers reached no one


def _mark_serving(servicer: health.HealthServicer, serving: threading.Event) -> None:
    for name in ("", SERVICE_NAME):
        servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    serving.set()


def _bind(server: grpc.Server, host: str, port: int) -> int:
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:  # grpcio raises for an address in use
        raise RuntimeError(f"cannot bind {address} (in use?)") from exc
    if bound == 0:
        raise RuntimeError(f"cannot bind {address} (in use?)")
    return int(bound)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line of ``bookverse-serve``; every flag overrides config."""
    parser = argparse.ArgumentParser(
        prog="bookverse-serve",
        description="Serve book recommendations over gRPC.",
    )
    parser.add_argument("--artifacts", type=Path, help="artifacts root (CURRENT)")
    parser.add_argument("--events-db", type=Path, help="SQLite file of events")
    parser.add_argument("--host", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="gRPC port; 0 picks a free one")
    parser.add_argument("--metrics-host", help="metrics address (127.0.0.1)")
    parser.add_argument("--metrics-port", type=int, help="/metrics port; off if unset")
    parser.add_argument("--max-concurrent-rpcs", type=int)
    parser.add_argument("--worker-threads", type=int)
    parser.add_argument("--reload-interval-s", type=float)
    parser.add_argument("--shutdown-grace-s", type=float)
    parser.add_argument("--blas-threads", type=int)
    parser.add_argument(
        "--reuse-port",
        action="store_true",
        default=None,
        help="share the port with other server processes (one per core)",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR")
    )
    return parser.parse_args(argv)


def config_from(args: argparse.Namespace, environ: dict[str, str]) -> ServerConfig:
    """``BOOKVERSE_*`` settings with the flags given on the command line on top.

    Raises
    ------
    ConfigError
        If a setting breaks its rule.
    """
    flags = {
        name: value
        for name, value in vars(args).items()
        if value is not None and name != "log_level"
    }
    return dataclasses.replace(from_env(environ), **flags).validate()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until SIGTERM or SIGINT; returns the exit status."""
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = config_from(args, dict(os.environ))
    except ConfigError as exc:
        logger.error("configuration: %s", exc)
        return 2

    try:
        server, port, runtime = create_server(config)
        server.start()
        runtime.start()
    except (InteractionStoreError, RuntimeError, OSError) as exc:
        logger.error("cannot start: %s", exc)
        return 1

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info("signal %s: shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    logger.info("listening on %s:%s; loading %s", config.host, port, config.artifacts)
    while not stop.is_set() and not runtime.wait_until_serving(0.5):
        continue
    if runtime.models.ready:
        version = runtime.models.current().version
        logger.info("serving on %s:%s version %s", config.host, port, version)
    while not stop.wait(1.0):
        continue
    runtime.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
