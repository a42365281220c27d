"""``make demo``: the service end to end on one machine, over plain HTTP.

1. writes a sample matrix (low rank + noise, ~300 MB of float64 Zarr) under
   a data root in ``./.demo`` (kept between runs),
2. starts ``svdserve serve`` as a subprocess on a free port with the
   embedded Dask cluster,
3. submits a job with httpx, prints its progress as it changes,
4. prints the energy report as a table,
5. stops the service with SIGINT and checks it exited cleanly.

:class:`ServerProcess` is also used by the end-to-end tests and
``bench/service.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

__all__ = ["ServerProcess", "free_port", "write_low_rank", "main"]


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m svdserve.service`` in its own process group.

    Parameters
    ----------
    env : dict
        ``SVDSERVE_*`` settings for the server (added to this process's
        environment, which the child needs for PATH and the like).
    port : int, optional
        Default: a free port.
    token : str, optional
        Bearer token used while waiting for readiness.
    log_path : str or Path, optional
        Where the server's output goes (default: discarded).
    """

    def __init__(self, env: dict[str, str], *, port: int | None = None,
                 token: str | None = None, log_path: str | os.PathLike | None = None):
        self.env = {k: str(v) for k, v in env.items()}
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> ServerProcess:
        child_env = {**os.environ, **self.env}  # the child's own settings are SVDSERVE_*
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "svdserve.service", "--host", "127.0.0.1",
             "--port", str(self.port)],
            env=child_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        if out is not subprocess.DEVNULL:
            out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the service exited with status {self.proc.returncode}"
                                   + (f"; see {self.log_path}" if self.log_path else ""))
            try:
                r = httpx.get(f"{self.url}/v1/ready", headers=self.headers, timeout=5)
                if r.status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.kill_all()
        raise TimeoutError(f"the service was not ready within {timeout:.0f} s")

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


def write_low_rank(path, m: int, n: int, *, rank: int = 15, chunk_rows: int = 10_000,
                   noise: float = 0.002, seed: int = 0) -> None:
    """Write ``A = U diag(s) Vᵀ + noise`` (decaying spectrum) chunk by chunk."""
    import numpy as np
    import zarr

    rng = np.random.default_rng(seed)
    v, _ = np.linalg.qr(rng.standard_normal((n, rank)))
    s = 100.0 * 0.75 ** np.arange(rank)
    z = zarr.create_array(str(path), shape=(m, n), chunks=(chunk_rows, n), dtype="f8",
                          overwrite=True)
    for start in range(0, m, chunk_rows):
        rows = min(chunk_rows, m - start)
        u = rng.standard_normal((rows, rank)) / np.sqrt(m)  # columns of norm ~1 overall
        z[start:start + rows] = (u * s) @ v.T + noise * rng.standard_normal((rows, n))


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = "  ".join(h.rjust(w) for h, w in zip(header, widths))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join([line, sep, *body])


