"""Latency of personalised Recommend calls: meta-ranker bundle against blend only.

Fits the served model families and a small meta-ranker once on the
Book-Crossing slice the tests use, publishes two bundles (the blend alone,
and the blend with the ranker; neither re-ranks unless ``--rerank mmr`` or
``--rerank exposure`` is given), starts the real server on 127.0.0.1 (port
0) over each in turn and times ``--calls`` Recommend calls (n = 10) over a
real channel, one at a time, cycling over training readers. Prints p50,
p95 and max per bundle::

    python bench/serving_latency.py [--calls 300] [--rerank {mmr,exposure}]

Every call has a deadline (``--timeout``), so a run is bounded; the first
``--warmup`` calls of each bundle are not counted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))

from conftest import (  # noqa: E402 (the test fixtures' data and models)
    bookcrossing_slice,
    fit_models,
    fit_ranker,
    publish_bundle,
    server_config,
    synthetic_dataset,
)

from bookverse.recommendations.v1 import recommendations_pb2 as pb  # noqa: E402
from bookverse.recommendations.v1 import recommendations_pb2_grpc as pb_grpc  # noqa: E402
from bookverse.server.app import create_server  # noqa: E402

RERANKS: dict[str, dict[str, Any]] = {
    "mmr": {"diversity": 0.3, "max_per_author": 2, "embedding": "als"},
    # the Book-Crossing bundle's kind of setting: MMR orders the best 100
    # under the author cap, the exposure ledger arranges places 8 to 10
    "exposure": {
        "diversity": 0.0,
        "max_per_author": 2,
        "embedding": "als",
        "exposure": {"head": 7, "depth": 100},
    },
}


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def measure(
    root: Path, users: list[str], calls: int, warmup: int, timeout: float
) -> list[float]:
    """Milliseconds of ``calls`` Recommend calls to a server over ``root``."""
    with tempfile.TemporaryDirectory() as events:
        config = server_config(root, Path(events) / "events.db")
        server, port, runtime = create_server(config)
        server.start()
        runtime.start()
        try:
            if not runtime.wait_until_serving(timeout=60):
                raise RuntimeError(f"{root}: bundle did not load within 60 s")
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.RecommendationServiceStub(channel)
                timings = []
                for i in range(warmup + calls):
                    request = pb.RecommendRequest(user_id=users[i % len(users)], n=10)
                    started = time.perf_counter()
                    answer = stub.Recommend(request, timeout=timeout)
                    elapsed = (time.perf_counter() - started) * 1e3
                    if answer.strategy != pb.STRATEGY_PERSONALIZED:
                        raise RuntimeError(f"call {i}: not personalised")
                    if i >= warmup:
                        timings.append(elapsed)
                return timings
        finally:
            runtime.stop(grace=1.0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--rerank", choices=sorted(RERANKS), default=None)
    args = parser.parse_args(argv)

    dataset = bookcrossing_slice() or synthetic_dataset()
    models = fit_models(dataset)
    ranker = fit_ranker(dataset)
    rerank = None if args.rerank is None else RERANKS[args.rerank]
    rng = np.random.default_rng(0)
    users = [str(u) for u in rng.choice(dataset.user_ids, size=100, replace=False)]
    print(
        f"{dataset.name}: {dataset.n_users} readers x {dataset.n_items} books; "
        f"ranker pool {ranker.pool}, {len(ranker.features)} features; "
        f"rerank {rerank}"
    )

    print(f"{'bundle':<14}{'calls':>7}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}")
    with tempfile.TemporaryDirectory() as temp:
        for name, with_ranker in (("blend only", False), ("meta-ranker", True)):
            root = Path(temp) / name.replace(" ", "-")
            publish_bundle(
                root,
                dataset,
                models,
                ranker=ranker if with_ranker else None,
                rerank=rerank,
            )
            timings = measure(root, users, args.calls, args.warmup, args.timeout)
            print(
                f"{name:<14}{len(timings):>7}"
                f"{statistics.median(timings):>9.2f}"
                f"{percentile(timings, 95):>9.2f}{max(timings):>9.2f}"
            )


if __name__ == "__main__":
    main()
