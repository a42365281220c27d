"""Passes, reads and the panel cache (issue 10), on real clusters and real Zarr on disk."""

import numpy as np
import pytest

from svdserve.worker import svd
from svdserve.worker._tsqr import GEMM_MAX_COND

from tests._check import check_svd, decaying, to_zarr


@pytest.fixture(scope="module")
def zarr_matrix(tmp_path_factory):
    A = decaying(3000, 40, seed=21, decay=0.8, noise=1e-6)
    return A, to_zarr(tmp_path_factory.mktemp("pc") / "A.zarr", A, (250, 40))


@pytest.mark.parametrize("method,kw,passes", [
    ("exact", {}, 2),                                  # stats+QR, then U
    ("exact", {"compute_u": False}, 1),                # σ and V only
    ("randomized", {"n_iter": 0}, 1),                  # q + 1
    ("randomized", {"n_iter": 2}, 3),
    ("randomized", {"n_iter": 2, "compute_u": False}, 3),
])
def test_passes_and_reads(dask_client, zarr_matrix, method, kw, passes):
    A, url = zarr_matrix
    res = svd(url, 6, method=method, client=dask_client, panel_bytes=40 * 8 * 500, **kw)
    assert res.passes == passes
    # The default cache (30 % of an unlimited worker: the machine's memory)
    # holds this 1 MB matrix, so storage is read exactly once.
    assert res.reads == 1.0 and res.report["reads"] == 1.0
    streamed = svd(url, 6, method=method, client=dask_client, panel_bytes=40 * 8 * 500,
                   panel_cache=0, **kw)
    assert streamed.reads == passes
    # The cache changes where bytes come from, never the arithmetic: same bits.
    assert np.array_equal(res.S, streamed.S) and np.array_equal(res.Vt, streamed.Vt)
    if kw.get("compute_u", True):
        assert np.array_equal(res.U, streamed.U)
        # Randomized accuracy is tested elsewhere; here the shapes, orthonormality and signs.
        check_svd(res, A, 6, exact=method == "exact")
    else:
        assert res.U is None


def test_cache_under_tight_memory_limits(tmp_path):
    """Workers limited to 400 MiB, a 64 MB matrix: part cached, the rest streamed; no pause, no kill."""
    from distributed import Client, LocalCluster

    A = decaying(40_000, 200, seed=5, decay=0.7, noise=1e-8)  # 64 MB
    url = to_zarr(tmp_path / "A.zarr", A, (1000, 200))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit="400MiB",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        kw = dict(method="randomized", n_iter=2, client=client, panel_bytes=200 * 8 * 2000)
        cached = svd(url, 5, panel_cache=0.05, **kw)  # 20 MiB a worker: about 12 of 20 panels
        streamed = svd(url, 5, panel_cache=0, **kw)
        logs = client.get_worker_logs()
        alive = len(client.scheduler_info()["workers"])
    assert alive == 2 and not cached.events and not streamed.events
    text = "\n".join(line for entries in logs.values() for _, line in entries)
    assert "Pausing worker" not in text and "exceeded" not in text
    assert 1.0 < cached.reads < 3.0 and streamed.reads == 3.0  # partly cached, partly streamed
    assert np.array_equal(cached.U, streamed.U) and np.array_equal(cached.S, streamed.S)
    check_svd(cached, A, 5, sigma_rtol=1e-9)  # 0.7^(2·2+1)-type convergence: far below 1e-9


@pytest.mark.parametrize("cond,route", [(0.9 * GEMM_MAX_COND, "gemm"),
                                        (1.1 * GEMM_MAX_COND, "reapply")])
def test_exact_u_route_switches_at_its_bound(dask_client, cond, route):
    rng = np.random.default_rng(8)
    u, _ = np.linalg.qr(rng.standard_normal((2000, 30)))
    v, _ = np.linalg.qr(rng.standard_normal((30, 30)))
    s = np.geomspace(1.0, 1.0 / cond, 8).tolist() + [0.5 / cond] * 22
    A = (u * s) @ v.T
    res = svd(A, 8, method="exact", client=dask_client, panel_bytes=30 * 8 * 300)
    assert res.report["u_route"] == route
    # Both routes meet the same LAPACK checks: U orthonormal to 10·m·ε, σ to
    # Weyl's bound, and the reconstruction error at the Eckart–Young optimum.
    check_svd(res, A, 8)
    # And U_k agrees with the reference singular vectors to √n·ε·κ_k·(margin 100).
    ref_u = np.linalg.svd(A, full_matrices=False)[0][:, :8]
    align = np.abs(np.sum(np.asarray(res.U) * ref_u, axis=0))
    assert np.all(np.abs(1 - align) <= 100 * np.sqrt(30) * np.finfo(float).eps * cond)


def test_engine_reads_small_parts_where_they_live(dask_client):
    """A pass's tallies and pass-1 statistics are read in the workers' memory
    (one call per batch), not fetched by a task per panel: no fallback task runs."""
    from svdserve.worker._engine import DaskEngine

    eng = DaskEngine(dask_client)
    handles = [dask_client.submit(lambda i: ({"stats": i, "big": np.zeros(10)}, i, 2 * i), i,
                                  pure=False) for i in range(6)]
    list(eng.completed(handles))

    def no_task(*_args):
        raise AssertionError("peek fell back to a task")

    eng.part = no_task
    assert eng.peek(handles, 0, "stats") == list(range(6))
    assert eng.peek(handles, slice(1, 3)) == [(i, 2 * i) for i in range(6)]


def test_peek_leaves_spilled_values_on_disk(tmp_path):
    """A value Dask spilled is not read back into memory by a peek (the caller
    fetches it by a task instead): on a tight worker that would undo the spill."""
    from types import SimpleNamespace

    from distributed.spill import SpillBuffer

    from svdserve.worker._engine import _peek_local

    data = SpillBuffer(str(tmp_path), target=10_000)
    data["small"] = (1, 2)
    data["big"] = (np.zeros(100_000), 3)  # over the target: spilled to disk at once
    assert "big" in data.slow and "big" not in data.fast
    got = _peek_local(["small", "big"], (1,), dask_worker=SimpleNamespace(data=data))
    assert got == {"small": 2}
    assert "big" not in data.fast  # still on disk
