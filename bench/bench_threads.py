"""Many-core sweep: tilecast predict on the compute-bound FCN over ONNX Runtime intra-op threads x read threads.

On machines with spare cores the model's threads and tilecast's own (readers, batcher, writer) compete; this shows
whether leaving cores to tilecast pays. Each row prints its time and its ratio to ONNX Runtime's default thread count
with tilecast's default readers, measured in the same run (best of ``--repeats``). Sized for many cores; on 2 cores
use ``--size 2048``.

    python bench/bench_threads.py                       # 6144 x 6144 x 4 uint16, threads 0 (default), N-2, N-4
    python bench/bench_threads.py --threads 0,14,12 --readers 4,2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DATA_DIR, make_raster
from models import build_compute_bound


def main() -> None:
    import tilecast
    import tilecast.runners.local as local
    from tilecast.resources import Resources, available_cpus, bounded_gdal_cache
    from tilecast.sinks.geotiff import GeoTIFFSink

    n = available_cpus()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=6144)
    ap.add_argument("--threads", default=f"0,{n},{max(1, n - 2)}",
                    help="ORT intra-op threads; 0 = tilecast's default (tilecast.resources.Resources.model_threads)")
    ap.add_argument("--readers", default=f"{Resources.detect().read_threads},2", help="tilecast read threads")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    raster = str(make_raster(DATA_DIR / f"bench_{args.size}.tif", args.size, progress=False))
    model_path = str(build_compute_bound(DATA_DIR / "compute_bound.onnx"))
    print(f"{n} CPUs, raster {args.size}^2 x 4 uint16, best of {args.repeats}")
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        for threads in (int(t) for t in args.threads.split(",")):
            for readers in (int(r) for r in args.readers.split(",")):
                times = []
                for _ in range(args.repeats):
                    model = tilecast.Model.from_onnx(
                        model_path, input_tile_size=256, input_overlap_size=16, layout="NCHW", batch_size=8,
                        output_bands={"score": "float32"}, threads=threads or None,
                    )
                    pred = model.predict_image(raster)
                    out = os.path.join(tmp, "out.tif")
                    start = time.perf_counter()
                    res = Resources.detect(read_threads=readers)
                    with bounded_gdal_cache(pred.job, res):  # as Prediction.run does for local runs
                        sink = GeoTIFFSink(out, overwrite=True)
                        sink.open(pred.job.profile)
                        local.run_local(pred.job, sink, None, resources=res)
                    times.append(time.perf_counter() - start)
                    model.close()
                best = min(times)
                base = base or best
                print(f"  ort threads {threads or 'default':>7}  readers {readers}:  {best:6.2f} s  "
                      f"{args.size ** 2 / best / 1e6:6.2f} Mpx/s  x{base / best:.2f} vs the first row", flush=True)


if __name__ == "__main__":
    main()
