"""How requests to a hosted model are sent: one :class:`EndpointOptions` value, written once.

The CLI's ``endpoint_request_options`` builds it from flags, :func:`tilecast.runtimes.http.endpoint_runtime` and
:meth:`tilecast.Model.from_endpoint` build it from keywords, and :class:`~tilecast.runtimes.http.EndpointRuntime`
takes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import SpecError
from ..spec import replace_options
from .retry import RetryPolicy

__all__ = ["EndpointOptions"]


@dataclass(frozen=True)
class EndpointOptions:
    """``protocol`` (``"v2"``, ``"tfserving"``, ``"vertex"``, ``"grpc"``; default: from the URL) and
    ``payload_format`` (default: the protocol's own) say how to talk; ``max_payload_bytes`` caps a request body
    (tiles are packed under it, with ``output_multiplier`` the expected response/request size ratio, as in Earth
    Engine); ``concurrency`` requests run at once, each with ``timeout`` seconds and ``retry``; ``headers`` and a
    bearer ``token`` go with every request."""

    protocol: str | None = None
    payload_format: str | None = None
    max_payload_bytes: int = 1_500_000
    output_multiplier: float | None = None
    concurrency: int = 4
    headers: Mapping[str, str] = field(default_factory=dict)
    token: str | None = field(default=None, repr=False)
    timeout: float = 60.0
    retry: RetryPolicy | None = None

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise SpecError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.timeout <= 0:
            raise SpecError(f"timeout must be positive, got {self.timeout}")
        if self.max_payload_bytes <= 0:
            raise SpecError(f"max_payload_bytes must be positive, got {self.max_payload_bytes}")
        if self.output_multiplier is not None and self.output_multiplier < 1:
            raise SpecError(f"output_multiplier must be >= 1 (Earth Engine's rule), got {self.output_multiplier}")

    @classmethod
    def create(cls, base: EndpointOptions | None = None, **options: Any) -> EndpointOptions:
        """``base`` (or the defaults) with ``options`` replaced (None keeps the default); an unknown keyword is a
        clear error."""
        if options.get("headers") is not None:
            options["headers"] = dict(options["headers"])
        return replace_options(base or cls(), options, "unknown endpoint option(s) {unknown}; the options are {known}",
                               none_keeps=True)
