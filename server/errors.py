"""Domain errors of the server and the one place they become gRPC statuses.

The request-time code (validation, recommender, model store) raises the
exceptions below and knows nothing of gRPC. The servicer catches everything
at the edge and hands it to :func:`status_for`, the only function that maps an
error to a status code. Messages of domain errors are written for the client:
they name the field and the rule and never echo what the client sent. Any
other exception is a server fault: the client gets ``INTERNAL`` with a generic
message and the request id, and the traceback goes to the server's log only.
"""

from __future__ import annotations

import logging

import grpc

logger = logging.getLogger(__name__)


class ServiceError(Exception):
    """Base of the errors a client may be told about, message as is."""


class InvalidArgument(ServiceError):  # noqa: N818 (named after its status)
    """A request field breaks a rule.

    Parameters
    ----------
    field : str
        Path of the field in the request, e.g. ``"filters.min_year"``.
    rule : str
        The rule it breaks, e.g. ``"must be <= filters.max_year"``.
    """

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


class NotFound(ServiceError):  # noqa: N818 (named after its status)
    """The call is about a thing that does not exist (e.g. a book)."""

    def __init__(self, field: str, what: str) -> None:
        super().__init__(f"{field}: {what}")
        self.field = field


class Unavailable(ServiceError):  # noqa: N818 (named after its status)
    """The server cannot answer yet or any more (no bundle, store closed)."""


class Overloaded(ServiceError):  # noqa: N818 (named after its status)
    """Too much work in flight; the client should back off and retry."""


class DeadlineExceeded(ServiceError):  # noqa: N818 (named after its status)
    """The call's deadline passed before even a degraded answer was ready."""


class Cancelled(ServiceError):  # noqa: N818 (named after its status)
    """The client went away; the work stopped."""


_CODES: tuple[tuple[type[ServiceError], grpc.StatusCode], ...] = (
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (Cancelled, grpc.StatusCode.CANCELLED),
)


def status_for(error: BaseException, request_id: str) -> tuple[grpc.StatusCode, str]:
    """The gRPC status code and client-facing message for ``error``.

    A domain error keeps its own message; anything else is logged here with
    its traceback and becomes ``INTERNAL`` with a generic message that only
    carries ``request_id``, so no internal path or value leaks.

    Parameters
    ----------
    error : BaseException
        What the call raised.
    request_id : str
        The call's id, quoted in the INTERNAL message and the log.

    Returns
    -------
    (grpc.StatusCode, str)
    """
    for kind, code in _CODES:
        if isinstance(error, kind):
            return code, str(error)
    logger.error(
        "internal error in request %s",
        request_id,
        exc_info=(type(error), error, error.__traceback__),
    )
    return grpc.StatusCode.INTERNAL, f"internal error (request id {request_id})"
