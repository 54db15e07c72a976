"""Round 10 of the command-line review: items earlier reviews noticed and left alone (inherited ignored signals,
upper-case raster suffixes in a folder of inputs, category names of a categorical input), and what was met on the
way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from test_adversarial_cli import SRC

# ---- a signal the parent asked to ignore stays ignored --------------------------------------------------------------


IGNORED = """
import os, signal, sys

import click

from tilecast.cli.options import reports_errors

signum = getattr(signal, sys.argv[1])


@click.command()
@reports_errors
def work():
    os.kill(os.getpid(), signum)  # delivered at once, to this (main) thread
    click.echo("finished")


work(args=[], standalone_mode=False)
print("handler after the run:", signal.getsignal(signum) is signal.SIG_IGN)
"""


def _ignore(*signums):
    def preexec() -> None:
        for s in signums:
            signal.signal(s, signal.SIG_IGN)

    return preexec


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_a_signal_inherited_as_ignored_does_not_interrupt_the_run(tmp_path, name):
    """Symptom: ``nohup tilecast predict ...`` (or a background job of a shell without job control) was still ended by
    the SIGINT / SIGTERM the parent had asked to ignore: the CLI replaced SIG_IGN with its own handler."""
    script = tmp_path / "ignored.py"
    script.write_text(IGNORED)
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, str(script), name], env=env, capture_output=True, text=True, timeout=60,
                         preexec_fn=_ignore(signal.SIGINT, signal.SIGTERM))
    assert res.returncode == 0 and "finished" in res.stdout, (res.returncode, res.stdout, res.stderr)
    assert "handler after the run: True" in res.stdout, res.stdout


def test_a_signal_not_ignored_still_interrupts_the_run(tmp_path):
    """The contrast: with SIGINT ignored but SIGTERM not, SIGTERM still ends the run with 143 and "Aborted!"."""
    script = tmp_path / "ignored.py"
    script.write_text(IGNORED)
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, str(script), "SIGTERM"], env=env, capture_output=True, text=True,
                         timeout=60, preexec_fn=_ignore(signal.SIGINT))
    assert res.returncode == 128 + signal.SIGTERM and "Aborted!" in res.stderr, (res.returncode, res.stderr)
    assert "finished" not in res.stdout
