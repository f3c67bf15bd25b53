"""The server's configuration, read once into one typed object.

Every setting has a default; an environment variable ``BOOKVERSE_<NAME>``
overrides it (:func:`from_env`), and the command-line flags of
``bookverse-serve`` override both (``bookverse.server.app``). Nothing else in
the server reads the environment.

========================================  ===================  ==============
variable                                  field                default
========================================  ===================  ==============
``BOOKVERSE_ARTIFACTS``                   ``artifacts``        ``artifacts``
``BOOKVERSE_EVENTS_DB``                   ``events_db``        ``events.db``
``BOOKVERSE_HOST``                        ``host``             ``127.0.0.1``
``BOOKVERSE_PORT``                        ``port``             ``50051``
``BOOKVERSE_METRICS_HOST``                ``metrics_host``     ``127.0.0.1``
``BOOKVERSE_METRICS_PORT``                ``metrics_port``     off
``BOOKVERSE_MAX_CONCURRENT_RPCS``         ``max_concurrent_rpcs``  ``64``
``BOOKVERSE_WORKER_THREADS``              ``worker_threads``   ``16``
``BOOKVERSE_MAX_MESSAGE_BYTES``           ``max_message_bytes``  4 MiB
``BOOKVERSE_RELOAD_INTERVAL_S``           ``reload_interval_s``  ``5``
``BOOKVERSE_DEADLINE_MARGIN_S``           ``deadline_margin_s``  ``0.05``
``BOOKVERSE_SHUTDOWN_GRACE_S``            ``shutdown_grace_s``  ``10``
``BOOKVERSE_BLAS_THREADS``                ``blas_threads``     ``1``
``BOOKVERSE_REUSE_PORT``                  ``reuse_port``       ``false``
``BOOKVERSE_EXPERIMENT_VARIANT``          ``experiment.variant``  ``control``
``BOOKVERSE_EXPERIMENT_WEIGHTS``          ``experiment.weights``  manifest's
========================================  ===================  ==============

``BOOKVERSE_METRICS_PORT`` is off when unset or empty; ``0`` asks for an
ephemeral port. ``BOOKVERSE_EXPERIMENT_WEIGHTS`` is a comma-separated list of
``model=weight`` pairs that replaces the bundle's blend weights for models it
names, e.g. ``als=0.6,item_knn=0.3``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

PREFIX = "BOOKVERSE_"
DEFAULT_PORT = 50051
LOOPBACK = "127.0.0.1"

_T = TypeVar("_T")


class ConfigError(ValueError):
    """A setting breaks its rule; the message names the setting and the rule."""


@dataclass(frozen=True)
class ExperimentConfig:
    """The experiment variant this process serves.

    Attributes
    ----------
    variant : str
        Name echoed in every answer's ``experiment_variant``.
    weights : tuple of (model, weight)
        Blend weights replacing the bundle's for the models named; the others
        keep the bundle's weight. Empty means the bundle's weights as they are.
    """

    variant: str = "control"
    weights: tuple[tuple[str, float], ...] = ()

    def blend_weights(self, bundle_weights: Mapping[str, float]) -> dict[str, float]:
        """The bundle's weights with this variant's overrides applied."""
        merged = dict(bundle_weights)
        merged.update(dict(self.weights))
        return merged


@dataclass(frozen=True)
class ServerConfig:
    """Everything a server process needs to know, checked by :meth:`validate`.

    Attributes
    ----------
    artifacts : Path
        Root holding ``CURRENT`` and ``versions/`` (``bookverse.models.bundle``).
    events_db : Path
        The SQLite file of tracked interactions.
    host, port : str, int
        Address the gRPC server binds; ``port`` 0 picks a free port.
    metrics_host, metrics_port : str, int or None
        Address of the Prometheus ``/metrics`` endpoint; ``None`` turns it
        off and ``0`` picks a free port.
    max_concurrent_rpcs : int
        Calls in flight before new ones are refused with RESOURCE_EXHAUSTED.
    worker_threads : int
        Threads of the gRPC executor.
    max_message_bytes : int
        Largest request or response message, each way.
    reload_interval_s : float
        Seconds between two looks at ``<artifacts>/CURRENT``.
    deadline_margin_s : float
        Time kept in reserve before a call's deadline: a stage that would
        start with less than this left answers degraded instead. The default
        (50 ms) covers the costliest stage for a reader with thousands of
        books, so that a short deadline gets the flagged fallback, not
        DEADLINE_EXCEEDED.
    shutdown_grace_s : float
        Seconds in-flight calls get to finish on shutdown.
    blas_threads : int
        Threads BLAS and OpenMP may use per process.
    reuse_port : bool
        Let several server processes share the port (SO_REUSEPORT), for one
        process per core. Off by default, so that a second server started on
        a port in use fails instead of silently taking half the calls.
    experiment : ExperimentConfig
        The variant served and its blend weights.
    """

    artifacts: Path = Path("artifacts")
    events_db: Path = Path("events.db")
    host: str = LOOPBACK
    port: int = DEFAULT_PORT
    metrics_host: str = LOOPBACK
    metrics_port: int | None = None
    max_concurrent_rpcs: int = 64
    worker_threads: int = 16
    max_message_bytes: int = 4 * 1024 * 1024
    reload_interval_s: float = 5.0
    deadline_margin_s: float = 0.05
    shutdown_grace_s: float = 10.0
    blas_threads: int = 1
    reuse_port: bool = False
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)

    def validate(self) -> ServerConfig:
        """Check every rule; returns self.

        Raises
        ------
        ConfigError
            Naming the first field that breaks its rule.
        """
        ports = [("port", self.port), ("metrics_port", self.metrics_port)]
        for name, port in ports:
            if port is not None and not 0 <= port <= 65535:
                raise ConfigError(f"{name} must be in 0..65535, got {port}")
        positive_ints = (
            ("max_concurrent_rpcs", self.max_concurrent_rpcs),
            ("worker_threads", self.worker_threads),
            ("max_message_bytes", self.max_message_bytes),
            ("blas_threads", self.blas_threads),
        )
        for name, value in positive_ints:
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        seconds: tuple[tuple[str, float, bool], ...] = (
            ("reload_interval_s", self.reload_interval_s, False),
            ("deadline_margin_s", self.deadline_margin_s, True),
            ("shutdown_grace_s", self.shutdown_grace_s, True),
        )
        for name, seconds_value, zero_ok in seconds:
            low_ok = seconds_value >= 0 if zero_ok else seconds_value > 0
            if not math.isfinite(seconds_value) or not low_ok:
                rule = ">= 0" if zero_ok else "> 0"
                raise ConfigError(
                    f"{name} must be finite and {rule}, got {seconds_value}"
                )
        for name, host in (("host", self.host), ("metrics_host", self.metrics_host)):
            if not host or any(c.isspace() for c in host):
                raise ConfigError(f"{name} must be a host name without spaces")
        return self


def from_env(environ: Mapping[str, str]) -> ServerConfig:
    """Read the ``BOOKVERSE_*`` variables of ``environ`` over the defaults.

    Parameters
    ----------
    environ : mapping of str to str
        Usually ``os.environ``, passed in by the entry point.

    Returns
    -------
    ServerConfig
        Validated.

    Raises
    ------
    ConfigError
        If a variable cannot be parsed or its value breaks its rule; the
        message names the variable.
    """
    base = ServerConfig()
    read = _Reader(environ)
    experiment = ExperimentConfig(
        variant=read("EXPERIMENT_VARIANT", str, base.experiment.variant),
        weights=read("EXPERIMENT_WEIGHTS", parse_weights, base.experiment.weights),
    )
    config = ServerConfig(
        artifacts=read("ARTIFACTS", Path, base.artifacts),
        events_db=read("EVENTS_DB", Path, base.events_db),
        host=read("HOST", str, base.host),
        port=read("PORT", int, base.port),
        metrics_host=read("METRICS_HOST", str, base.metrics_host),
        metrics_port=read("METRICS_PORT", int, None),
        max_concurrent_rpcs=read("MAX_CONCURRENT_RPCS", int, base.max_concurrent_rpcs),
        worker_threads=read("WORKER_THREADS", int, base.worker_threads),
        max_message_bytes=read("MAX_MESSAGE_BYTES", int, base.max_message_bytes),
        reload_interval_s=read("RELOAD_INTERVAL_S", float, base.reload_interval_s),
        deadline_margin_s=read("DEADLINE_MARGIN_S", float, base.deadline_margin_s),
        shutdown_grace_s=read("SHUTDOWN_GRACE_S", float, base.shutdown_grace_s),
        blas_threads=read("BLAS_THREADS", int, base.blas_threads),
        reuse_port=read("REUSE_PORT", parse_flag, base.reuse_port),
        experiment=experiment,
    )
    return config.validate()


def parse_flag(text: str) -> bool:
    """``"1"``/``"true"``/``"yes"`` or ``"0"``/``"false"``/``"no"`` (any case).

    Raises
    ------
    ValueError
        For any other text.
    """
    value = text.strip().lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    raise ValueError("must be one of 1, true, yes, 0, false, no")


def parse_weights(text: str) -> tuple[tuple[str, float], ...]:
    """Parse ``"als=0.6,item_knn=0.3"`` into ``(("als", 0.6), ("item_knn", 0.3))``.

    Raises
    ------
    ValueError
        If a pair is not ``name=number`` or a weight is negative or not finite.
    """
    pairs: list[tuple[str, float]] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        weight = float(value) if sep else math.nan
        if not name.strip() or not math.isfinite(weight) or weight < 0:
            raise ValueError("each entry must be model=weight with a weight >= 0")
        pairs.append((name.strip(), weight))
    return tuple(pairs)


@dataclass(frozen=True)
class _Reader:
    """Reads one ``BOOKVERSE_`` variable, parsed, or a default when unset."""

    environ: Mapping[str, str]

    def __call__(self, name: str, parse: Callable[[str], _T], default: Any) -> Any:
        raw = self.environ.get(PREFIX + name, "").strip()
        if not raw:
            return default
        try:
            return parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{PREFIX}{name}: cannot parse ({exc})") from exc
