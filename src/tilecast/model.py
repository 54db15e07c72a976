"""The Model users hold: a runtime plus the spec that says how to feed it tiles."""

from __future__ import annotations

import html
import math
import os
import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from rasterio.enums import Resampling
from rasterio.errors import WindowError
from rasterio.windows import Window

from .autotile import AutoTile, TileChoice, parse_bytes
from .card.binding import CardBinding
from .card.html import card_html, class_list, section, table
from .card.load import open_model
from .errors import InputError, RegionError, SpecError, TilecastWarning
from .plan import PIXEL_TILE, XY, TileGeometry, TilePlan, cover_window, is_auto, window_from_bounds
from .prediction import Prediction
from .runners.engine import Engine
from .runtimes.base import Runtime, Signature, TensorSpec
from .sources import RasterioSource, open_source, parse_crs, warp_grid
from .sources.base import Reprojectable, native_grid
from .spec import PARAMETERS, ModelSpec, refuse_unknown, split_names

__all__ = ["Model", "ai_platform_url"]

_AI_PLATFORM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

_PARAMETERS = PARAMETERS | {"memory_budget", "tile_multiple"}  # with the two of input_tile_size="auto"

_PARSED = ("output_bands", "input_type_override", "input_shapes", "input_properties", "resolution", "bands")


def ai_platform_url(project_id: str, model_name: str, version: str | None = None,
                    region: str | None = "us-central1") -> str:
    """The legacy AI Platform Prediction URL Earth Engine's ``fromAiPlatformPredictor`` calls:
    ``https://REGION-ml.googleapis.com/v1/projects/P/models/M[/versions/V]:predict`` (no version: the model's
    default version)."""
    named = {"project_id": project_id, "model_name": model_name, "region": region or "us-central1"}
    if version is not None:
        named["version"] = str(version)
    for key, value in named.items():
        if not value or not _AI_PLATFORM_NAME.match(str(value)):
            raise SpecError(f"AI Platform {key} {value!r} is not a valid name; give letters, digits, '_', '-' or "
                            "'.' (e.g. project_id='my-project', model_name='landcover', version='v1')")
    path = f"projects/{project_id}/models/{model_name}" + (f"/versions/{version}" if version is not None else "")
    return f"https://{named['region']}-ml.googleapis.com/v1/{path}:predict"


