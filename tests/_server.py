"""The one launcher of real service processes in the tests (and ``bench/service.py``).

- :func:`free_port` -- a TCP port free on loopback right now;
- :class:`ServerProcess` -- ``python -m svdserve.service`` in its own process
  group, waited for until ``/v1/ready`` answers;
- :func:`server_env` -- the ``SVDSERVE_*`` settings the end-to-end tests share;
- :func:`running_server` -- a started server that must stop cleanly;
- :func:`write_chunked` -- a tall float64 Zarr matrix written block by block;
- :func:`http_client`, :func:`follow_job` -- httpx against a server.

``make demo`` keeps its own minimal launcher (:mod:`svdserve.service._demo`):
the installed package cannot import the tests.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import zarr

__all__ = ["free_port", "ServerProcess", "server_env", "running_server", "write_chunked",
           "http_client", "follow_job", "moto_s3", "E2E_ROWS", "E2E_COLS", "E2E_CHUNK", "E2E_PANEL_BYTES"]

#: The end-to-end matrix: 100 panels of 1200 rows x 40 columns (384 KB each with
#: ``SVDSERVE_PANEL_BYTES=E2E_PANEL_BYTES``), so a job runs for several seconds,
#: reports progress often and a kill or a deletion lands mid-pass.
E2E_ROWS, E2E_COLS, E2E_CHUNK = 120_000, 40, 1_200
E2E_PANEL_BYTES = E2E_CHUNK * E2E_COLS * 8


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m svdserve.service`` in its own process group.

    Parameters
    ----------
    env : dict
        ``SVDSERVE_*`` settings for the server (added to this process's
        environment, which the child needs for PATH and the like, less any
        ``SVDSERVE_*`` of its own).
    port : int, optional
        Default: a free port.
    token : str, optional
        Bearer token used while waiting for readiness.
    log_path : str or Path, optional
        Where the server's output goes (default: discarded).
    cwd : str or Path, optional
        The server's working directory.
    """

    def __init__(self, env: dict[str, str], *, port: int | None = None,
                 token: str | None = None, log_path: str | os.PathLike | None = None,
                 cwd: str | os.PathLike | None = None):
        self.env = {k: str(v) for k, v in env.items()}
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.log_path = log_path
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> ServerProcess:
        # The child's settings are exactly self.env: none leak in from this process.
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("SVDSERVE_")}
        child_env.update(self.env)
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "svdserve.service", "--host", "127.0.0.1",
             "--port", str(self.port)],
            env=child_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            cwd=self.cwd)
        if out is not subprocess.DEVNULL:
            out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the service exited with status {self.proc.returncode}"
                                   + self._log_tail())
            try:
                r = httpx.get(f"{self.url}/v1/ready", headers=self.headers, timeout=5)
                if r.status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.kill_all()
        raise TimeoutError(f"the service was not ready within {timeout:.0f} s"
                           + self._log_tail())

    def _log_tail(self) -> str:
        if not self.log_path or not os.path.exists(self.log_path):
            return ""
        with open(self.log_path, errors="replace") as f:
            return f"; see {self.log_path}:\n{f.read()[-4000:]}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60.0) -> int | None:
        """Ask the server to stop; returns its exit status (None if it had to be killed)."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_all()
            return None

    def crash(self) -> None:
        """SIGKILL the server process alone, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def kill_all(self) -> None:
        """SIGKILL everything left in the server's process group."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(30)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        self.kill_all()


def server_env(data_root, state_dir, *, tokens: dict[str, str] | None = None,
               **settings) -> dict[str, str]:
    """``SVDSERVE_*`` for a test server: embedded cluster of two workers, the
    end-to-end panel size, fast progress; ``settings`` (``max_concurrent_jobs=1``)
    are added upper-cased."""
    env = {"SVDSERVE_DATA_ROOTS": str(data_root),
           "SVDSERVE_RESULTS_ROOT": str(state_dir / "results"),
           "SVDSERVE_DATABASE": str(state_dir / "jobs.sqlite"),
           "SVDSERVE_N_WORKERS": "2", "SVDSERVE_PANEL_BYTES": str(E2E_PANEL_BYTES),
           "SVDSERVE_PROGRESS_INTERVAL": "0.05", "SVDSERVE_SCHEDULER": "",
           "SVDSERVE_LOG_LEVEL": "warning"}
    if tokens:
        env["SVDSERVE_TOKENS"] = ",".join(f"{t}:{k}" for t, k in tokens.items())
    env.update({f"SVDSERVE_{k.upper()}": str(v) for k, v in settings.items()})
    return env


@contextlib.contextmanager
def running_server(env: dict[str, str], *, token: str | None, log_path):
    """A started :class:`ServerProcess`; on exit it must stop cleanly (status 0)."""
    srv = ServerProcess(env, token=token, log_path=log_path).start()
    try:
        yield srv
    finally:
        code = srv.stop()
        srv.kill_all()
    assert code == 0, f"the server did not stop cleanly; see {srv.log_path}"


def write_chunked(path, block, *, rows: int = E2E_ROWS, cols: int = E2E_COLS,
                  chunk: int = E2E_CHUNK, step: int = 12_000) -> None:
    """A rows x cols float64 Zarr array, chunks of ``chunk`` rows, written
    ``step`` rows at a time from ``block(step)``."""
    z = zarr.create_array(str(path), shape=(rows, cols), chunks=(chunk, cols), dtype="f8")
    for start in range(0, rows, step):
        z[start:start + step] = block(step)


def http_client(srv: ServerProcess, token: str) -> httpx.Client:
    return httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {token}"},
                        timeout=90)


def follow_job(c: httpx.Client, job_id: str, *, until=("succeeded", "failed", "cancelled"),
               timeout: float = 180.0) -> tuple[dict, list[dict]]:
    """Long-poll the job until its state is in ``until``; returns (final job, jobs seen)."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = c.get(f"/v1/jobs/{job_id}", params={"wait": 10}).json()
        seen.append(job)
        if job["state"] in until:
            return job, seen
    raise AssertionError(f"job {job_id} stuck: {seen[-1] if seen else None}")


@contextlib.contextmanager
def moto_s3(bucket: str, *, key: str = "k", secret: str = "s"):
    """A moto S3 server on loopback with ``bucket`` in it; yields
    ``(storage_options, s3fs filesystem)``. moto's state is per process, so
    the bucket may exist already (another module made it)."""
    import s3fs
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        so = {"key": key, "secret": secret, "endpoint_url": f"http://127.0.0.1:{port}"}
        fs = s3fs.S3FileSystem(**so)
        if not fs.exists(bucket):
            fs.mkdir(bucket)
        yield so, fs
    finally:
        server.stop()
