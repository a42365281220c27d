"""The shared checker for every decomposition the tests make (cf. scipy's ``_check_svds``).

Tolerances, all relative to machine epsilon ε = 2.2e-16:

- Orthonormality ‖QᵀQ − I‖_max ≤ 10·max(m, n)·ε: Householder QR and the TSQR
  tree are backward stable with error growing at most linearly in the
  dimension (Higham, *Accuracy and Stability*, Thm. 19.4); 10 is headroom.
- Exact σ: |σ_i − σ̂_i| ≤ 100·√max(m, n)·ε·σ_1 -- Weyl's theorem bounds the
  perturbation of every singular value by the backward error ‖E‖₂ ≈ ε‖A‖₂·c
  of the two QR stages and the small SVD.
- Reconstruction: ‖A − U S Vᵀ‖_F equals the Eckart–Young optimum
  sqrt(Σ_{i>k} σ_i²) up to the same backward error, 100·√max(m, n)·ε·‖A‖_F.
"""

from __future__ import annotations

import numpy as np

EPS = np.finfo(np.float64).eps


def dense(A):
    return np.asarray(A, dtype=np.float64)


def check_svd(res, A, k, *, center=False, exact=True, sigma_rtol=None):
    """Check a result against LAPACK on the same (dense) matrix.

    Parameters
    ----------
    res : SVDResult
    A : array_like of shape (m, n)
    k : int
    center : bool
        Compare with the SVD of the explicitly centred matrix.
    exact : bool
        Demand LAPACK accuracy of σ and of the reconstruction; for
        randomized results pass False and check the error bound separately.
    """
    A = dense(A)
    m, n = A.shape
    B = A - A.mean(axis=0) if center else A
    U, S, Vt = dense(res.U), np.asarray(res.S), dense(res.Vt)
    assert U.shape == (m, k) and S.shape == (k,) and Vt.shape == (k, n)
    assert np.all(np.isfinite(U)) and np.all(np.isfinite(Vt))
    assert np.all(np.diff(S) <= 0), "singular values must be non-increasing"
    orth_tol = 10 * max(m, n) * EPS
    assert np.abs(U.T @ U - np.eye(k)).max() <= orth_tol
    assert np.abs(Vt @ Vt.T - np.eye(k)).max() <= orth_tol
    # Signs: the largest-magnitude entry of each row of Vt is positive.
    rows = np.arange(k)
    assert np.all(Vt[rows, np.argmax(np.abs(Vt), axis=1)] > 0)
    ref = np.linalg.svd(B, compute_uv=False)
    scale = 100 * np.sqrt(max(m, n)) * EPS
    if exact:
        tol = scale * ref[0] if sigma_rtol is None else sigma_rtol * ref[:k]
        np.testing.assert_array_less(np.abs(S - ref[:k]), tol + 1e-300)
        best = np.sqrt(np.sum(ref[k:] ** 2))
        err = np.linalg.norm(B - (U * S) @ Vt)
        assert abs(err - best) <= scale * np.linalg.norm(B) + 1e-300
    if center:
        np.testing.assert_allclose(res.mean, A.mean(axis=0), rtol=0,
                                   atol=scale * max(1.0, np.abs(A).max()))
    return ref


def centered_exactly(A):
    """A − 1 meanᵀ to within ε of each centred entry, whatever the offset.

    np.longdouble is not enough as a reference: at an offset of 1e10 its
    spacing is ~1e-9, far above the spread of data worth centring. Here each
    column mean is formed exactly (a sum of Fractions), split into a float
    and its remainder, and subtracted in two steps: ``(a − hi) − lo``, the
    first exact by Sterbenz's lemma when the offset dominates.
    """
    from fractions import Fraction

    A = np.asarray(A, dtype=np.float64)
    out = np.empty_like(A)
    for j, mean in enumerate(_exact_means(A)):
        hi = float(mean)
        out[:, j] = (A[:, j] - hi) - float(mean - Fraction(hi))
    return out


def _exact_means(A):
    from fractions import Fraction

    return [sum(Fraction(v) for v in col.tolist()) / col.size for col in np.asarray(A).T]


def exact_mean(A):
    """Column means of A correctly rounded to float64 (exact sums of Fractions)."""
    return np.array([float(x) for x in _exact_means(A)])