class Model:
    """A model and its Earth Engine parameters (``input_tile_size``, ``input_overlap_size``, ``output_bands``...).

    Construct it with :meth:`from_onnx`, :meth:`from_torch`, :meth:`from_callable` or :meth:`load` (or any
    :class:`~tilecast.runtimes.Runtime`), then call :meth:`predict_image`. ``card`` is the model card's binding, when
    the model came with one (:meth:`load`): it matches the raster's bands to the card's and applies its GSD policy.
    """

    def __init__(self, runtime: Runtime, spec: ModelSpec | None = None, *, card: CardBinding | None = None,
                 **params: Any) -> None:
        if isinstance(runtime, (str, os.PathLike, bytes)):  # Model("unet.onnx", ...)
            raise SpecError(f"Model() takes a runtime, not {runtime!r:.80}; open a model file with Model.load(path)")
        self.runtime = runtime
        self.auto_tile: AutoTile | None = None
        """Set when ``input_tile_size="auto"`` waits for an image to choose the tile (see :mod:`tilecast.autotile`);
        until then ``spec.geometry`` holds a provisional tile."""
        self.tile_choice: TileChoice | None = None
        """What ``auto`` chose for this model (a model :meth:`predict_image` returns with the choice applied)."""
        fixed = False
        if spec is None:
            refuse_unknown(params, _PARAMETERS)
            fixed = is_auto(params.get("input_tile_size"))
            params, self.auto_tile = _auto_params(params, runtime.signature)
            fixed = fixed and self.auto_tile is None
            spec = ModelSpec.create(**_with_default_tile(params, runtime.signature))
        elif params:
            raise SpecError("pass either spec= or keyword parameters, not both")
        self.spec = spec
        self.card = card
        if fixed:  # auto on a fixed-size model: its own size, recorded as the choice
            self.tile_choice = TileChoice(spec.geometry.tile, spec.geometry.overlap, spec.batch_size, "fixed")

    @classmethod
    def from_onnx(cls, path: str | os.PathLike | bytes, *, providers: Sequence[str] | None = None,
                  threads: int | None = None, streams: int | None = None, device: str | Sequence[str] | None = None,
                  precision: str | None = None, **params: Any) -> Model:
        """Load an ONNX model. ``providers``: e.g. ``["cuda", "cpu"]``; unavailable ones are skipped. ``threads``
        and ``streams``: CPU threads for the model and how many calls share them. ``device``: ``"cpu"``, ``"cuda"``,
        ``"cuda:0,1"`` or ``"cuda:all"`` (one session per GPU); ``precision``: ``"fp32"`` or ``"fp16"`` (see
        :class:`~tilecast.runtimes.onnx.OnnxRuntime` and docs/gpu.md)."""
        from .runtimes.onnx import OnnxRuntime

        return cls._opened(OnnxRuntime(path, providers=providers, threads=threads, streams=streams, device=device,
                                       precision=precision), **params)

    @classmethod
    def from_torch(cls, path: str | os.PathLike, *, device: str | Sequence[str] | None = None,
                   precision: str | None = None, fmt: str | None = None, outputs: list[str] | None = None,
                   **params: Any) -> Model:
        """Load a TorchScript module or a ``torch.export`` program (``.pt2``) without its model card (:meth:`load`
        reads the card). ``device``: ``"cpu"``, ``"cuda"``, ``"cuda:0,1"`` or ``"cuda:all"`` (default: the first GPU
        if there is one); ``precision``: ``"fp32"``, ``"fp16"`` or ``"bf16"`` (see
        :class:`~tilecast.runtimes.torch.TorchRuntime` and docs/gpu.md)."""
        from .runtimes.torch import TorchRuntime

        return cls._opened(TorchRuntime(path, device=device, fmt=fmt, outputs=outputs, precision=precision), **params)

    @classmethod
    def load(cls, path: str | os.PathLike, **overrides: Any) -> Model:
        """Load any model tilecast runs (ONNX, TorchScript, torch.export, SavedModel, Keras, a TorchServe ``.mar``,
        TensorFlow Lite) with its model card. Keyword ``overrides`` (Earth Engine parameters) replace the card's.
        ``card=`` (a :class:`~tilecast.card.Card` or a path to a card JSON), ``providers``, ``device`` (``"cpu"``,
        ``"cuda"``, ``"cuda:0,1"``, ``"cuda:all"``), ``precision`` (``"fp32"``, ``"fp16"``, ``"bf16"``), ``threads``,
        ``signature_name`` and ``check`` are passed to :func:`tilecast.card.open_model`."""
        opened = open_model(path, **overrides)
        return cls._opened(opened.runtime, card=opened.binding, **opened.params)

    @classmethod
    def _opened(cls, runtime: Runtime, *, card: CardBinding | None = None, **params: Any) -> Model:
        """A Model of a ``runtime`` this call opened: closed again when the parameters are refused, so that a
        misspelt parameter does not leave its session (and on a GPU its memory) held by the traceback."""
        try:
            return cls(runtime, card=card, **params)
        except BaseException:
            runtime.close()
            raise

    @classmethod
    def from_endpoint(cls, url: str, *, protocol: str | None = None, payload_format: str | None = None,
                      max_payload_bytes: int = 1_500_000, output_multiplier: float | None = None,
                      concurrency: int = 4, headers: dict[str, str] | None = None, token: str | None = None,
                      timeout: float = 60.0, **params: Any) -> Model:
        """A hosted model: KServe v2 / Triton, TF Serving, Vertex AI or ``tilecast serve``.

        ``protocol`` (``"v2"``, ``"tfserving"``, ``"vertex"``, ``"grpc"``) is inferred from the URL when omitted;
        ``payload_format`` is one of Earth Engine's (``SERIALIZED_TF_TENSORS``, ``RAW_JSON``, ``ND_ARRAYS``,
        ``GRPC_TF_TENSORS``, ``GRPC_SERIALIZED_TF_TENSORS``, ``GRPC_TF_EXAMPLES``).
        """
        from .runtimes.http import endpoint_runtime

        runtime = endpoint_runtime(
            url, protocol=protocol, payload_format=payload_format, max_payload_bytes=max_payload_bytes,
            output_multiplier=output_multiplier, concurrency=concurrency, headers=headers, token=token,
            timeout=timeout,
        )
        return cls._opened(runtime, **params)

    @classmethod
    def from_vertex_ai(cls, endpoint: str, **kwargs: Any) -> Model:
        """Earth Engine's ``ee.Model.fromVertexAi``: ``endpoint`` is ``projects/P/locations/R/endpoints/ID``."""
        kwargs.setdefault("protocol", "vertex")
        return cls.from_endpoint(endpoint, **kwargs)

    @classmethod
    def from_ai_platform_predictor(cls, project_id: str | None = None, model_name: str | None = None,
                                   version: str | None = None, region: str | None = "us-central1", *,
                                   project_name: str | None = None, url: str | None = None, **kwargs: Any) -> Model:
        """Earth Engine's ``ee.Model.fromAiPlatformPredictor``: a model on the legacy AI Platform Prediction service
        (:func:`ai_platform_url`), which speaks Vertex AI's ``{"instances": [...]}`` contract.

        ``project_name`` is Earth Engine's deprecated spelling of ``project_id``. ``url`` sends the requests elsewhere
        (a proxy, a local ``tilecast serve``): a bare ``http(s)://HOST[:PORT]`` gets the AI Platform path, a URL with
        a path is used as it is. Earth Engine's other arguments are :meth:`from_endpoint`'s keywords (``proj`` is
        ``crs`` and ``resolution``; ``output_properties`` goes to :meth:`predict_properties`): docs/formats.md."""
        if project_name is not None:
            warnings.warn("project_name is deprecated (as in Earth Engine); use project_id", DeprecationWarning,
                          stacklevel=2)
            if project_id is not None and project_id != project_name:
                raise SpecError(f"project_id {project_id!r} and project_name {project_name!r} differ; give project_id")
            project_id = project_name
        if not project_id or not model_name:
            raise SpecError("from_ai_platform_predictor needs project_id and model_name (Earth Engine's projectId "
                            "and modelName)")
        endpoint = ai_platform_url(project_id, model_name, version, region)
        if url is not None:
            root = url.rstrip("/")
            endpoint = root + endpoint.split(".googleapis.com", 1)[1] if root.count("/") == 2 else url
        kwargs.setdefault("protocol", "vertex")
        return cls.from_endpoint(endpoint, **kwargs)

    @classmethod
    def from_callable(cls, fn: Callable[..., Any], *, inputs: str | Sequence[str | TensorSpec] | None = None,
                      outputs: str | Sequence[str | TensorSpec] = ("output",), **params: Any) -> Model:
        """Use a Python function as the model: it gets a batch (one array, or a dict per input) in the raster's
        dtype (``input_type_override`` casts it) and returns an array or a dict of arrays."""
        from .runtimes.callable import CallableRuntime

        return cls._opened(CallableRuntime(fn, inputs=split_names(inputs), outputs=split_names(outputs)), **params)

    @property
    def signature(self) -> Signature:
        return self.runtime.signature

    def with_options(self, **changes: Any) -> Model:
        """A copy sharing the runtime, with some parameters changed, read as the constructor reads them."""
        refuse_unknown(set(changes) - {"geometry"}, _PARAMETERS)
        if "overlap_mode" in changes and "input_overlap_size" not in changes:
            raise SpecError("overlap_mode says how to read input_overlap_size; give both, e.g. "
                            "with_options(input_overlap_size=16, overlap_mode='total')")
        parsed = {k: changes[k] for k in _PARSED if k in changes}
        if parsed:  # "lc:uint8", one resolution number... stored as the constructor stores them
            fresh = ModelSpec.create(input_tile_size=1, **parsed)
            changes.update({k: getattr(fresh, k) for k in parsed})
        auto, fixed = self.auto_tile, self.tile_choice is not None and self.tile_choice.reason == "fixed"
        given = set(changes)  # auto chooses the batch with the tile, and refuses an output tile of its own:
        auto_too = auto is not None and "input_tile_size" not in given and {"batch_size", "output_tile_size"} & given
        if is_auto(changes.get("input_tile_size")) or {"memory_budget", "tile_multiple"} & given or auto_too:
            tile = changes.pop("input_tile_size", "auto" if auto else self.spec.geometry.tile)
            params = {"input_tile_size": tile, "memory_budget": changes.pop("memory_budget", auto and auto.budget),
                      "tile_multiple": changes.pop("tile_multiple", auto and auto.multiple),
                      "batch_size": changes.get("batch_size", auto.batch_size if auto else None),
                      "output_tile_size": changes.get("output_tile_size"), "layout": self.spec.layout,
                      "input_overlap_size": changes.get("input_overlap_size", self.spec.geometry.overlap),
                      "overlap_mode": changes.get("overlap_mode", "per_edge")}
            fixed = is_auto(tile)
            params, auto = _auto_params(params, self.signature)
            fixed = fixed and auto is None
            changes["input_tile_size"] = _with_default_tile(params, self.signature)["input_tile_size"]
        elif "input_tile_size" in changes:
            auto, fixed = None, False
        if "input_overlap_size" in changes or "input_tile_size" in changes or "output_tile_size" in changes:
            g = self.spec.geometry
            geometry = TileGeometry.create(
                changes.pop("input_tile_size", g.tile),
                changes.pop("input_overlap_size", g.overlap),
                changes.pop("output_tile_size", g.out if g.out != g.tile else None),  # an equal one follows the tile
                changes.pop("overlap_mode", "per_edge"),
            )
            changes["geometry"] = geometry
        model = Model(self.runtime, self.spec.replace(**changes), card=self.card)
        model.auto_tile = auto
        if fixed:
            g = model.spec.geometry
            model.tile_choice = TileChoice(g.tile, g.overlap, model.spec.batch_size, "fixed")
        return model

    def predict_image(self, image: Any, *, bands: str | Sequence[str | int] | None = None,
                      bounds: Sequence[float] | None = None, bounds_crs: Any = None,
                      window: Window | tuple[tuple[int, int], tuple[int, int]] | None = None,
                      append_input: bool = False, engine: Engine | str = "local") -> Prediction:
        """Plan a prediction over ``image`` (path, URL, rasterio dataset or xarray object). Nothing runs yet.

        ``bounds`` (left, bottom, right, top) are in ``bounds_crs`` (default: the image's CRS); ``window`` is in
        pixels of the grid the model sees. Either covers every pixel it touches (a fractional window is widened to
        whole pixels, not cut short). ``append_input`` returns the input bands followed by the outputs
        (Earth Engine's merged result). ``engine``: where the result runs unless a write method is given another,
        ``tilecast.Local()`` (threads; ``"local"``) or ``tilecast.Dask(...)`` (``"dask"``).
        """
        bands = split_names(bands)
        if self.card is not None:  # the card picks the bands and decides whether the image's grid is close enough
            bands = self.card.select_bands(image, bands)
            changes = self.card.grid_changes(image, self.spec)
            if changes:
                return self.with_options(**changes).predict_image(
                    image, bands=bands, bounds=bounds, bounds_crs=bounds_crs, window=window,
                    append_input=append_input, engine=engine)
        spec = self.spec
        source = open_source(image, bands if bands is not None else spec.bands)
        if spec.crs is not None or spec.resolution is not None:
            source = self._apply_proj(source, image, bands if bands is not None else spec.bands)
        grid, region = source.grid, _region(source, bounds, bounds_crs, window)
        model = self
        if self.auto_tile is not None:  # the tile that fits this image's bands, region and the memory budget
            model = self.resolve_tile(source, region.width if region is not None else grid.shape[1],
                                      region.height if region is not None else grid.shape[0])
            spec = model.spec
        plan = TilePlan.create(grid.shape, spec.geometry, region)
        if append_input and spec.geometry.scale != (1, 1):
            raise SpecError("append_input needs output pixels on the input grid, but output_tile_size "
                            f"{tuple(spec.geometry.out)} differs from input_tile_size {tuple(spec.geometry.tile)}")
        return Prediction(model, source, plan, append_input=append_input, engine=engine)

    def resolve_tile(self, source: Any, width: int, height: int) -> Model:
        """This model with ``auto``'s tile for predicting ``width x height`` pixels of ``source`` (probing the
        runtime: see :func:`tilecast.autoprobe.choose_tile`); itself when its tile is not automatic."""
        if self.auto_tile is None:
            return self
        from .autoprobe import choose_tile

        # A large call keeps every thread busy: the runtime for it has one stream, since a second would only
        # hold a second call's activations.
        choice, runtime = choose_tile(self.runtime, self.spec, self.auto_tile,
                                      self.input_band_names(source.band_names), np.dtype(source.dtype),
                                      source.properties, XY(int(width), int(height)))
        model = Model(runtime, self.spec.replace(geometry=TileGeometry(choice.tile, choice.overlap, None),
                                                 batch_size=choice.batch), card=self.card)
        model.tile_choice = choice
        return model

    def input_band_names(self, band_names: Sequence[str]) -> list[str]:
        """The names the model's inputs know the selected bands by (a model card renames them after its inputs for
        Earth Engine's per-band layout)."""
        if self.card is None:
            return list(band_names)
        return self.card.input_band_names(band_names, self.spec.layout)

    def predict_properties(self, features: Any, **kwargs: Any) -> Any:
        """Earth Engine's ``predictProperties``: predict each feature from its properties (and, optionally, raster
        values sampled at it); returns a new GeoDataFrame. See :func:`tilecast.features.predict_properties`."""
        from .features import predict_properties

        return predict_properties(self, features, **kwargs)

    def _apply_proj(self, source: Any, image: Any, bands: Sequence[str | int] | None) -> Any:
        spec = self.spec
        crs = parse_crs(spec.crs) if spec.crs is not None else None
        native = source.grid
        same_crs = crs is None or crs == native.crs
        same_res = spec.resolution is None or np.allclose(native.resolution, spec.resolution, rtol=1e-6)
        if same_crs and same_res:
            return source
        if not spec.fix_input_proj:
            warnings.warn(f"the image's grid ({native.crs}, {native.resolution}) differs from the model's proj "
                          f"({crs or native.crs}, {spec.resolution}); tiles are cut in the image's own grid. "
                          "Set fix_input_proj=True (--fix-input-proj) to warp the input to the model's grid.",
                          TilecastWarning, stacklevel=3)
            return source
        resampling = Resampling[spec.resampling]  # a known name: ModelSpec.validate checks it
        if isinstance(source, Reprojectable):  # a mosaic of many files warps each member per window
            return source.reprojected(crs or native.crs, spec.resolution, resampling)
        if not isinstance(source, RasterioSource):
            raise InputError("fix_input_proj warps with GDAL and needs a raster path or rasterio dataset; reproject "
                             "the xarray input first (e.g. da.rio.reproject)")
        grid = warp_grid(native, crs, spec.resolution)
        source.close()
        return RasterioSource(image, bands, warp=(grid, resampling))

    def close(self) -> None:
        self.runtime.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _repr_html_(self) -> str:
        """Jupyter's view: the runtime and its signature, the tile geometry, the output bands (classes with their
        colours) and the card."""
        g, spec = self.spec.geometry, self.spec

        def tensors(specs: Sequence[TensorSpec]) -> list[tuple[str, str, str]]:
            return [(t.name, "?" if t.shape is None else "×".join("?" if d is None else str(d) for d in t.shape),
                     str(t.dtype) if t.dtype is not None else "any") for t in specs]

        sig = self.signature
        parts = [f"<b>tilecast.Model</b> <code>{html.escape(repr(self.runtime))}</code>",
                 section("Inputs", table(["name", "shape", "dtype"], tensors(sig.inputs))),
                 section("Outputs", table(["name", "shape", "dtype"], tensors(sig.outputs)))]
        geometry = [("input tile", "×".join(map(str, g.tile))), ("overlap", "×".join(map(str, g.overlap))),
                    ("output tile", "×".join(map(str, g.out))), ("layout", spec.layout or "inferred"),
                    ("batch size", spec.batch_size)]
        parts.append(section("Tiles", table(["", ""], geometry)))
        if spec.output_bands:
            rows = []
            for b in spec.output_bands:
                colors = dict(b.colors or ())
                classes = [(v, n, colors.get(v)) for v, n in b.classes or ()]
                rows.append((b.name, str(b.dtype), b.dimensions, class_list(classes)))
            parts.append(section("Output bands", table(["name", "dtype", "dimensions", "classes"], rows, raw=(3,))))
        if self.card is not None:
            parts.append(card_html(self.card.card))
        return '<div style="font-size:90%">' + "".join(parts) + "</div>"

    def __repr__(self) -> str:
        g, names = self.spec.geometry, [b.name for b in self.spec.output_bands]
        return (f"Model({self.runtime!r}, tile={'auto' if self.auto_tile else tuple(g.tile)}, "
                f"overlap={tuple(g.overlap)}, output_tile={tuple(g.out)}, outputs={names})")


