"""GPU review: bugs in the GPU code paths that a real GPU would show, each shown here on the CPU with fakes (two
slots on one replica for a GPU's two CUDA streams, sessions whose providers do not start, a fake ``preload_dlls``).
"""

from __future__ import annotations

import numpy as np
import pytest

from tilecast.runtimes.devices import Device, Slots, is_out_of_memory

ort = pytest.importorskip("onnxruntime")


def _batch(n=4, bands=3, size=16, seed=0):
    return np.random.default_rng(seed).random((n, bands, size, size), dtype=np.float32) * 100


# --- PyTorch: the free memory of a GPU is shared by its streams ------------------------------------------------------

@pytest.fixture(scope="module")
def scripts(tmp_path_factory):
    pytest.importorskip("torch")
    from tests.test_gpu_paths import _scripted_models

    return _scripted_models(tmp_path_factory.mktemp("review"))


def test_torch_plan_shares_free_memory_between_the_streams_of_a_device(scripts):
    """A GPU runs STREAMS_PER_GPU calls at once, each as large as the plan allows: each may take only its share of
    the free memory, or two concurrent full-size calls ask for 2 x 80 % of it and run out of memory."""
    from tilecast.runtimes.torch import TorchRuntime, _Slot

    x = _batch(n=7)
    rt = TorchRuntime(scripts["net"], device="cpu", staging=True)
    replica = rt._slots.items[0].replica
    rt._slots = Slots([_Slot(replica), _Slot(replica)])  # one device, two streams, as on a GPU
    ref = TorchRuntime(scripts["net"], device="cpu").run({"image": x[:1]})["output"]
    tile = x[:1].nbytes + ref.nbytes
    rt.free_memory = lambda device: int(6 * tile / 0.8)  # room for six tiles on the device in all
    assert rt.batch_limit({"image": x}) == 3  # three per call, two calls in flight
    assert rt.device_batch == 3
