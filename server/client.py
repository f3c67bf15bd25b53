"""``bookverse-client``: ask a running server from the command line.

Examples
--------
::

    bookverse-client recommend 11676 --n 5
    bookverse-client recommend new-reader --session 0316666343
    bookverse-client explain 11676 0385504209
    bookverse-client track 11676 0385504209 --type purchase
    bookverse-client track 11676 0385504209 --type rating --rating 9
    bookverse-client health

Answers print as readable tables. The exit status is 0 on success, 1 when the
server answers with an error (printed as ``CODE: message``) or, for
``health``, is not SERVING.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bookverse.recommendations.v1 import recommendations_pb2 as pb
from bookverse.recommendations.v1 import recommendations_pb2_grpc as pb_grpc

DEFAULT_ADDRESS = "127.0.0.1:50051"
TYPES = {
    "view": pb.INTERACTION_TYPE_VIEW,
    "add_to_list": pb.INTERACTION_TYPE_ADD_TO_LIST,
    "purchase": pb.INTERACTION_TYPE_PURCHASE,
    "rating": pb.INTERACTION_TYPE_RATING,
    "click": pb.INTERACTION_TYPE_CLICK,
    "finished": pb.INTERACTION_TYPE_FINISHED,
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line of ``bookverse-client``."""
    parser = argparse.ArgumentParser(
        prog="bookverse-client", description="Query a BookVerse server."
    )
    parser.add_argument("--address", default=DEFAULT_ADDRESS, help="host:port")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds")
    commands = parser.add_subparsers(dest="command", required=True)

    rec = commands.add_parser("recommend", help="next books for a reader")
    rec.add_argument("user")
    rec.add_argument("--n", type=int, default=10)
    rec.add_argument("--session", nargs="*", default=[], metavar="ISBN")
    rec.add_argument("--exclude", nargs="*", default=[], metavar="ISBN")
    rec.add_argument("--include-read", action="store_true")

    explain = commands.add_parser("explain", help="why a book suits a reader")
    explain.add_argument("user")
    explain.add_argument("book")

    track = commands.add_parser("track", help="record an interaction")
    track.add_argument("user")
    track.add_argument("book")
    track.add_argument("--type", choices=sorted(TYPES), required=True)
    track.add_argument("--rating", type=float)
    track.add_argument("--client-event-id", default="")

    commands.add_parser("health", help="is the server serving?")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    """Run one command against ``--address``; returns the exit status."""
    args = parse_args(argv)
    with grpc.insecure_channel(args.address) as channel:
        try:
            return COMMANDS[args.command](channel, args, out)
        except grpc.RpcError as error:
            code = error.code().name if error.code() else "UNKNOWN"
            print(f"{code}: {error.details()}", file=sys.stderr)
            return 1


def recommend(channel: grpc.Channel, args: argparse.Namespace, out: TextIO) -> int:
    stub = pb_grpc.RecommendationServiceStub(channel)
    answer = stub.Recommend(
        pb.RecommendRequest(
            user_id=args.user,
            n=args.n,
            filters=pb.Filters(
                exclude_book_ids=args.exclude, include_already_read=args.include_read
            ),
            context=pb.Context(session_book_ids=args.session),
        ),
        timeout=args.timeout,
    )
    print(
        f"reader {args.user}: {_strategy(answer.strategy)} "
        f"({answer.strategy_reason}); model {answer.model_version}, "
        f"variant {answer.experiment_variant}",
        file=out,
    )
    if answer.degraded:
        print(f"degraded: {answer.degraded_reason}", file=out)
    if answer.ignored_unknown_ids:
        print(f"ignored {answer.ignored_unknown_ids} unknown ids", file=out)
    rows = [
        (
            str(rank),
            item.title or item.book_id,
            item.author,
            str(item.year or ""),
            f"{item.score:.3f}",
            f"{item.confidence:.2f}",
            item.reason + (" (read)" if item.already_seen else ""),
        )
        for rank, item in enumerate(answer.items, start=1)
    ]
    headers = ("#", "title", "author", "year", "score", "conf", "reason")
    print(table(headers, rows, widths=(3, 40, 24, 4, 6, 4, 60)), file=out)
    return 0


def explain(channel: grpc.Channel, args: argparse.Namespace, out: TextIO) -> int:
    stub = pb_grpc.RecommendationServiceStub(channel)
    answer = stub.Explain(
        pb.ExplainRequest(user_id=args.user, book_id=args.book), timeout=args.timeout
    )
    print(f"{answer.title or answer.book_id} by {answer.author or '?'}", file=out)
    print(
        f"for reader {args.user}: {_strategy(answer.strategy)}, "
        f"score {answer.score:.3f}, model {answer.model_version}"
        + ("" if answer.known_to_model else ", unknown to the models")
        + (", already read" if answer.already_seen else ""),
        file=out,
    )
    for reason in answer.reasons:
        print(f"  - {reason}", file=out)
    rows = [
        (c.model, f"{c.score:.3f}", f"{c.weight:.3f}", f"{c.contribution:.3f}")
        for c in answer.contributions
    ]
    headers = ("model", "score", "weight", "contribution")
    print(table(headers, rows, widths=(12, 6, 6, 12)), file=out)
    return 0


def track(channel: grpc.Channel, args: argparse.Namespace, out: TextIO) -> int:
    stub = pb_grpc.RecommendationServiceStub(channel)
    request = pb.TrackInteractionRequest(
        user_id=args.user,
        book_id=args.book,
        type=TYPES[args.type],
        client_event_id=args.client_event_id,
    )
    if args.rating is not None:
        request.rating = args.rating
    answer = stub.TrackInteraction(request, timeout=args.timeout)
    print(
        f"event {answer.event_id} stored"
        + (" (duplicate of an earlier one)" if answer.duplicate else "")
        + ("" if answer.book_known_to_model else "; book not yet known to the model"),
        file=out,
    )
    return 0


def health(channel: grpc.Channel, args: argparse.Namespace, out: TextIO) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    answer = stub.Check(health_pb2.HealthCheckRequest(), timeout=args.timeout)
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    print(name, file=out)
    return 0 if answer.status == health_pb2.HealthCheckResponse.SERVING else 1


COMMANDS = {
    "recommend": recommend,
    "explain": explain,
    "track": track,
    "health": health,
}


def table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], widths: Sequence[int]
) -> str:
    """Rows as fixed-width text columns, cells cut to their width."""
    lines = [headers, *rows]
    rendered = []
    for line in lines:
        cells = [_fit(cell, width) for cell, width in zip(line, widths, strict=True)]
        rendered.append("  ".join(cells).rstrip())
    rule = "  ".join("-" * width for width in widths)
    return "\n".join([rendered[0], rule, *rendered[1:]])


def _fit(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text.ljust(width) if len(text) <= width else text[: width - 1] + "…"


def _strategy(value: int) -> str:
    return pb.Strategy.Name(value).removeprefix("STRATEGY_").lower()


if __name__ == "__main__":
    sys.exit(main())