def decaying(m, n, *, seed=0, decay=0.8, noise=0.0):
    """A matrix with σ_i = decay**i (plus optional noise): a clear spectrum to check against."""
    rng = np.random.default_rng(seed)
    r = min(m, n)
    u, _ = np.linalg.qr(rng.standard_normal((m, r)))
    v, _ = np.linalg.qr(rng.standard_normal((n, r)))
    A = (u * decay ** np.arange(r)) @ v.T
    return A + noise * rng.standard_normal((m, n))


def geometry_matrix(shape, dtype, seed=0):
    """σ_i = 0.7^i (×100) in ``dtype``; for integer dtypes exactly rank 8 in integers,
    so that the randomized sketch (l ≥ 8) spans it."""
    if np.dtype(dtype).kind == "i":
        rng = np.random.default_rng(seed)
        return (rng.integers(-5, 6, (shape[0], 8)) @ rng.integers(-5, 6, (8, shape[1]))).astype(dtype)
    return (decaying(*shape, seed=seed, decay=0.7) * 100).astype(dtype)


def offset_data(offset, m=3000, n=40, seed=0):
    """Issue 8's data: offset + N(0,1)·logspace(-3, 0, n); the centered spectrum spans 3 decades."""
    rng = np.random.default_rng(seed)
    return offset + rng.standard_normal((m, n)) * np.logspace(-3, 0, n)


def to_zarr(path, A, chunks, *, zarr_format=3):
    import zarr

    z = zarr.create_array(str(path), shape=A.shape, chunks=chunks, dtype=A.dtype,
                          zarr_format=zarr_format)
    z[:] = A
    return str(path)


def check_factors(U, S, Vt, A, k, *, rtol=1e-8):
    """Factors of a rank-k truncated SVD of ``A`` agree with LAPACK's.

    For factors read back from a result store (no :class:`SVDResult` at
    hand). Signs are not compared (they are a convention); the rank-k
    reconstruction, the singular values and orthonormality are. ``rtol``:
    the exact method is backward stable, so agreement is to a modest
    multiple of eps * cond; 1e-8 leaves ample room for the test matrices.
    """
    U, S, Vt = np.asarray(U), np.asarray(S), np.asarray(Vt)
    m, n = A.shape
    assert U.shape == (m, k) and S.shape == (k,) and Vt.shape == (k, n)
    u, s, vt = np.linalg.svd(A, full_matrices=False)
    np.testing.assert_allclose(S, s[:k], rtol=rtol, atol=rtol * s[0])
    np.testing.assert_allclose(U.T @ U, np.eye(k), atol=1e-10)
    np.testing.assert_allclose(Vt @ Vt.T, np.eye(k), atol=1e-10)
    best = (u[:, :k] * s[:k]) @ vt[:k]
    np.testing.assert_allclose((U * S) @ Vt, best, atol=rtol * s[0] * 10)


def dense_svd(A, k, *, center=False):
    """Reference truncated SVD of A (or of A − 1 meanᵀ) with the worker's sign rule
    (:func:`svdserve.worker._kernels.svd_flip_rows`).

    Returns
    -------
    U, s, Vt, mean, s_all, total : the rank-k factors, the column means (or
    None), the whole spectrum and ‖X‖²_F.
    """
    from svdserve.worker._kernels import svd_flip_rows

    A = dense(A)
    mean = A.mean(axis=0) if center else None
    X = A - mean if center else A
    U, s, Vt = np.linalg.svd(X, full_matrices=False)
    U, Vt = svd_flip_rows(U, Vt)
    return U[:, :k], s[:k], Vt[:k], mean, s, float(np.sum(X * X))


def fake_report(shape, s_k, total, *, center=False, method="exact", s_all=None):
    """The worker's own :func:`~svdserve.worker.energy_report` for given singular
    values and ‖X‖²_F ``total``, plus the run fields a job adds.

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


def write_fake_result(path, A, k, *, center=False, method="exact", row_chunk=None):
    """A ``result.zarr`` for A (dense SVD) at ``path``, written by the worker's own
    :class:`~svdserve.worker._result.ResultWriter` (manifest last, as
    ``docs/contracts.md`` says); returns (U, s, Vt, mean)."""
    import os

    from svdserve.worker._result import ResultWriter

    U, s, Vt, mean, s_all, total = dense_svd(A, k, center=center)
    m, n = np.shape(A)
    writer = ResultWriter(os.fspath(path), None, (m, n), k, row_chunk or m, False, center)
    writer.group["U"][:] = U
    report = fake_report((m, n), s, total, center=center, method=method, s_all=s_all)
    writer.finish(S=s, small=Vt, mean=mean, attrs={"report": report, "svdserve": {"fake": True}})
    return U, s, Vt, mean
