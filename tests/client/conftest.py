"""Fixtures of the client tests: the real service, started as a subprocess.

One service per test session (``python -m svdserve.service`` from this venv,
started by the shared launcher, ``tests/_server.py``) with an
embedded Dask cluster of two workers, two tenants (``alice``, ``bob``), a
data root and a results root in a temporary directory. Tests talk to it over
real HTTP on loopback, exactly as a user would.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests._server import ServerProcess

TOKENS = {"alice": "tok-alice", "bob": "tok-bob"}
STARTUP_TIMEOUT = 120.0


@dataclass
class Service:
    url: str
    token: str  # alice's
    other_token: str  # bob's
    data_root: Path
    results_root: Path
    log: Path
    env: dict

    def client(self, **kw):
        from svdserve.client import Client

        kw.setdefault("timeout", 60.0)
        return Client(self.url, kw.pop("token", self.token), **kw)

    def cli_env(self) -> dict:
        """Environment for CLI/example subprocesses: URL and token via SVDSERVE_*."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SVDSERVE_")}
        env.update(SVDSERVE_URL=self.url, SVDSERVE_TOKEN=self.token, MPLBACKEND="Agg")
        return env


@pytest.fixture(scope="session")
def service(tmp_path_factory):
    """The real svdserve service on loopback (skips nothing: a failure to start is an error)."""
    base = tmp_path_factory.mktemp("svdserve")
    data_root = base / "data"
    data_root.mkdir()
    results_root = base / "results"
    settings = dict(
        SVDSERVE_DATA_ROOTS=str(data_root),
        SVDSERVE_RESULTS_ROOT=str(results_root),
        SVDSERVE_DATABASE=str(base / "jobs.sqlite"),
        SVDSERVE_N_WORKERS="2",
        SVDSERVE_WORKER_PROCESSES="false",  # threads in the service process: fast start-up
        SVDSERVE_TOKENS=",".join(f"{t}:{k}" for t, k in TOKENS.items()),
        SVDSERVE_LOG_LEVEL="warning",
        # small panels (64 KiB) so that small test matrices still make several panels:
        # progress, cancellation between panels and panel alignment get exercised
        SVDSERVE_PANEL_BYTES=str(64 * 1024),
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SVDSERVE_")}
    env.update(settings)
    log = base / "service.log"
    server = ServerProcess(settings, token=TOKENS["alice"], log_path=log, cwd=base)
    server.start(timeout=STARTUP_TIMEOUT)
    try:
        yield Service(server.url, TOKENS["alice"], TOKENS["bob"], data_root, results_root,
                      log, env)
    finally:
        server.stop(signal.SIGTERM, timeout=20)
        server.kill_all()


@pytest.fixture
def client(service):
    c = service.client()
    yield c
    c.close()


@pytest.fixture
def data_dir(service, request):
    """A fresh directory inside the service's data root for one test."""
    name = request.node.name.replace("[", "_").replace("]", "").replace("/", "_")[:80]
    d = service.data_root / name
    d.mkdir(exist_ok=True)
    return d
