"""Methods against each other on three spectra: passes, time, accuracy, error estimates.

    .venv/bin/python bench/methods.py                 # 20,000 × 300, k = 20 (a few minutes)
    .venv/bin/python bench/methods.py --rows 100000   # larger

One matrix per spectrum type, A = U diag(σ) Vᵀ with random orthonormal U, V:

- fast:     σ_i = 0.8^(i−1)   (σ_21/σ_1 ≈ 0.01)
- moderate: σ_i = 1/i
- slow:     σ_i = 1/sqrt(i)

written once to Zarr (row chunks) and decomposed on one LocalCluster (2
worker processes × 1 thread) by svdserve randomized (q = 0, 1, 2), exact,
sketch (one pass), the energy target (the fraction whose PCA rank is k, so
its rank is comparable) and dask ``svd_compressed`` at the same k (with
n_power_iter = 2, as svdserve's default).

Columns: passes over A, reads from storage (in passes' worth of rows; the
panel cache serves the rest), wall time, ‖A − Â‖₂/σ_{k+1} (1 is optimal, Eckart–Young), and the
a-posteriori error estimate over the truth (≥ 1 by design: a bound failing
with probability 1e-10). Not a test: prints Markdown tables, asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import fmt_table  # noqa: E402

SPECTRA = {
    "fast": lambda n: 0.8 ** np.arange(n),
    "moderate": lambda n: 1.0 / np.arange(1, n + 1),
    "slow": lambda n: 1.0 / np.sqrt(np.arange(1, n + 1)),
}


def make(m, n, sigma, seed):
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((m, n)))
    v, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (u * sigma) @ v.T


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--cols", type=int, default=300)
    ap.add_argument("--rank", type=int, default=20)
    ap.add_argument("--chunk-rows", type=int, default=2_000)
    args = ap.parse_args(argv)

    import dask.array as da
    import zarr
    from distributed import Client, LocalCluster

    from svdserve.worker import svd

    m, n, k = args.rows, args.cols, args.rank
    tmp = tempfile.mkdtemp(prefix="svdserve-methods-")
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None, memory_limit="3GiB")
    client = Client(cluster)
    out = []
    try:
        for name, spectrum in SPECTRA.items():
            sigma = spectrum(n)
            A = make(m, n, sigma, seed=len(name))
            path = os.path.join(tmp, f"{name}.zarr")
            z = zarr.create_array(path, shape=A.shape, chunks=(args.chunk_rows, n), dtype="f8")
            z[:] = A
            cum = np.cumsum(sigma**2) / np.sum(sigma**2)
            energy = float((cum[k - 2] + cum[k - 1]) / 2)  # PCA's rank for it is k

            def truth(U, S, Vt):
                return np.linalg.norm(A - (np.asarray(U) * S) @ np.asarray(Vt), 2)

            runs = [(f"randomized q={q}", dict(rank=k, method="randomized", n_iter=q))
                    for q in (0, 1, 2)]
            runs += [("exact", dict(rank=k, method="exact")),
                     ("sketch", dict(rank=k, method="sketch")),
                     (f"energy {energy:.4f}", dict(energy=energy, method="randomized"))]
            for label, kw in runs:
                t0 = time.perf_counter()
                res = svd(path, client=client, **kw)
                wall = time.perf_counter() - t0
                kk = res.S.size
                err = truth(res.U, res.S, res.Vt)
                est_d = res.report.get("error_estimate") or {}
                est = est_d.get("probe_bound", est_d.get("spectral"))  # the probes' bound
                reads = f"{res.reads:.2f}"
                out.append([name, label, kk, res.passes, reads, f"{wall:.2f}",
                            f"{err / sigma[kk]:.4f}",
                            "-" if est is None or res.method == "exact" else f"{est / err:.2f}"])
            x = da.from_zarr(path)
            t0 = time.perf_counter()
            u, s, vt = da.linalg.svd_compressed(x, k, n_power_iter=2, seed=0)
            u, s, vt = da.compute(u, s, vt)
            wall = time.perf_counter() - t0
            out.append([name, "dask svd_compressed q=2", k, "-", "-", f"{wall:.2f}",
                        f"{truth(u, s, vt) / sigma[k]:.4f}", "-"])
            print(fmt_table(out[-7:], ["spectrum", "method", "k", "passes", "reads", "wall s",
                                       "‖A−Â‖₂/σ_k+1", "estimate/truth"]), flush=True)
    finally:
        client.close()
        cluster.close()
    print()
    print(f"{m} × {n} float64, chunks of {args.chunk_rows} rows, k = {k}; "
          "2 worker processes × 1 thread")
    print(fmt_table(out, ["spectrum", "method", "k", "passes", "reads", "wall s",
                          "‖A−Â‖₂/σ_k+1", "estimate/truth"]))


if __name__ == "__main__":
    main()
