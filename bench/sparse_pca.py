"""Sparse PCA out of core: svdserve on an AnnData CSR store against scikit-learn in memory
and against densifying, one run, one cluster.

    .venv/bin/python bench/sparse_pca.py                    # 1,000,000 × 20,000 at 1 %: 2·10⁸ nnz
    .venv/bin/python bench/sparse_pca.py --rows 50000        # a quick check

The matrix: log1p of a positive rank-20 matrix (gamma factors, as log-counts),
observed at exactly ``density·n`` columns per row (stratified: one column in
each of ``density·n`` equal bins, so rows are sorted and free of duplicates;
each row is of one of 10 types, and a type observes its own tenth of every
bin, as cell types express their own genes: ~9 strong components above a
flat tail of sampling noise),
written as AnnData's CSR encoding (a Zarr v3 group ``data``/``indices``/
``indptr``) by tasks on the cluster, one chunk of rows per task: with a
fixed number of values per row every block's place is known, so blocks are
written in parallel and the driver never holds the matrix.

Contestants, all centred with k components (PCA), on one LocalCluster
(2 worker processes × 1 thread) and this process:

- svdserve ``randomized`` (n_iter 2, 10 oversamples) on the sparse store:
  sparse panels, implicit centring; passes and reads as the result counts them;
- scikit-learn ``PCA(svd_solver="arpack")`` in memory (implicit centring,
  ARPACK to machine precision: the reference σ), after loading the CSR into
  this process (the load time is its own row);
- scikit-learn ``TruncatedSVD(algorithm="randomized", n_iter=2)`` in memory
  on the same CSR, not centred (TruncatedSVD never centres: its σ are of X);
- densifying: svdserve ``randomized`` on the first ``--dense-rows`` rows stored
  dense (a Zarr array written block by block from the CSR), against svdserve
  sparse on the same rows; the dense figures scale by m/dense_rows.

Columns: wall time, passes (reads from storage), peak RSS (the busiest worker for the
cluster's rows, sampled every 0.2 s; this process's for in-memory rows, sampled likewise),
max relative error of the top-9 (the row types' components) and top-k σ against ARPACK
on the same rows. Not a test: prints a
Markdown table, asserts nothing on time.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import RSSSampler, fmt_table, timed  # noqa: E402

RANK_TRUE = 20  # rank of the positive matrix whose log1p is sampled
N_TYPES = 10  # row types; a type observes its own tenth of each column bin


def _args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--cols", type=int, default=20_000)
    ap.add_argument("--density", type=float, default=0.01)
    ap.add_argument("--rank", type=int, default=50, help="k")
    ap.add_argument("--block-rows", type=int, default=10_000,
                    help="rows per generation task (one Zarr chunk of data/indices)")
    ap.add_argument("--dense-rows", type=int, default=50_000,
                    help="rows of the densified comparison (float64: rows × cols × 8 bytes)")
    ap.add_argument("--memory-limit", default="6GiB", help="per worker")
    ap.add_argument("--skip-memory", action="store_true", help="skip scikit-learn in memory")
    ap.add_argument("--workdir", default=os.path.join(os.path.dirname(__file__), "data"))
    return ap.parse_args(argv)


def _factors(n, seed):
    rng = np.random.default_rng([seed, 10**9])
    return rng.gamma(1.0, 1.0, (RANK_TRUE, n)) / RANK_TRUE


def _block(i, start, stop, n, per_row, seed):
    """Rows ``start:stop``: ``(indices, values)``, ``per_row`` of each row (stratified columns)."""
    rng = np.random.default_rng([seed, i])
    width, factors = n // per_row, _factors(n, seed)
    sub = max(1, width // N_TYPES)
    cols, values = [], []
    for lo in range(start, stop, 500):  # a dense 500 × n slab at a time (80 MB at n = 20,000)
        rows = min(stop, lo + 500) - lo
        kind = rng.integers(0, N_TYPES, (rows, 1))  # a row's type: which columns it uses
        c = (np.arange(per_row) * width + (kind * sub) % width
             + rng.integers(0, sub, (rows, per_row)))
        dense = rng.gamma(2.0, 1.0, (rows, RANK_TRUE)) @ factors  # positive, rank 20
        cols.append(c.astype("i4").ravel())
        values.append(np.log1p(4.0 * np.take_along_axis(dense, c, axis=1)).ravel())
    return np.concatenate(cols), np.concatenate(values)


def ensure_sparse(path, m, n, density, block_rows, client, seed=0):
    """Write (once) an m×n CSR matrix as AnnData's CSR Zarr group, a block per task."""
    import zarr

    per_row = max(1, int(round(density * n)))
    marker = path + ".complete"
    if os.path.exists(marker):
        g = zarr.open_group(path, mode="r")
        if list(g.attrs["shape"]) == [m, n] and g["data"].shape[0] == m * per_row:
            return path, per_row
    nnz = m * per_row
    g = zarr.open_group(path, mode="w", zarr_format=3)
    chunk = block_rows * per_row
    g.create_array("data", shape=(nnz,), chunks=(chunk,), dtype="f8")
    g.create_array("indices", shape=(nnz,), chunks=(chunk,), dtype="i4")
    g.create_array("indptr", shape=(m + 1,), chunks=(min(m + 1, 2**20),),
                   dtype="i8")[:] = np.arange(m + 1, dtype=np.int64) * per_row
    g.update_attributes({"encoding-type": "csr_matrix", "encoding-version": "0.1.0",
                         "shape": [m, n]})

    def write(i, start):
        stop = min(m, start + block_rows)
        idx, val = _block(i, start, stop, n, per_row, seed)
        grp = zarr.open_group(path, mode="r+")
        grp["indices"][start * per_row:stop * per_row] = idx
        grp["data"][start * per_row:stop * per_row] = val
        return stop - start

    starts = list(range(0, m, block_rows))
    futures = client.map(write, range(len(starts)), starts, pure=False)
    assert sum(client.gather(futures)) == m
    open(marker, "w").close()
    return path, per_row


