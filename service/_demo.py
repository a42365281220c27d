"""``make demo``: the service end to end on one machine, over plain HTTP.

1. writes a sample matrix (low rank + noise, ~300 MB of float64 Zarr) under
   a data root in ``./.demo`` (kept between runs),
2. starts ``svdserve serve`` as a subprocess on a free port with the
   embedded Dask cluster,
3. submits a job with httpx, prints its progress as it changes,
4. prints the energy report as a table,
5. stops the service with SIGINT and checks it exited cleanly.

The launcher here is the demo's own, minimal one; the tests and the
benchmarks use ``tests/_server.py``.
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

from ._states import TERMINAL

__all__ = ["write_low_rank", "main"]


def _start_service(env: dict[str, str], log_path: Path,
                   timeout: float = 120.0) -> tuple[subprocess.Popen, str]:
    """``python -m svdserve.service`` on a free loopback port, in its own process
    group, once ``/v1/ready`` answers; returns (process, base URL).

    The demo's minimal launcher; the tests' full one is ``tests/_server.py``.
    """
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "svdserve.service", "--host", "127.0.0.1", "--port", str(port)],
            env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited with status {proc.returncode}; "
                               f"see {log_path}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/v1/ready", timeout=5).status_code == 200:
                return proc, url
        time.sleep(0.2)
    _kill_group(proc)
    raise TimeoutError(f"the service was not ready within {timeout:.0f} s; see {log_path}")


def _stop_service(proc: subprocess.Popen, timeout: float = 60.0) -> int | None:
    """SIGINT, then wait; the exit status (None if it had to be killed)."""
    proc.send_signal(signal.SIGINT)
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        code = None
    _kill_group(proc)
    return code


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL whatever is left in the service's process group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(30)


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
              (f"> {report['rank']}" if e["rank"] is None  # exact knows ranks beyond k
               else f"{e['rank']}" + (" (> k)" if e["more_than_k"] else "")),
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
    matrix = _sample_matrix(data, args.rows, args.cols)
    env = {"SVDSERVE_DATA_ROOTS": str(data), "SVDSERVE_RESULTS_ROOT": str(work / "results"),
           "SVDSERVE_DATABASE": str(work / "svdserve.sqlite"), "SVDSERVE_N_WORKERS": "2",
           "SVDSERVE_PANEL_BYTES": str(32 * 2**20)}
    log = work / "service.log"
    print(f"starting the service (embedded Dask cluster, log: {log}) ...", flush=True)
    t0 = time.perf_counter()
    proc, url = _start_service(env, log)
    print(f"  ready on {url} in {time.perf_counter() - t0:.1f} s: "
          f"{httpx.get(url + '/v1/ready').json()}")
    print(f"  pages: {url}/ (the jobs, live, while the demo runs)")
    try:
        return _run_job(url, matrix, args.rank)
    finally:
        print("\nstopping the service (SIGINT) ...", flush=True)
        code = _stop_service(proc)
        print("  stopped cleanly" if code == 0 else f"  stopped (exit status {code})")


def _sample_matrix(data: Path, rows: int, cols: int) -> Path:
    """The sample matrix under ``data`` (written on the first run, kept after)."""
    data.mkdir(parents=True, exist_ok=True)
    matrix = data / f"sample-{rows}x{cols}.zarr"
    if not (matrix / "zarr.json").exists():
        mb = rows * cols * 8 / 1e6
        print(f"writing a {rows} x {cols} low-rank + noise matrix ({mb:.0f} MB) "
              f"to {matrix} ...", flush=True)
        t0 = time.perf_counter()
        write_low_rank(matrix, rows, cols)
        print(f"  written in {time.perf_counter() - t0:.1f} s")
    else:
        print(f"using the sample matrix at {matrix}")
    return matrix


def _run_job(url: str, matrix: Path, rank: int) -> int:
    """Submit one job, print its progress as it changes, then its report; the exit status."""
    with httpx.Client(base_url=url, timeout=90) as http:
        body = {"source": {"url": matrix.name, "array": None}, "rank": rank, "method": "auto"}
        print(f"\nPOST /v1/jobs {body}")
        r = http.post("/v1/jobs", json=body)
        r.raise_for_status()
        job = r.json()
        print(f"  {r.status_code} Location: {r.headers['location']}  state: {job['state']}")
        print(f"  its page: {url}/jobs/{job['id']}")
        t0 = time.perf_counter()
        shown = None
        while job["state"] not in TERMINAL:
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
        return 0


if __name__ == "__main__":
    sys.exit(main())
