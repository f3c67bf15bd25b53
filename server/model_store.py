"""The served bundle, and its replacement when a new one is published.

:class:`ModelStore` holds exactly one reference to the current
:class:`~bookverse.server.bundle.ServingBundle`. A background thread reads
``<root>/CURRENT`` every ``interval_s`` seconds; when the name in it differs
from the last one tried, the new bundle is loaded and verified beside the
old one (which keeps serving meanwhile) and, if it passes, the reference is
swapped in one assignment. A call takes the reference once
(:meth:`ModelStore.current`) and uses that bundle to the end, so no call
ever mixes two versions; the old bundle is freed when its last call ends.

A bundle that fails to load is refused: the failure is logged with the file
and the reason, counted in ``bookverse_model_reload_total{result="failure"}``,
and the old bundle keeps serving. The same name is not tried again; the
store tries again when ``CURRENT`` names another version.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from bookverse.models.bundle import (
    POINTER,
    BundleError,
    read_pointer,
    version_folder,
)
from bookverse.server.bundle import ServingBundle
from bookverse.server.errors import Unavailable
from bookverse.server.metrics import Metrics

logger = logging.getLogger(__name__)

Loader = Callable[[Path], ServingBundle]
Listener = Callable[[ServingBundle], None]


class ModelStore:
    """The current bundle of one process, hot-reloaded from ``root``.

    Parameters
    ----------
    root : Path
        Artifacts root holding ``CURRENT`` and ``versions/``.
    interval_s : float
        Seconds between two reads of ``CURRENT``.
    metrics : Metrics
        Where reload results and the served version are reported.
    warm_up : callable, optional
        Called with a freshly verified bundle before it is swapped in (e.g.
        one real recommendation); an exception refuses the bundle.
    on_swap : callable, optional
        Called with each bundle right after it became the current one.
    loader : callable, default ``ServingBundle.load``
        Loads and verifies one version folder.
    """

    def __init__(
        self,
        root: Path,
        interval_s: float,
        metrics: Metrics,
        warm_up: Listener | None = None,
        on_swap: Listener | None = None,
        loader: Loader = ServingBundle.load,
    ) -> None:
        self.root = root
        self.interval_s = interval_s
        self.metrics = metrics
        self.warm_up = warm_up
        self.on_swap = on_swap
        self.loader = loader
        self._bundle: ServingBundle | None = None
        self._tried: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def current(self) -> ServingBundle:
        """The bundle to use for one whole call.

        Raises
        ------
        Unavailable
            If no bundle has been loaded yet.
        """
        bundle = self._bundle
        if bundle is None:
            raise Unavailable("no model is loaded yet; retry shortly")
        return bundle

    @property
    def ready(self) -> bool:
        return self._bundle is not None

    def start(self) -> None:
        """Start polling ``CURRENT`` in a daemon thread (first look at once)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name="bookverse-model-store", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop polling; a load in progress finishes first (up to ``timeout``)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:  # the poller must survive anything a poll raises
                logger.exception("model store: unexpected failure while polling")
            self._stop.wait(self.interval_s)

    def poll(self) -> bool:
        """Look at ``CURRENT`` once; load and swap in a version not yet tried.

        Returns
        -------
        bool
            True when a new bundle became current.
        """
        try:
            version = read_pointer(self.root)
        except BundleError as exc:
            # an unreadable pointer is refused once, and again only if it changes
            marker = f"unreadable:{(self.root / POINTER).stat().st_mtime_ns}"
            if marker != self._tried:
                self._tried = marker
                self._refuse(POINTER, exc, traceback=False)
            return False
        if version is None or version == self._tried:
            return False
        self._tried = version
        try:
            bundle = self.loader(version_folder(self.root, version))
            if bundle.version != version:
                raise BundleError(
                    f"manifest.json: version {bundle.version!r} differs from "
                    f"CURRENT {version!r}"
                )
            if self.warm_up is not None:
                self.warm_up(bundle)
        except BundleError as exc:
            self._refuse(version, exc, traceback=False)
            return False
        except Exception as exc:  # a warm-up or loader bug must not stop serving
            self._refuse(version, exc, traceback=True)
            return False

        previous, self._bundle = self._bundle, bundle
        self.metrics.model_reloads.labels(result="success").inc()
        self.metrics.set_model_version(bundle.version)
        logger.info(
            "serving bundle %s (was %s)",
            bundle.version,
            previous.version if previous else "nothing",
        )
        if self.on_swap is not None:
            self.on_swap(bundle)
        return True

    def _refuse(self, version: str, error: Exception, traceback: bool) -> None:
        self.metrics.model_reloads.labels(result="failure").inc()
        logger.error(
            "bundle %s refused, %s keeps serving: %s",
            version,
            self._bundle.version if self._bundle else "nothing",
            error,
            exc_info=traceback,
        )
