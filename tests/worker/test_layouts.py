"""Any chunk layout stays out of core (issue 11): workers limited to less memory than the matrix.

Every case runs on one real multi-process LocalCluster whose two workers may
each hold 240 MiB, on a 259 MB matrix stored as real Zarr on disk, with an
8 MiB panel budget:

- a wide matrix in row chunks and a tall one in column chunks (compressed:
  copied once to a raw scratch array, then read in slices);
- 2-D compressed chunks larger than the budget (the same copy);
- a single raw chunk holding the whole matrix (read in slices, no copy).

Each is checked against LAPACK, with the peak RSS of every worker under its
limit, no worker lost and no worker paused.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from svdserve.worker import InvalidInputError, svd

from tests._check import check_svd

# the memory limit of each worker of the session's tight_client (tests/worker/conftest.py)
LIMIT = 240 * 2**20  # the nanny pauses a worker at 80 % (192 MiB) and kills at 95 %
BUDGET = 8 * 2**20


def _peak_rss(reset=False):
    """This process's peak RSS since the last reset (Linux ``VmHWM``).

    Not ``ru_maxrss``: that survives ``exec``, so a worker spawned from a large
    test process would inherit the parent's size.
    """
    if reset:  # "5" resets the peak RSS to the current RSS (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return kib * 1024


def _low_rank(m, n, seed):
    """σ = 100·0.6^i for i < 10 plus N(0, 1e-6) noise: a clear gap for the randomized runs."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((m, 10)))
    v, _ = np.linalg.qr(rng.standard_normal((n, 10)))
    A = (u * (100 * 0.6 ** np.arange(10))) @ v.T
    A += 1e-6 * rng.standard_normal((m, n))
    return A


def _store(path, A, chunks, raw=False):
    import zarr

    kw = {"compressors": None} if raw else {}
    z = zarr.create_array(str(path), shape=A.shape, chunks=chunks, dtype=A.dtype, **kw)
    z[:] = A
    return str(path)


def _healthy(client):
    """Every worker still alive, never paused, and its peak RSS under the limit."""
    assert len(client.scheduler_info()["workers"]) == 2
    peaks = client.run(_peak_rss)
    assert all(p < LIMIT for p in peaks.values()), f"peak RSS {peaks} over {LIMIT}"
    logs = "\n".join(line for entries in client.get_worker_logs().values()
                     for _, line in entries)
    assert "Pausing worker" not in logs and "exceeded" not in logs, logs[-3000:]


CASES = [
    # name, shape, chunks, raw, expected layout, method, centre
    ("wide row chunks", (300, 108_000), (10, 108_000), False, "rechunk", "exact", True),
    ("tall column chunks", (108_000, 300), (108_000, 10), False, "rechunk", "randomized", True),
    ("2-D chunks over budget", (108_000, 300), (10_000, 200), False, "rechunk", "exact", False),
    ("one raw chunk", (300, 108_000), (300, 108_000), True, "slices", "randomized", False),
]


@pytest.mark.parametrize("name,shape,chunks,raw,kind,method,center", CASES,
                         ids=[c[0] for c in CASES])
def test_layout_in_bounded_memory(tight_client, tmp_path, name, shape, chunks, raw, kind,
                                  method, center):
    A = _low_rank(*shape, seed=len(name))
    assert A.nbytes > LIMIT  # the matrix does not fit one worker
    url = _store(tmp_path / "A.zarr", A, chunks, raw=raw)
    tight_client.run(_peak_rss, True)
    res = svd(url, 6, method=method, center=center, n_iter=2, client=tight_client,
              panel_bytes=BUDGET, scratch=str(tmp_path / "scratch"))
    plan = res.report["plan"]
    assert plan["kind"] == kind
    assert plan["panel_shape"][0] * plan["panel_shape"][1] * 8 <= BUDGET
    assert plan["peak_bytes_per_worker"] < LIMIT
    # The copy is read once from storage, on top of the passes' own reads.
    assert res.reads >= (2.0 if kind == "rechunk" else 1.0)
    assert not os.listdir(tmp_path / "scratch") if kind == "rechunk" else True
    _healthy(tight_client)
    assert not res.events
    # Exact: LAPACK accuracy (check_svd's Weyl bound, 100·√max(m,n)·ε·σ₁).
    # Randomized with q = 2 on a gap σ₆/σ₇ = 1/0.6 over a tail of 3e-4:
    # Halko et al. Thm. 10.8 puts the σ error far below 1e-9 relative.
    ref = check_svd(res, A, 6, center=center, exact=method == "exact")
    if method != "exact":
        np.testing.assert_allclose(res.S, ref[:6], rtol=1e-9)


