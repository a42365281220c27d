"""Shared helpers of the client tests: dense reference SVDs and fake result stores.

The fake result group follows ``docs/contracts.md`` (arrays U, S, Vt, mean;
attributes ``report`` and ``svdserve``; ``manifest.json`` written last) so
that the client's result code can be tested without the service. The
integration tests (``test_client_service.py``) check the same code against
groups written by the real worker.
"""

from __future__ import annotations

import json
import os

import numpy as np

EPS = np.finfo(np.float64).eps


def flip_signs(U, Vt):
    """Make the largest-|.| entry of each row of Vt positive (the worker's and sklearn's rule)."""
    idx = np.argmax(np.abs(Vt), axis=1)
    signs = np.sign(Vt[np.arange(Vt.shape[0]), idx])
    signs[signs == 0] = 1.0
    return U * signs[None, :], Vt * signs[:, None]


def dense_svd(A, k, *, center=False):
    """Reference truncated SVD with the sign convention, of A or of A - 1 mean^T."""
    A = np.asarray(A, dtype=np.float64)
    mean = A.mean(axis=0) if center else None
    X = A - mean if center else A
    U, s, Vt = np.linalg.svd(X, full_matrices=False)
    U, Vt = flip_signs(U, Vt)
    return U[:, :k], s[:k], Vt[:k], mean, s, float(np.sum(X * X))


def make_report(shape, s_k, total, *, center=False, method="exact", s_all=None):
    """The worker's own energy report for given singular values and ‖X‖²_F ``total``.

    ``s_all`` is the whole spectrum when known; otherwise the energy beyond
    ``s_k`` is taken as ``total − Σ s_k²`` (fine for a fake, not for a real job).
    """
    from svdserve.worker import energy_report
    from svdserve.worker._kernels import sumsq

    s_k = np.asarray(s_k, dtype=np.float64)
    spectrum = s_k if s_all is None else np.asarray(s_all, dtype=np.float64)
    leftover = 0.0 if s_all is not None else max(total - float(np.sum(s_k**2)), 0.0)
    report = energy_report(s_k, sumsq(np.sqrt([total])), shape=shape, method=method,
                           center=center, s_all=spectrum if s_all is not None else None,
                           sigma_b=spectrum, resid_ss=sumsq(np.sqrt([leftover])))
    report.update({"n_oversamples": 10, "n_iter": 2, "random_state": 0, "passes": 2,
                   "timings": {"stats+qr": 0.01, "total": 0.02}})
    return report


def write_result(path, A, k, *, center=False, method="exact", row_chunk=None):
    """Write a fake ``result.zarr`` for A (dense SVD) at ``path``; return (U, s, Vt, mean)."""
    import zarr

    U, s, Vt, mean, s_all, total = dense_svd(A, k, center=center)
    m, n = np.shape(A)
    grp = zarr.open_group(os.fspath(path), mode="w")
    grp.create_array("U", data=U, chunks=(row_chunk or m, k))
    grp.create_array("S", data=s, chunks=(k,))
    grp.create_array("Vt", data=Vt, chunks=(k, n))
    if center:
        grp.create_array("mean", data=mean, chunks=(n,))
    report = make_report((m, n), s, total, center=center, method=method, s_all=s_all)
    grp.attrs.update({"report": report, "svdserve": {"fake": True}})
    arrays = {name: {"shape": list(grp[name].shape), "dtype": "float64"}
              for name in ("U", "S", "Vt", "mean") if name in grp}
    with open(os.path.join(os.fspath(path), "manifest.json"), "w") as f:
        json.dump({"format": "svdserve-result/1", "arrays": arrays, "complete": True}, f)
    return U, s, Vt, mean


def job_json(job_id="j1", state="succeeded", *, result_url=None, shape=(10, 4), rank=2,
             progress=None, error=None):
    """A JobPublic dict as the service sends it."""
    return {
        "id": job_id, "state": state,
        "created_at": "2026-01-01T00:00:00Z", "started_at": None, "finished_at": None,
        "updated_at": "2026-01-01T00:00:00Z", "attempt": 1,
        "request": {"source": {"url": "/data/A.zarr", "array": None}, "rank": rank,
                    "method": "auto", "n_oversamples": 10, "n_iter": 2, "center": False,
                    "random_state": 0},
        "progress": progress, "error": error, "notes": [],
        "result": None if result_url is None else {
            "url": result_url, "http": f"/v1/jobs/{job_id}/result",
            "shape": list(shape), "rank": rank, "method": "exact"},
        "links": {"self": f"/v1/jobs/{job_id}", "report": f"/v1/jobs/{job_id}/report",
                  "result": f"/v1/jobs/{job_id}/result", "cancel": f"/v1/jobs/{job_id}/cancel"},
    }
