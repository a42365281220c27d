"""``svdserve serve`` on a busy port: exit 2 at once, naming the port, before any cluster."""

from __future__ import annotations

import os
import socket
import subprocess
import sys


def test_a_busy_port_exits_2_before_starting_a_cluster(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SVDSERVE_")}
    env.update(SVDSERVE_DATA_ROOTS=str(tmp_path), SVDSERVE_RESULTS_ROOT=str(tmp_path / "r"),
               SVDSERVE_DATABASE=str(tmp_path / "jobs.sqlite"), SVDSERVE_LOG_LEVEL="info",
               SVDSERVE_N_WORKERS="1", SVDSERVE_WORKER_PROCESSES="false")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "svdserve.service", "--host", "127.0.0.1", "--port",
             str(port)], env=env, capture_output=True, text=True, timeout=120)
    text = out.stdout + out.stderr
    assert out.returncode == 2, text
    assert f"port {port}" in out.stderr and "already in use" in out.stderr
    assert "--port" in out.stderr  # says how to fix it
    # nothing was started: no cluster, no "ready", no database
    assert "embedded Dask cluster" not in text and "svdserve ready" not in text
    assert not (tmp_path / "jobs.sqlite").exists()