def _region(source: Any, bounds: Any, bounds_crs: Any, window: Any) -> Window | None:
    """The region asked for, in pixels of the grid the model sees (bounds checked before a library sees them)."""
    if bounds is not None and window is not None:
        raise InputError("give bounds or window, not both")
    if bounds is None and bounds_crs is not None:
        raise RegionError(f"bounds_crs={bounds_crs!r} is the CRS of bounds, but no bounds were given; pass "
                          "bounds=(left, bottom, right, top) in that CRS, or leave bounds_crs out")
    if window is not None:
        try:
            window = window if isinstance(window, Window) else Window.from_slices(*window)
        except (TypeError, ValueError, WindowError) as exc:
            raise RegionError(f"window {window!r}: {exc}; give a Window or ((row_start, row_stop), (col_start, "
                              "col_stop)) inside the raster") from None
        return cover_window(window)  # a fractional window covers the pixels it touches, as bounds do
    if bounds is None:
        return None
    try:
        values = tuple(float(v) for v in bounds)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 4 or not all(map(math.isfinite, values)):
        raise RegionError(f"bounds must be four finite numbers (left, bottom, right, top), got {bounds!r}")
    grid, crs = source.grid, parse_crs(bounds_crs) if bounds_crs is not None else native_grid(source).crs
    if crs != grid.crs:
        from rasterio.warp import transform_bounds

        values = transform_bounds(crs, grid.crs, *values, densify_pts=21)
    return window_from_bounds(values, grid.transform, grid.shape)


