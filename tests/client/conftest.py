"""Fixtures of the client tests: the real service, started as a subprocess.

One service per test session (``svdserve serve`` from this venv) with an
embedded Dask cluster of two workers, two tenants (``alice``, ``bob``), a
data root and a results root in a temporary directory. Tests talk to it over
real HTTP on loopback, exactly as a user would.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def service(tmp_path_factory):
    """The real svdserve service on loopback (skips nothing: a failure to start is an error)."""
    base = tmp_path_factory.mktemp("svdserve")
    data_root = base / "data"
    data_root.mkdir()
    results_root = base / "results"
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SVDSERVE_")}
    env.update(
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
    log = base / "service.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "svdserve._cli", "serve", "--port", str(port)],
            stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=base,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_TIMEOUT
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"svdserve serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                r = httpx.get(f"{url}/v1/ready", timeout=2,
                              headers={"Authorization": f"Bearer {TOKENS['alice']}"})
                if r.status_code == 200 and r.json().get("ready"):
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"svdserve serve not ready after {STARTUP_TIMEOUT} s:\n"
                                   f"{log.read_text()[-4000:]}")
            time.sleep(0.2)
        yield Service(url, TOKENS["alice"], TOKENS["bob"], data_root, results_root, log, env)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


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