def test_rechunked_run_is_deterministic(tight_client, tmp_path):
    """The copy changes where bytes come from, not the arithmetic: the same bits on every
    run on the cluster, and the in-process run's σ to rounding.

    (In process the σ differ from the cluster's in the last bits, 3e-16·σ₁ measured: the
    in-process run is compared within 10·ε·σ₁, not bit for bit. Until this round the
    "in-process" call here had no ``client=False`` and ran on the default client, this
    very cluster.)
    """
    A = _low_rank(100, 25_000, seed=3)  # one chunk band: 20 MB > 16 MiB, so copied
    url = _store(tmp_path / "A.zarr", A, (10, 25_000))
    kw = dict(method="exact", center=True, panel_bytes=2**20, scratch=str(tmp_path / "s"))
    on_cluster = svd(url, 5, client=tight_client, **kw)
    again = svd(url, 5, client=tight_client, **kw)
    in_process = svd(url, 5, client=False, **kw)
    assert on_cluster.report["plan"]["kind"] == "rechunk"
    for a, b in [(on_cluster.S, again.S), (on_cluster.U, again.U),
                 (on_cluster.Vt, again.Vt), (on_cluster.mean, again.mean)]:
        assert np.array_equal(a, b)
    np.testing.assert_allclose(in_process.S, on_cluster.S, rtol=0,
                               atol=10 * np.finfo(float).eps * on_cluster.S[0])


def test_chunk_too_large_for_the_workers_is_refused_before_any_read(tight_client, tmp_path):
    """One compressed 80 MB chunk must be decoded whole: 3 copies exceed half of 240 MiB."""
    A = np.ones((500, 20_000))
    url = _store(tmp_path / "A.zarr", A, (500, 20_000))
    with pytest.raises(InvalidInputError) as info:
        svd(url, 3, client=tight_client, panel_bytes=BUDGET, scratch=str(tmp_path / "s"))
    err = info.value
    assert err.field == "source"
    msg = str(err)
    assert "[500, 20000]" in msg and "MiB" in msg and "smaller chunks" in msg
    assert not (tmp_path / "s").exists()  # nothing was copied


def test_object_storage_copy_and_slices(dask_client):
    """On S3 (a real moto server): a row-chunked wide source is copied to a scratch
    array next to ``out`` on S3 and deleted; a raw tall one-chunk source is read by
    byte-range GETs (one per panel)."""
    import zarr

    from tests._server import moto_s3

    A = _low_rank(100, 25_000, seed=4)  # one chunk band: 20 MB > 16 MiB
    ref = np.linalg.svd(A, compute_uv=False)[:5]
    with moto_s3("issue11-layouts") as (so, fs):
        for name, raw, kind in [("rows.zarr", False, "rechunk"), ("raw.zarr", True, "slices")]:
            url = f"s3://issue11-layouts/{name}"
            kw = {"compressors": None} if raw else {}
            data = A.T if raw else A
            z = zarr.create_array(url, shape=data.shape, chunks=data.shape if raw else (10, 25_000),
                                  dtype="f8", storage_options=so, **kw)
            z[:] = data
            out = f"s3://issue11-layouts/results/{name}-svd.zarr"
            res = svd(url, 5, method="exact", client=dask_client, storage_options=so, out=out,
                      panel_bytes=2**20)
            assert res.report["plan"]["kind"] == kind
            # Weyl: every σ within 100·√n·ε·σ₁ of LAPACK (check_svd's bound).
            assert np.abs(np.asarray(res.S) - ref).max() <= 100 * np.sqrt(25_000) * 2.3e-16 * ref[0]
            left = fs.ls("issue11-layouts/results")
            assert [p for p in left if "scratch" in p] == []  # the copy is gone