def load_csr(path, rows=None):
    """The store's first ``rows`` rows as a scipy CSR matrix in this process."""
    import scipy.sparse as sp
    import zarr

    g = zarr.open_group(path, mode="r")
    m, n = g.attrs["shape"]
    rows = m if rows is None else min(rows, m)
    indptr = g["indptr"][:rows + 1]
    end = int(indptr[-1])
    return sp.csr_matrix((g["data"][:end], g["indices"][:end], indptr), shape=(rows, n))


def write_dense(X, path, chunk_rows=1000):
    """The CSR ``X`` as a dense float64 Zarr array, ``chunk_rows`` rows at a time."""
    import zarr

    z = zarr.create_array(path, shape=X.shape, chunks=(chunk_rows, X.shape[1]), dtype="f8",
                          overwrite=True)
    for start in range(0, X.shape[0], chunk_rows):
        z[start:start + chunk_rows] = X[start:start + chunk_rows].toarray()
    return path


def write_sparse_rows(X, path):
    """``X`` (CSR in memory) as AnnData's CSR group, for svdserve on the same rows."""
    from svdserve.client import write_sparse

    return write_sparse(X, path, overwrite=True)


class SelfRSS:
    """Peak resident set size of this process, sampled every ``interval`` seconds."""

    def __init__(self, interval=0.2):
        import psutil

        self.proc, self.interval, self.peak = psutil.Process(), interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def peak_mib(self):
        return self.peak / 2**20


def in_memory_rows(path, k, rows):
    """scikit-learn in this process: load, PCA(arpack) (the reference σ), TruncatedSVD."""
    from sklearn.decomposition import PCA, TruncatedSVD

    with SelfRSS() as rss:
        X, sec = timed(lambda: load_csr(path))
    rows.append(["load the CSR into this process (for scikit-learn)", f"{X.shape[0]:,}",
                 f"{sec:.1f}", "1 (1)", f"{rss.peak_mib:.0f}", ""])
    with SelfRSS() as rss:
        pca, sec = timed(lambda: PCA(k, svd_solver="arpack", random_state=0).fit(X))
    ref = pca.singular_values_
    rows.append(['scikit-learn `PCA(svd_solver="arpack")`, in memory (reference)',
                 f"{X.shape[0]:,}", f"{sec:.1f}", "in memory", f"{rss.peak_mib:.0f}", "0 / 0"])
    with SelfRSS() as rss:
        tsvd, sec = timed(lambda: TruncatedSVD(k, algorithm="randomized", n_iter=2,
                                               random_state=0).fit(X))
    rows.append(['scikit-learn `TruncatedSVD(n_iter=2)`, in memory, not centred',
                 f"{X.shape[0]:,}", f"{sec:.1f}", "in memory", f"{rss.peak_mib:.0f}",
                 "(σ of X)"])
    print(f"scikit-learn done; σ_1 {ref[0]:.4g}, σ_k {ref[-1]:.4g}", flush=True)
    del X
    return ref