def print_report(report: dict, *, rows: int = 20) -> None:
    """The energy report as tables."""
    print(f"\nEnergy report: {report['shape'][0]} x {report['shape'][1]} matrix, "
          f"method {report['method']}, rank {report['rank']}, {report['passes']} passes over A")
    captured = report["components"][-1]["cumulative_fraction"] if report["components"] else 0.0
    print(f"‖A‖_F {report['frobenius_norm']:.6g} ({report['energy_kind']}), "
          f"captured {captured:.4%}\n")
    comp = [[str(c["rank"]), f"{c['sigma']:.6g}", f"{c['energy_fraction']:.4%}",
             f"{c['cumulative_fraction']:.4%}", f"{c['relative_residual']:.3e}"]
            for c in report["components"][:rows]]
    print(_table(comp, ["rank", "sigma", "energy", "cumulative", "rel. residual"]))
    ranks = [[f"{e['fraction']:.1%}",
              (f"> {report['rank']}" if e["more_than_k"] else str(e["rank"])),
              "-" if e["storage_ratio"] is None else f"{e['storage_ratio']:.4f}"]
             for e in report["energy_ranks"]]
    print()
    print(_table(ranks, ["energy", "rank needed", "storage ratio"]))
    gaps = ", ".join(f"r={g['rank']} (x{g['ratio']:.3g})" for g in report["spectral_gaps"][:3])
    print(f"\nlargest spectral gaps: {gaps}")
    if report.get("condition_estimate") is not None:
        print(f"condition estimate sigma_1/sigma_k: {report['condition_estimate']:.4g}")
    timings = ", ".join(f"{k} {v:.2f}s" for k, v in report["timings"].items())
    print(f"timings: {timings}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m svdserve._demo",
                                     description="Run the svdserve service end to end.")
    parser.add_argument("--workdir", default=".demo", help="data, results, database, log")
    parser.add_argument("--rows", type=int, default=150_000)
    parser.add_argument("--cols", type=int, default=250)
    parser.add_argument("--rank", type=int, default=20)
    args = parser.parse_args(argv)

    work = Path(args.workdir).resolve()
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    matrix = data / f"sample-{args.rows}x{args.cols}.zarr"
    if not (matrix / "zarr.json").exists():
        mb = args.rows * args.cols * 8 / 1e6
        print(f"writing a {args.rows} x {args.cols} low-rank + noise matrix ({mb:.0f} MB) "
              f"to {matrix} ...", flush=True)
        t0 = time.perf_counter()
        write_low_rank(matrix, args.rows, args.cols)
        print(f"  written in {time.perf_counter() - t0:.1f} s")
    else:
        print(f"using the sample matrix at {matrix}")

    env = {"SVDSERVE_DATA_ROOTS": str(data), "SVDSERVE_RESULTS_ROOT": str(work / "results"),
           "SVDSERVE_DATABASE": str(work / "svdserve.sqlite"), "SVDSERVE_N_WORKERS": "2",
           "SVDSERVE_PANEL_BYTES": str(32 * 2**20)}
    log = work / "service.log"
    server = ServerProcess(env, log_path=log)
    print(f"starting the service on {server.url} (embedded Dask cluster, log: {log}) ...",
          flush=True)
    t0 = time.perf_counter()
    server.start()
    print(f"  ready in {time.perf_counter() - t0:.1f} s: "
          f"{httpx.get(server.url + '/v1/ready').json()}")
    status = 1
    try:
        with httpx.Client(base_url=server.url, timeout=90) as http:
            body = {"source": {"url": matrix.name, "array": None}, "rank": args.rank,
                    "method": "auto"}
            print(f"\nPOST /v1/jobs {body}")
            r = http.post("/v1/jobs", json=body)
            r.raise_for_status()
            job = r.json()
            print(f"  {r.status_code} Location: {r.headers['location']}  state: {job['state']}")
            t0 = time.perf_counter()
            shown = None
            while job["state"] not in ("succeeded", "failed", "cancelled"):
                job = http.get(f"/v1/jobs/{job['id']}", params={"wait": 30}).json()
                p = job["progress"]
                line = (f"  [{time.perf_counter() - t0:6.1f}s] {job['state']:<9}"
                        + (f" {p['phase']:<9} pass {p['pass']}/{p['passes']}  "
                           f"panels {p['done']:>3}/{p['total']}" if p else ""))
                if line.split("]", 1)[1] != shown:
                    print(line, flush=True)
                    shown = line.split("]", 1)[1]
            if job["state"] != "succeeded":
                print(f"\njob {job['state']}: {job['error']}")
                return 1
            print(f"\nsucceeded in {time.perf_counter() - t0:.1f} s; result: "
                  f"{job['result']['url']}")
            print_report(http.get(f"/v1/jobs/{job['id']}/report").json())
            status = 0
    finally:
        print("\nstopping the service (SIGINT) ...", flush=True)
        code = server.stop(signal.SIGINT)
        server.kill_all()
        print("  stopped cleanly" if code == 0 else f"  stopped (exit status {code})")
    return status


if __name__ == "__main__":
    sys.exit(main())
