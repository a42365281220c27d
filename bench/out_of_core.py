"""A matrix at least 4× the cluster's total worker memory, decomposed without a worker dying.

    .venv/bin/python bench/out_of_core.py                       # 1,000,000 × 500 (3.7 GiB), 2 × 450 MiB workers
    .venv/bin/python bench/out_of_core.py --rows 2000000        # larger
    .venv/bin/python bench/out_of_core.py --wide                # 500 × 1,000,000 in row chunks (4, n)

The workers get a hard memory limit (the nanny kills a worker past 95 % of
it, and pauses one past 80 %). Both methods run with small panels; the run
reports each method's wall time, the peak RSS of each worker, the limit, and
whether any worker was restarted or paused. Not a test: it prints a table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from _common import (  # noqa: E402
    RSSSampler,
    add_matrix_args,
    bare_pass,
    ensure_matrix,
    fmt_table,
    matrix_path,
    timed,
)

#: Phases of a job that read A (one pass each, or several for "power").
READING = ("stats+qr", "tall", "power", "range+project")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_matrix_args(ap, rows=1_000_000, cols=500)
    ap.add_argument("--memory-limit-mib", type=int, default=450)
    ap.add_argument("--panel-mib", type=int, default=16)
    ap.add_argument("--wide", action="store_true",
                    help="the transpose, stored in row chunks of --chunk-rows (default 4) "
                         "rows spanning every column: the one-time copy's case")
    args = ap.parse_args(argv)
    if args.wide:
        args.rows, args.cols = args.cols, args.rows
        if args.chunk_rows == 4096:
            args.chunk_rows = 4

    from distributed import Client, LocalCluster

    from svdserve.worker import svd

    m, n = args.rows, args.cols
    path = matrix_path(args)
    size_mib = m * n * 8 / 2**20
    # Generate with roomy workers, then decompose on tight ones.
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cl, \
            Client(cl) as c:
        ensure_matrix(path, m, n, args.chunk_rows, c)

    limit = args.memory_limit_mib * 2**20
    rows = []
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit=limit,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        total_limit = 2 * args.memory_limit_mib
        print(f"matrix {size_mib:.0f} MiB; cluster memory limit {total_limit} MiB "
              f"({size_mib / total_limit:.1f}× smaller than the matrix)", flush=True)
        workers0 = set(client.scheduler_info()["workers"])
        _, bare = timed(lambda: bare_pass(client, path, panel_bytes=args.panel_mib * 2**20))
        print(f"bare pass (svdserve reader): {bare:.1f}s", flush=True)
        for method in ("exact", "randomized"):
            paused, ends = set(), {}

            def watch(done, total, phase):
                if phase.name in READING:  # when each pass over A ended (its last panel)
                    ends[phase.pass_no] = time.perf_counter()
                for addr, w in client.scheduler_info()["workers"].items():
                    if w.get("status") == "paused":
                        paused.add(addr)

            t0 = time.perf_counter()

            with RSSSampler(client, interval=0.1) as rss:
                res, sec = timed(lambda: svd(path, args.rank, method=method, client=client,
                                             panel_bytes=args.panel_mib * 2**20,
                                             progress=watch))
            workers = set(client.scheduler_info()["workers"])
            peaks = sorted(v / 2**20 for v in rss.peak.values())
            timings = res.report["timings"]
            # Each pass from the end of the one before (the copy, if any, counts as
            # before pass 1), so the time between passes is charged to them.
            start = t0 + timings.get("rechunk", 0.0)
            passes = []
            for k in sorted(ends):
                passes.append(ends[k] - start)
                start = ends[k]
            plan = res.report["plan"]
            copy = timings.get("rechunk")
            rows.append([method, plan["kind"], f"{sec:.1f}",
                         "-" if copy is None else f"{copy:.1f}", res.passes,
                         f"{res.reads:.2f}",
                         " / ".join(f"{p:.1f}" for p in passes),
                         " / ".join(f"{p / bare:.2f}" for p in passes),
                         " / ".join(f"{p:.0f}" for p in peaks), args.memory_limit_mib,
                         "no" if workers == workers0 else "YES", "yes" if paused else "no"])
            print(rows[-1], flush=True)
    print()
    print(f"Matrix {m:,} × {n:,} float64 = {size_mib:,.0f} MiB; 2 workers × 1 thread, "
          f"{args.memory_limit_mib} MiB limit each ({size_mib / total_limit:.1f}× the cluster's "
          f"memory); panels of {args.panel_mib} MiB.")
    print()
    print(f"bare pass through svdserve's reader: {bare:.1f} s "
          f"({size_mib / 1024 / bare:.2f} GiB/s).")
    print()
    print(fmt_table(rows, ["method", "layout", "wall s", "copy s", "passes", "reads",
                           "s per pass (1 / 2 / …)",
                           "× bare pass, per pass", "peak RSS per worker MiB",
                           "limit MiB", "worker restarted", "worker paused"]))


if __name__ == "__main__":
    main()
