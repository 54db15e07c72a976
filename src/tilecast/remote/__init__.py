"""The endpoint client's parts: where to send (:mod:`.endpoints`), how to retry (:mod:`.retry`), how to split a
batch under the payload limit (:mod:`.batching`) and how to talk to each protocol (:mod:`.transport`).
:func:`tilecast.runtimes.http.endpoint_runtime` puts them together behind the runtime contract."""

from .batching import Packer
from .endpoints import Endpoint, parse_endpoint, vertex_url
from .options import EndpointOptions
from .retry import RetryPolicy

__all__ = ["Endpoint", "EndpointOptions", "Packer", "RetryPolicy", "parse_endpoint", "vertex_url"]
