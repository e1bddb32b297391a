"""The demo's command line: a bad argument is one line and exit 2, before any server starts.
Needs no demo extra (the arguments are checked before Gradio is imported)."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from conftest import PROJECT_ROOT


def demo(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "digitpairs.inference.demo", *args]
    return subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_a_port_in_use_is_one_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = demo("--port", str(port))
    assert (r.returncode, r.stdout) == (2, "")
    expected = f"--port={port} is not allowed: expected a free port on 127.0.0.1 (Address already in use)"
    assert r.stderr == f"error: {expected}\n"


@pytest.mark.slow
def test_a_bad_cache_age_is_one_line():
    r = demo("--cache-age", "0")
    expected = "error: --cache-age=0 is not allowed: expected seconds in 1..86400\n"
    assert (r.returncode, r.stdout, r.stderr) == (2, "", expected)
