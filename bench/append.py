"""Updating an exact result with appended rows, against a full recompute each time.

A ``--rows`` × ``--cols`` float64 Zarr matrix (row chunks, low rank plus noise,
:func:`_common.ensure_matrix` makes the rows) grows by ``--grow`` (1 %) ``--steps``
times (``zarr.Array.resize`` plus the new rows). After each growth:

- **update** ``svd(A, update=previous, compute_u=False)``: σ and V from the
  stored R and the appended rows only (the chain goes on from it);
- **full**: ``svd(A, k, method="exact", compute_u=False)`` from scratch;
- **update + U**: the same update with ``compute_u=True`` (one GEMM pass over
  every row for U = A V Σ⁻¹), on the side.

Each row of the table gives the wall time and the rows read (counted by the panel
tasks, ``report["update"]["rows_read"]``; a full run reads every row), and the
update's time as a percentage of the full recompute's. 2 workers × 1 thread
(processes), panel cache on. Not a test: nothing here asserts on time::

    .venv/bin/python bench/append.py                 # 2,000,000 × 500: on a quiet machine
    .venv/bin/python bench/append.py --rows 200000   # a check that it runs
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench._common import (add_matrix_args, ensure_matrix, fmt_table,  # noqa: E402
                           matrix_path, timed)


def _copy_rows(src, dst, start, stop):
    """Copy rows ``start:stop`` of the Zarr array ``src`` into ``dst`` (on a worker)."""
    import zarr

    zarr.open_array(dst, mode="r+")[start:stop] = zarr.open_array(src, mode="r")[start:stop]
    return stop - start


def _append(client, src, dst, start, stop, chunk_rows):
    """Grow ``dst`` to ``stop`` rows and fill rows ``start:stop`` from ``src``, by chunk."""
    import zarr

    z = zarr.open_array(dst, mode="r+")
    z.resize((stop, z.shape[1]))
    cuts = sorted({start, stop, *range((start // chunk_rows + 1) * chunk_rows, stop, chunk_rows)})
    futures = client.map(_copy_rows, [src] * (len(cuts) - 1), [dst] * (len(cuts) - 1),
                         cuts[:-1], cuts[1:], pure=False)
    assert sum(client.gather(futures)) == stop - start


def _step(svd, path, client, args, prev_url, tmp, i):
    """One growth step's three runs: ``(table row, the update's result URL)``."""
    kw = {"client": client, "compute_u": False}
    upd, t_upd = timed(lambda: svd(path, update=prev_url, out=os.path.join(tmp, f"r{i}"), **kw))
    full, t_full = timed(lambda: svd(path, args.rank, method="exact", **kw))
    with_u, t_u = timed(lambda: svd(path, update=prev_url, client=client,
                                    out=os.path.join(tmp, f"u{i}")))
    info = upd.report["update"]
    m = info["rows_total"]
    row = [i, f"{m:,}", f"{info['rows_appended']:,}", f"{t_upd:.2f}", f"{info['rows_read']:,}",
           f"{t_full:.2f}", f"{m:,}", f"{100 * t_upd / t_full:.1f} %",
           f"{t_u:.2f}", f"{with_u.report['update']['rows_read']:,}",
           f"{abs(upd.S - full.S).max() / full.S[0]:.0e}"]
    return row, upd.url


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_matrix_args(ap, rows=2_000_000, cols=500)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--grow", type=float, default=0.01, help="growth per step (default 1 %%)")
    args = ap.parse_args(argv)

    from distributed import Client, LocalCluster

    from svdserve.worker import svd

    sizes = [args.rows]
    for _ in range(args.steps):
        sizes.append(sizes[-1] + max(1, round(sizes[-1] * args.grow)))
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None, memory_limit="3GiB")
    client = Client(cluster)
    tmp = tempfile.mkdtemp(prefix="svdserve-append-")
    try:
        import zarr

        src = ensure_matrix(matrix_path(args, sizes[-1]), sizes[-1], args.cols, args.chunk_rows,
                            client)
        path = os.path.join(tmp, "A.zarr")
        zarr.create_array(path, shape=(0, args.cols), chunks=(args.chunk_rows, args.cols),
                          dtype="f8")
        _append(client, src, path, 0, sizes[0], args.chunk_rows)
        first, t_first = timed(lambda: svd(path, args.rank, method="exact", compute_u=False,
                                           out=os.path.join(tmp, "r0"), client=client))
        print(f"{sizes[0]:,} × {args.cols}, rank {args.rank}: first exact run (σ, V) "
              f"{t_first:.2f} s", flush=True)
        rows, prev = [], first.url
        for i in range(1, args.steps + 1):
            _append(client, src, path, sizes[i - 1], sizes[i], args.chunk_rows)
            row, prev = _step(svd, path, client, args, prev, tmp, i)
            rows.append(row)
            print(row, flush=True)
        print(fmt_table(rows, ["step", "rows", "appended", "update s", "update reads",
                               "full s", "full reads", "update/full", "update+U s",
                               "update+U reads", "max |Δσ|/σ₁"]))
    finally:
        client.close()
        cluster.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
