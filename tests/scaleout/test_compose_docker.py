"""``make compose-check`` as a test: docker-compose.yml on a real Docker engine.

Runs tests/scaleout/compose_check.py (build the image, up with 1 worker,
upload, submit from the host, scale to 3 mid-job, ``docker kill`` one, scale
down to 1, the result against NumPy over HTTP and from the results volume, a
crashed worker restarted by its restart policy, the API's health check) when
a Docker engine answers ``docker info``. Skipped, with the reason in the
summary, when none does, so ``make test`` stays green on a machine without
Docker. The check takes about 1.5 minutes on 2 cores with the image's build
cache warm (about a minute more for a cold build).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ._helpers import REPO
from .compose_check import compose_command, docker_binary


pytestmark = pytest.mark.slow


def _unavailable() -> str | None:
    """Why the check cannot run here, or None."""
    docker = docker_binary()
    try:
        info = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"no Docker engine: `{docker} info` could not run ({exc})"
    if info.returncode != 0:
        lines = (info.stdout + info.stderr).splitlines()
        why = next((ln.strip() for ln in lines if "cannot connect" in ln.lower()),
                   lines[-1].strip() if lines else "no output")
        return f"no Docker engine answers `{docker} info`: {why}"
    compose = compose_command()
    try:
        version = subprocess.run([*compose, "version"], capture_output=True, text=True, timeout=30)
    except OSError as exc:
        return f"no docker-compose ({' '.join(compose)}): {exc}"
    if version.returncode != 0:
        return f"`{' '.join(compose)} version` failed: {version.stderr.strip()[-200:]}"
    # Tests download nothing from the internet: the base image must be there already.
    base = os.environ.get("PYTHON_IMAGE") or "python:3.11-slim"
    if subprocess.run([docker, "image", "inspect", base], capture_output=True).returncode != 0:
        return (f"base image {base} is not on this Docker engine (tests pull nothing; "
                "../shared/docker/local-engine.sh builds one, or docker pull it)")
    return None


@pytest.mark.timeout(1800)
def test_make_compose_check_passes_on_a_real_docker_engine():
    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    proc = subprocess.run([sys.executable, "-m", "tests.scaleout.compose_check"], cwd=REPO,
                          capture_output=True, text=True, timeout=1700)
    out = proc.stdout + proc.stderr
    print(out)  # shown by pytest on failure (and with -s)
    assert proc.returncode == 0, out[-15000:]
    assert "compose-check: PASSED" in proc.stdout
    # The steps that must happen while the job runs did (the check fails otherwise;
    # these lines are what it prints when they do).
    for needle in ("/v1/ready: 3 workers", "killed ", "restarted by Docker",
                   "left the cluster", "down -v: 0 containers and 0 volumes left"):
        assert needle in proc.stdout, needle