def _err(s, ref):
    """Max relative error of the types' N_TYPES − 1 σ and of all k, as ``"top 9 / top k"``
    (past the 9th, σ lie in a flat tail of sampling noise, where any method's σ_i are
    sensitive: randomized with 2 power iterations is ~10 % low there)."""
    rel = np.abs(np.asarray(s)[:len(ref)] - ref) / ref
    return f"{rel[:N_TYPES - 1].max():.1e} / {rel.max():.1e}"


def cluster_row(name, fn, client, ref, m):
    """One svdserve run on the cluster: its table row (σ error against ``ref`` when given)."""
    with RSSSampler(client) as rss:
        res, sec = timed(fn)
    err = "" if ref is None else _err(res.S, ref)
    print(f"{name}: {sec:.1f}s, peak worker RSS {rss.peak_mib:.0f} MiB", flush=True)
    return [name, f"{m:,}", f"{sec:.1f}", f"{res.passes} ({res.reads:.2f})",
            f"{rss.peak_mib:.0f}", err], res


def dense_rows(args, path, client, k):
    """svdserve sparse against svdserve on the same rows stored dense."""
    from sklearn.decomposition import PCA

    from svdserve.worker import svd

    X = load_csr(path, args.dense_rows)
    r = X.shape[0]
    ref = PCA(k, svd_solver="arpack", random_state=0).fit(X).singular_values_
    sparse_path = write_sparse_rows(X, os.path.join(args.workdir, f"S_{r}x{X.shape[1]}.zarr"))
    t0 = time.perf_counter()
    dense_path = write_dense(X, os.path.join(args.workdir, f"D_{r}x{X.shape[1]}.zarr"))
    print(f"densified {r:,} rows ({r * X.shape[1] * 8 / 2**30:.2f} GiB as float64) in "
          f"{time.perf_counter() - t0:.1f}s", flush=True)
    del X
    kw = dict(method="randomized", n_iter=2, center=True, client=client)
    out = []
    for name, p in (("svdserve randomized, sparse store (same rows)", sparse_path),
                    ("svdserve randomized, densified store (dense Zarr)", dense_path)):
        row, _ = cluster_row(name, lambda p=p: svd(p, k, **kw), client, ref, r)
        out.append(row)
    return out


def main(argv=None):
    args = _args(argv)
    from distributed import Client, LocalCluster

    from svdserve.worker import svd

    m, n, k = args.rows, args.cols, args.rank
    os.makedirs(args.workdir, exist_ok=True)
    path = os.path.join(args.workdir, f"sparse_{m}x{n}_{args.density:g}.zarr")
    rows = []
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      memory_limit=args.memory_limit, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        t0 = time.perf_counter()
        path, per_row = ensure_sparse(path, m, n, args.density, args.block_rows, client)
        nnz = m * per_row
        print(f"CSR {m:,} × {n:,}, {nnz:,} non-zeros ({nnz * 12 / 2**30:.2f} GiB of values and "
              f"indices) at {path} ready in {time.perf_counter() - t0:.1f}s", flush=True)
        ref = None if args.skip_memory else in_memory_rows(path, k, rows)
        row, res = cluster_row("svdserve randomized (n_iter 2), sparse store, centred",
                               lambda: svd(path, k, method="randomized", n_iter=2, center=True,
                                           client=client), client, ref, m)
        rows.insert(0, row)
        if args.dense_rows:
            rows.extend(dense_rows(args, path, client, k))
    print()
    print(f"CSR {m:,} × {n:,} at {per_row / n:.2%} ({nnz:,} non-zeros, AnnData CSR Zarr), "
          f"k = {k}, centred; LocalCluster 2 workers × 1 thread, {args.memory_limit} each; "
          f"densified comparison on the first {min(args.dense_rows, m):,} rows.")
    print()
    print(fmt_table(rows, ["contestant", "rows", "wall s", "passes (reads)", "peak RSS MiB",
                           "max rel σ err vs ARPACK (top 9 / top k)"]))


if __name__ == "__main__":
    main()
