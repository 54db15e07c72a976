"""What every protocol of the server answers for an error: one status per failure, the same over HTTP and gRPC.

Bad input is the client's to fix (400 / INVALID_ARGUMENT), a full server is temporary (503 with ``Retry-After`` /
UNAVAILABLE), and only a failure of the model or of tilecast itself is a 500 / INTERNAL.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from ..errors import InputError, ModelError, OutputShapeError, SpecError

__all__ = ["GRPC_CODES", "RETRY_AFTER_S", "HTTPError", "Overloaded", "status_of", "token_status"]

RETRY_AFTER_S = 1


class HTTPError(Exception):
    """An answer other than 200 that a handler decides on (status, message, extra headers)."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.headers = status, dict(headers or {})


class Overloaded(HTTPError):
    """503: the server is at a limit (memory in flight, connections); the client should retry after a pause."""

    def __init__(self, message: str) -> None:
        super().__init__(503, message, {"Retry-After": str(RETRY_AFTER_S)})


GRPC_CODES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
              413: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE"}
"""gRPC status names by HTTP status; anything else is INTERNAL."""


def status_of(exc: BaseException) -> int:
    """The HTTP status for an exception raised while answering a request."""
    if isinstance(exc, HTTPError):
        return exc.status
    if isinstance(exc, InputError | SpecError) or (isinstance(exc, ModelError) and isinstance(exc, ValueError)
                                                   and not isinstance(exc, OutputShapeError)):
        return 400
    if isinstance(exc, MemoryError):
        return 503
    return 500


def token_status(header: str, token: str | None) -> int | None:
    """None when ``header`` (an ``Authorization`` value) passes ``token``; else 401 (none given) or 403 (wrong)."""
    if not token:
        return None
    if not header:
        return 401
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        return 403
    return None
