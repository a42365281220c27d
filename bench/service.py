"""Benchmark of the job service (not a timed test).

Two figures, both on one Dask cluster (a LocalCluster with worker processes
started here) shared by a direct call and by a real ``svdserve serve``
subprocess pointed at it with ``SVDSERVE_SCHEDULER``:

1. latency of ``GET /v1/jobs/{id}`` (p50 / p99) under N concurrent pollers
   (default 50) while a job runs, and the same pollers on the finished job
   (idle cluster) for comparison;
2. overhead of a job through the API (``POST`` to ``succeeded`` seen by a
   long poll) against ``svdserve.worker.svd(..., client=...)`` called
   directly on the same cluster with the same parameters and output, as a
   ratio of medians;
3. upload throughput: MB/s of ``Client.upload(A, name)`` over loopback
   (``/v1/uploads``: checksummed row blocks, zarr-encoded by the service,
   committed) against writing the same Zarr (same chunks, same codec)
   locally with zarr, as a ratio of medians. ``--upload-only`` runs just this
   one, against its own ``svdserve serve`` with an embedded cluster.

Usage::

    .venv/bin/python bench/service.py [--rows 200000] [--cols 100] [--rank 10]
                                       [--pollers 50] [--repeats 3] [--json out.json]
                                       [--upload-only] [--upload-block-rows 20000]

Everything runs on this machine: the pollers, the service and the workers
share its cores, so the latency figure includes that contention.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx


def _percentile(values, q):
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def run_direct(client, source, rank, out, panel_bytes):
    from svdserve.worker import svd

    t0 = time.perf_counter()
    svd(source, rank, client=client, out=out, panel_bytes=panel_bytes)
    return time.perf_counter() - t0


def run_api(http, body):
    t0 = time.perf_counter()
    r = http.post("/v1/jobs", json=body)
    r.raise_for_status()
    job = r.json()
    while job["state"] not in ("succeeded", "failed", "cancelled"):
        job = http.get(f"/v1/jobs/{job['id']}", params={"wait": 30}).json()
    elapsed = time.perf_counter() - t0
    if job["state"] != "succeeded":
        raise RuntimeError(f"job {job['state']}: {job['error']}")
    return elapsed, job


async def _get_loop(host, port, path, done, t_start, min_seconds, latencies, states):
    """One keep-alive HTTP/1.1 connection issuing GETs back to back.

    A deliberately small client: with 50 connections, httpx's pool costs the
    load generator milliseconds per request on this 2-core machine, which
    would be measured as service latency.
    """
    reader, writer = await asyncio.open_connection(host, port)
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    try:
        while not done.is_set():
            t0 = time.perf_counter()
            writer.write(request)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            body = await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head.decode(errors="replace"))
            state = json.loads(body)["state"]
            states.append(state)
            if state in ("succeeded", "failed", "cancelled") and \
                    time.perf_counter() - t_start >= min_seconds:
                done.set()
    finally:
        writer.close()


async def poll_while_running(url, job_id, pollers, min_seconds):
    """N pollers GET the job in a loop until it finishes (and at least ``min_seconds``)."""
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    latencies, states = [], []
    done = asyncio.Event()
    t_start = time.perf_counter()
    await asyncio.gather(*(
        _get_loop(host, int(port), f"/v1/jobs/{job_id}", done, t_start, min_seconds,
                  latencies, states) for _ in range(pollers)))
    wall = time.perf_counter() - t_start
    running = sum(1 for s in states if s == "running")
    return latencies, wall, running


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--cols", type=int, default=100)
    parser.add_argument("--rank", type=int, default=10)
    parser.add_argument("--chunk-rows", type=int, default=5_000)
    parser.add_argument("--panel-bytes", type=int, default=8 * 2**20)
    parser.add_argument("--pollers", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--upload-only", action="store_true",
                        help="measure only the upload throughput (figure 3)")
    parser.add_argument("--upload-block-rows", type=int, default=20_000,
                        help="rows per upload block and per local Zarr chunk")
    args = parser.parse_args(argv)
    if args.upload_only:
        return bench_upload(args)

    from distributed import Client, LocalCluster

    from svdserve.service._demo import write_low_rank

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests._server import ServerProcess

    with tempfile.TemporaryDirectory(prefix="svdserve-bench-") as tmp:
        tmp = Path(tmp)
        data = tmp / "data"
        data.mkdir()
        source = data / "A.zarr"
        mb = args.rows * args.cols * 8 / 1e6
        print(f"matrix: {args.rows} x {args.cols} float64 ({mb:.0f} MB), chunks of "
              f"{args.chunk_rows} rows, panel budget {args.panel_bytes / 2**20:.0f} MiB, "
              f"rank {args.rank}")
        write_low_rank(source, args.rows, args.cols, rank=min(15, args.cols),
                       chunk_rows=args.chunk_rows)

        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                               dashboard_address=None,
                               scheduler_kwargs={"dashboard_address": "127.0.0.1:0"})
        client = Client(cluster)
        env = {"SVDSERVE_SCHEDULER": cluster.scheduler_address,
               "SVDSERVE_DATA_ROOTS": str(data), "SVDSERVE_RESULTS_ROOT": str(tmp / "results"),
               "SVDSERVE_DATABASE": str(tmp / "jobs.sqlite"),
               "SVDSERVE_PANEL_BYTES": str(args.panel_bytes),
               "SVDSERVE_MAX_CONCURRENT_JOBS": "1", "SVDSERVE_LOG_LEVEL": "warning"}
        server = ServerProcess(env, log_path=tmp / "server.log").start()
        body = {"source": {"url": "A.zarr"}, "rank": args.rank, "method": "auto"}
        try:
            with httpx.Client(base_url=server.url, timeout=120) as http:
                # warm up both paths (imports, worker-side caches, file cache)
                run_direct(client, str(source), args.rank, str(tmp / "direct-warm.zarr"),
                           args.panel_bytes)
                _, job = run_api(http, body)
                method = job["result"]["method"]

                direct, api = [], []
                for i in range(args.repeats):
                    direct.append(run_direct(client, str(source), args.rank,
                                             str(tmp / f"direct-{i}.zarr"), args.panel_bytes))
                    api.append(run_api(http, body)[0])
                    print(f"  run {i + 1}: direct {direct[-1]:.2f} s, API {api[-1]:.2f} s",
                          flush=True)

                # pollers while one job runs
                r = http.post("/v1/jobs", json=body)
                r.raise_for_status()
                job_id = r.json()["id"]
            latencies, wall, running = asyncio.run(
                poll_while_running(server.url, job_id, args.pollers, min_seconds=3.0))
            with httpx.Client(base_url=server.url, timeout=60) as http:
                job = http.get(f"/v1/jobs/{job_id}").json()
            idle, idle_wall, _ = asyncio.run(
                poll_while_running(server.url, job_id, args.pollers, min_seconds=3.0))
            loaded = (None if not job["finished_at"] else
                      _seconds(job["started_at"], job["finished_at"]))
        finally:
            server.stop()
            server.kill_all()
            client.close()
            cluster.close()

    d, a = statistics.median(direct), statistics.median(api)
    figures = {
        "matrix": [args.rows, args.cols], "rank": args.rank, "method": method,
        "workers": args.workers, "repeats": args.repeats,
        "direct_seconds_median": d, "api_seconds_median": a, "api_over_direct": a / d,
        "pollers": args.pollers, "poll_requests": len(latencies),
        "poll_requests_while_running": running,
        "poll_p50_ms": 1e3 * _percentile(latencies, 0.50),
        "poll_p99_ms": 1e3 * _percentile(latencies, 0.99),
        "poll_throughput_rps": len(latencies) / wall,
        "idle_poll_p50_ms": 1e3 * _percentile(idle, 0.50),
        "idle_poll_p99_ms": 1e3 * _percentile(idle, 0.99),
        "idle_poll_throughput_rps": len(idle) / idle_wall,
        "job_seconds_under_polling": loaded,
    }
    print()
    print(f"job through the API vs svdserve.worker.svd directly (median of {args.repeats}, "
          f"method {method}):")
    print(f"  direct {d:.2f} s   API {a:.2f} s   ratio API/direct {a / d:.3f}")
    print(f"GET /v1/jobs/{{id}} with {args.pollers} concurrent pollers while a job runs:")
    print(f"  p50 {figures['poll_p50_ms']:.1f} ms   p99 {figures['poll_p99_ms']:.1f} ms   "
          f"{figures['poll_throughput_rps']:.0f} req/s   ({len(latencies)} requests, "
          f"{running} answered 'running')")
    print(f"  the same pollers once it finished (idle): p50 {figures['idle_poll_p50_ms']:.1f} ms"
          f"   p99 {figures['idle_poll_p99_ms']:.1f} ms   "
          f"{figures['idle_poll_throughput_rps']:.0f} req/s")
    if loaded is not None:
        print(f"  the job itself took {loaded:.2f} s under that load "
              f"(unloaded API median {a:.2f} s)")
    figures.update(bench_upload(args, write_json=False))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
        print(f"figures written to {args.json}")
    return figures


def bench_upload(args, *, write_json=True):
    """Figure 3: ``Client.upload`` over loopback against a local zarr write, in MB/s."""
    import numpy as np
    import zarr

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from svdserve.client import Client
    from tests._server import ServerProcess

    rng = np.random.default_rng(0)
    a = rng.standard_normal((args.rows, args.cols))
    rows = min(args.upload_block_rows, args.rows)
    mb = a.nbytes / 1e6
    print(f"upload: {args.rows} x {args.cols} float64 ({mb:.0f} MB) in blocks of {rows} rows "
          f"({rows * args.cols * 8 / 2**20:.1f} MiB)", flush=True)
    with tempfile.TemporaryDirectory(prefix="svdserve-bench-upload-") as tmp:
        tmp = Path(tmp)
        (tmp / "data").mkdir()
        env = {"SVDSERVE_DATA_ROOTS": str(tmp / "data"),
               "SVDSERVE_RESULTS_ROOT": str(tmp / "results"),
               "SVDSERVE_DATABASE": str(tmp / "jobs.sqlite"),
               "SVDSERVE_UPLOADS_ROOT": str(tmp / "uploads"),
               "SVDSERVE_UPLOAD_QUOTA_BYTES": str(4 * a.nbytes),
               # the benchmark's blocks are the largest allowed, and the default block too
               "SVDSERVE_UPLOAD_MAX_BLOCK_BYTES": str(max(rows * args.cols * 8, 2**20)),
               "SVDSERVE_UPLOAD_BLOCK_BYTES": str(max(rows * args.cols * 8, 2**20)),
               "SVDSERVE_N_WORKERS": "1", "SVDSERVE_WORKER_PROCESSES": "false",
               "SVDSERVE_SCHEDULER": "", "SVDSERVE_LOG_LEVEL": "warning"}
        server = ServerProcess(env, log_path=tmp / "server.log").start()
        local, http = [], []
        try:
            with Client(server.url, timeout=120) as c:
                for i in range(args.repeats + 1):  # the first round warms up both paths
                    t0 = time.perf_counter()
                    z = zarr.create_array(str(tmp / f"local-{i}.zarr"), shape=a.shape,
                                          chunks=(rows, args.cols), dtype=a.dtype)
                    z[...] = a
                    t1 = time.perf_counter()
                    c.upload(a, f"bench-{i}", block_rows=rows, progress=False)
                    t2 = time.perf_counter()
                    c.delete_upload(f"bench-{i}")
                    if i:
                        local.append(t1 - t0)
                        http.append(t2 - t1)
                        print(f"  run {i}: local zarr {mb / local[-1]:.0f} MB/s, "
                              f"Client.upload {mb / http[-1]:.0f} MB/s", flush=True)
        finally:
            server.stop()
            server.kill_all()
    lo, up = statistics.median(local), statistics.median(http)
    figures = {"upload_matrix": [args.rows, args.cols], "upload_block_rows": rows,
               "upload_mb_per_s": mb / up, "local_zarr_mb_per_s": mb / lo,
               "upload_over_local_time": up / lo}
    print(f"upload over loopback: {mb / up:.0f} MB/s; local zarr write: {mb / lo:.0f} MB/s; "
          f"upload takes {up / lo:.2f}x the local write (median of {len(http)})")
    if write_json and args.json:
        args.json.write_text(json.dumps(figures, indent=2))
        print(f"figures written to {args.json}")
    return figures


def _seconds(start, end):
    from datetime import datetime

    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


if __name__ == "__main__":
    main()
