"""Peak memory against raster width: a 400,000 x 256 raster and a 20,000 x 20,000 one with the same cheap model.

Issue 17 (item 6) measured 826 MiB at 20,000 px wide and 3.9 GiB at 10^6: the assembler held full-width strips.
Outputs too wide for the resource policy's ``assembly_bytes`` are now assembled in column bands, so the peak should
stay under 1 GiB at any width. Each case runs in a fresh subprocess (its peak RSS is its own, read from
``ru_maxrss``); ``--full-width`` forces the old full-width strips for comparison.

The input is a sparse GeoTIFF (GDAL reads its unwritten blocks as zeros), so making it costs nothing; the model adds
one and returns float32, which the sink writes uncompressed to the temporary file and as a DEFLATE COG.

    python bench/bench_width.py                     # both cases
    python bench/bench_width.py --case 400000x256   # one case
    python bench/bench_width.py --scale 0.25        # every side times 0.25 (a quick check)
    python bench/bench_width.py --cpus 16           # the policy of a 16-CPU machine (4 readers, larger caches)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CASES = {"400000x256": (256, 400_000), "20000x20000": (20_000, 20_000)}

_CHILD = """
import json, resource, sys, time
import numpy as np
import rasterio
from rasterio.transform import from_origin
from tilecast import Model
from tilecast.resources import Resources
from tilecast.runners.local import output_bands_of, run_local
from tilecast.sinks.geotiff import GeoTIFFSink

h, w, folder, full, cpus = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1", int(sys.argv[5])
inp = f"{folder}/in.tif"
with rasterio.open(inp, "w", driver="GTiff", width=w, height=h, count=3, dtype="uint8", tiled=True, sparse_ok=True,
                   crs="EPSG:32633", transform=from_origin(500000, 4600000, 10, 10)):
    pass
model = Model.from_callable(lambda x: x[:, :1].astype("float32") + 1, layout="NCHW", input_tile_size=256,
                            input_overlap_size=8, batch_size=16, output_bands={"y": "float32"})
pred = model.predict_image(inp)
policy = {"cpus": cpus} if cpus else {}
res = Resources.detect(assembly_bytes=2**62, **policy) if full else Resources.detect(**policy)
sink = GeoTIFFSink(f"{folder}/out.tif", overwrite=True)
bands = output_bands_of(pred.job, sink, res)
from tilecast.resources import bounded_gdal_cache
t0 = time.perf_counter()
with bounded_gdal_cache(pred.job, res):
    sink.open(pred.job.profile)
    run_local(pred.job, sink, resources=res)
print(json.dumps({"seconds": time.perf_counter() - t0, "bands": len(bands),
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(h: int, w: int, full: bool, cpus: int = 0) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_width_") as folder:
        out = subprocess.run([sys.executable, "-c", _CHILD, str(h), str(w), folder, "1" if full else "0", str(cpus)],
                             capture_output=True, text=True, check=False)
        if out.returncode:
            raise SystemExit(out.stderr[-2000:])
        return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), action="append")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every side (a quick check)")
    parser.add_argument("--full-width", action="store_true", help="also measure the old full-width strips")
    parser.add_argument("--cpus", type=int, default=0,
                        help="the resource policy of a machine with this many CPUs (its reading threads and caches)")
    args = parser.parse_args()
    print(f"{'case':>14} {'strips':>11} {'bands':>5} {'peak RSS':>10} {'seconds':>8}")
    for name in args.case or list(CASES):
        h, w = (max(256, round(n * args.scale)) for n in CASES[name])
        for full in ([False, True] if args.full_width else [False]):
            r = measure(h, w, full, args.cpus)
            label = "full-width" if full else "banded"
            print(f"{f'{w}x{h}':>14} {label:>11} {r['bands']:>5} {r['peak_mib']:>6.0f} MiB {r['seconds']:>8.1f}",
                  flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    main()