def _auto_params(params: dict[str, Any], signature: Signature) -> tuple[dict[str, Any], AutoTile | None]:
    """Take ``input_tile_size="auto"``, ``memory_budget`` and ``tile_multiple`` out of ``params``: an
    :class:`AutoTile` when the model accepts any size (the spec then holds a provisional tile), None when the
    model fixes its size (``auto`` means that size) or the tile is given."""
    params = dict(params)
    budget, multiple = params.pop("memory_budget", None), params.pop("tile_multiple", None)
    if not is_auto(params.get("input_tile_size")):
        return params, None
    if params.get("output_tile_size") is not None:
        raise SpecError("input_tile_size='auto' needs the output tile to follow the input tile; leave out "
                        "output_tile_size (--output-tile) or give the tile (--tile)")
    if multiple is not None and (not isinstance(multiple, int) or multiple < 1):
        raise SpecError(f"tile_multiple must be a positive integer (the model's stride, e.g. 32), got {multiple!r}")
    auto = AutoTile(parse_bytes(budget) if budget is not None else None, multiple, params.get("batch_size"))
    params["input_tile_size"] = None
    try:
        return _with_default_tile(params, signature), None  # a fixed-size model: auto means its size
    except SpecError:
        params["input_tile_size"] = (PIXEL_TILE, PIXEL_TILE)
        return params, auto


def _with_default_tile(params: dict[str, Any], signature: Signature) -> dict[str, Any]:
    """Derive ``input_tile_size`` from a model with a fixed input size, when not given."""
    if params.get("input_tile_size") is not None:
        return params
    geometry = TileGeometry.from_signature(signature.inputs, params.get("layout"),
                                           params.get("input_overlap_size", 0), None,
                                           params.get("overlap_mode", "per_edge"))
    return {**params, "input_tile_size": tuple(geometry.tile)}
