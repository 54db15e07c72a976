"""Regenerate ``tf_protos.binpb``: the official TensorFlow / TF Serving descriptors tilecast's codecs use.

Run with TensorFlow and ``tensorflow-serving-api`` importable (``pip install --no-deps tensorflow-serving-api``)::

    python -m tilecast.payloads.make_descriptors

The descriptors are copied from the official generated modules (so field numbers and names are exactly TF's), and
saved as one ``FileDescriptorSet``. At run time tilecast builds message classes from it in a private descriptor pool,
so it needs neither TensorFlow nor a protoc gencode version that matches the installed protobuf runtime.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import descriptor_pb2

MODULES = (
    "google.protobuf.wrappers_pb2",
    "tensorflow.core.framework.types_pb2",
    "tensorflow.core.framework.tensor_shape_pb2",
    "tensorflow.core.framework.resource_handle_pb2",
    "tensorflow.core.framework.tensor_pb2",
    "tensorflow.core.example.feature_pb2",
    "tensorflow.core.example.example_pb2",
    "tensorflow_serving.apis.model_pb2",
    "tensorflow_serving.apis.predict_pb2",
    "tensorflow_serving.apis.get_model_metadata_pb2",
)

OUT = Path(__file__).with_name("tf_protos.binpb")


def main() -> None:
    import importlib

    fds = descriptor_pb2.FileDescriptorSet()
    seen: set[str] = set()

    def add(fd) -> None:  # dependencies first, each file once
        if fd.name in seen:
            return
        for dep in fd.dependencies:
            add(dep)
        seen.add(fd.name)
        fd.CopyToProto(fds.file.add())

    for name in MODULES:
        add(importlib.import_module(name).DESCRIPTOR)
    OUT.write_bytes(fds.SerializeToString(deterministic=True))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(fds.file)} files)")


if __name__ == "__main__":
    main()
