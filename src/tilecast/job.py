"""A prediction job: one plan, one source, one runtime, and the per-tile steps every runner shares.

Runners decide only *where* and *when* these steps run (threads, Dask tasks), how tiles are grouped into calls and
whether buffers are reused (:mod:`tilecast.resources`); what happens to a tile is defined here once, so every runner
produces the same pixels.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .assemble import Assembler, Block
from .errors import OutputShapeError
from .parallel import SERIAL, Spans
from .pixels import fill_masked, footprint_valid, halo_valid, needs_cast, pad_tile, safe_cast
from .plan import Tile, TilePlan
from .runtimes.base import Runtime
from .sinks.base import OutputProfile
from .sources.base import Source, read_masked
from .spec import ModelSpec
from .tensors import InputBinding, OutputBinding

__all__ = ["Job", "TileData"]


@dataclass
class TileData:
    tile: Tile
    data: np.ndarray
    """``(C, padded_h, padded_w)`` input, masked pixels filled, edges padded."""
    valid: np.ndarray | None
    """Output validity for ``tile.out``; None when all valid."""
    skip: bool
    core: np.ndarray | None = None
    """Input core for ``tile.out`` when input bands are appended to the output."""


@dataclass
class Job:
    plan: TilePlan
    source: Source
    runtime: Runtime
    spec: ModelSpec
    inputs: InputBinding
    outputs: OutputBinding
    profile: OutputProfile
    band_dtypes: tuple[np.dtype, ...]
    append_input: bool = False
    mask_receptive_field: bool = False
    """Also mask output pixels whose input neighbourhood (the footprint widened by the overlap on every side)
    touches a masked input pixel: what the model saw there was partly fill values (``--mask-halo``)."""

    @property
    def blending(self) -> bool:
        return self.spec.blend != "crop"

    def read(self, tile: Tile) -> TileData:
        """Read a tile with its halo; fill masked pixels; pad outside the raster; work out the output mask.

        Masks are per band, as in Earth Engine: a pixel masked in one band is filled in that band only, and the
        output mask is the minimum over the bands."""
        data, valid = read_masked(self.source, tile.read)
        g = self.plan.geometry
        oy, ox = g.overlap.y, g.overlap.x
        out = tile.out
        out_valid = None
        if valid is not None:
            data = fill_masked(data, valid, self.spec.fill_value)
            if valid.ndim == 3:
                valid = valid.all(axis=0)
            vp = np.pad(valid, tile.pad, constant_values=True)
            window = vp[: g.tile.y + 2 * oy, : g.tile.x + 2 * ox]
            core = halo_valid(window, oy, ox) if self.mask_receptive_field else window[oy:-oy or None, ox:-ox or None]
            out_valid = footprint_valid(core, g)[: out.height, : out.width]
            if out_valid.all():
                out_valid = None
        padded = pad_tile(data, tile.pad, self.spec.padding)
        skip = out_valid is not None and not out_valid.any()
        core_values = None
        if self.append_input:
            core_values = padded[:, oy : oy + out.height, ox : ox + out.width]
        return TileData(tile, padded, out_valid, skip, core_values)

    def infer(self, items: Sequence[TileData]) -> list[np.ndarray]:
        """Run the model on a batch; returns per tile ``(bands, h, w)``: cropped, or padded when blending."""
        return self.run(self.pack(items), len(items))

    def pack(
        self, items: Sequence[TileData], reuse: Mapping[str, np.ndarray] | None = None
    ) -> Mapping[str, np.ndarray]:
        """The model's input tensors for a batch (separate from :meth:`run` so a runner can pack ahead). ``reuse``: a
        batch of the same shape the model is done with, stacked into instead of allocating (the runner's choice)."""
        return self.inputs.pack([it.data for it in items], reuse)

    def run(self, batch: Mapping[str, np.ndarray], n: int) -> list[np.ndarray]:
        """Run the model on a packed batch of ``n`` tiles; see :meth:`infer`."""
        return self.unpack(self.runtime.run(batch), n)

    def unpack(self, outputs: Mapping[str, np.ndarray], n: int) -> list[np.ndarray]:
        """The model's outputs for a batch of ``n`` tiles as per-tile ``(bands, h, w)`` (see :meth:`infer`)."""
        if self.inputs.fixed_batch and n < self.inputs.batch_size:  # drop the zero tiles that filled the batch
            outputs = {k: np.asarray(v)[:n] for k, v in outputs.items()}
        g = self.plan.geometry
        values, padded = self.outputs.unpack(outputs, n, g)
        if self.blending:
            if not padded:
                p = g.padded_output
                raise OutputShapeError(
                    f"blend={self.spec.blend!r} needs the model to return the padded tile ({p.x} x {p.y}), but it "
                    f"returned {values.shape[3]} x {values.shape[2]}; use blend='crop'"
                )
            return list(values)
        if padded:
            oo = g.output_overlap
            values = values[:, :, oo.y : oo.y + g.out.y, oo.x : oo.x + g.out.x]
        return list(values)

    def assembler(self, align: int, cols: tuple[int, int] | None = None) -> Assembler:
        """The assembler of every output column, or of the band ``cols`` (see :meth:`band_tiles`)."""
        n_in = len(self.source.band_names) if self.append_input else 0
        n_out = len(self.outputs.band_names)
        if self.blending:
            return Assembler(self.plan, n_in, n_out, self.profile.dtype, self.spec.blend, align, cols)
        return Assembler(self.plan, n_in + n_out, 0, self.profile.dtype, "crop", align, cols)

    def band_tile_cols(self, cols: tuple[int, int]) -> range:
        """The tile columns whose output reaches the output columns ``cols`` (the padded output when blending)."""
        plan, g = self.plan, self.plan.geometry
        reach = g.output_overlap.x if self.blending and g.output_overlap else 0
        first = max(0, (cols[0] - reach) // g.out.x)
        last = min(plan.tile_cols, -(-(cols[1] + reach) // g.out.x))
        return range(first, last)

    def band_tiles(self, cols: tuple[int, int]) -> Iterator[Tile]:
        """The tiles of the output columns ``cols``, row-major: the order their assembler takes them."""
        tile_cols = self.band_tile_cols(cols)
        for r in range(self.plan.tile_rows):
            for c in tile_cols:
                yield self.plan.tile(r, c)

    def add(self, assembler: Assembler, item: TileData, values: np.ndarray | None) -> None:
        if item.skip or values is None:
            assembler.skip(item.tile)
            return
        if self.blending:
            assembler.add(item.tile, item.core, values, item.valid)
            return
        out = item.tile.out
        values = values[:, : out.height, : out.width]
        if item.core is not None:
            dtype = np.result_type(item.core.dtype, values.dtype)
            values = np.concatenate([item.core.astype(dtype, copy=False), values.astype(dtype, copy=False)])
        assembler.add(item.tile, values, None, item.valid)

    def finish(self, block: Block, spans: Spans = SERIAL) -> np.ndarray:
        """Cast a finished block to the output dtype; masked pixels become nodata. ``spans``: threads that cast
        column spans of it at once (the same bits)."""
        nodata = self.profile.nodata if self.profile.nodata is not None else 0
        data, valid, profile = block.data, block.valid, self.profile
        out = np.empty(data.shape, profile.dtype) if needs_cast(data.dtype, self.band_dtypes, profile.dtype) else None

        def cast(c0: int, c1: int) -> None:
            safe_cast(data[:, :, c0:c1], self.band_dtypes, None if valid is None else valid[:, c0:c1],
                      profile.band_names, profile.dtype, nodata, None if out is None else out[:, :, c0:c1])

        spans.run(data.shape[2], data.shape[1], cast)
        return data if out is None else out
