"""Payload codecs shared by the endpoint client (:mod:`tilecast.runtimes.http`) and the server
(:mod:`tilecast.serve`): Earth Engine's formats, TF Serving's REST and gRPC bodies, and KServe v2.

Submodules: :mod:`.protos` (TensorProto, Example, PredictRequest as protobuf classes), :mod:`.tensors` (Earth Engine
tensor strings), :mod:`.rest`, :mod:`.grpc`, :mod:`.v2`, :mod:`.formats`.
"""

from .formats import ALL_FORMATS, GRPC_FORMATS, REST_FORMATS, V2_FORMATS, normalize_format
from .tensors import b64_to_tensor, serialize_tensor, tensor_to_b64

__all__ = [
    "ALL_FORMATS",
    "GRPC_FORMATS",
    "REST_FORMATS",
    "V2_FORMATS",
    "b64_to_tensor",
    "normalize_format",
    "serialize_tensor",
    "tensor_to_b64",
]
