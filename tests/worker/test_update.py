"""Issue 26 in the core: update a stored exact result with appended rows.

Real Zarr arrays on disk grown with ``resize`` plus new chunks; the local
engine, or the session's real Dask cluster for one case. Every update is
compared with a full recompute of the grown matrix, and the rows it read are
counted by the panel tasks themselves (``report["update"]["rows_read"]``).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import zarr

from svdserve.worker import InvalidInputError, UpdateError, load, svd


def matrix(m, n, seed=0, offset=0.0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((m, n)) @ np.diag(0.8 ** np.arange(n)) + offset


def write(path, a, chunks, dtype=None):
    z = zarr.create_array(str(path), shape=a.shape, dtype=dtype or a.dtype, chunks=chunks,
                          overwrite=True)
    z[...] = a
    return z


def grow(path, rows):
    """Append ``rows`` to the Zarr array at ``path`` as a producer would: resize, write."""
    z = zarr.open_array(str(path), mode="r+")
    m = z.shape[0]
    z.resize((m + rows.shape[0], z.shape[1]))
    z[m:] = rows
    return z


def check_against_full(upd, full, A, k):
    """σ within 10·√n·ε·σ₁ and V within the gap-weighted bound of a full recompute."""
    n = A.shape[1]
    eps = np.finfo(np.float64).eps
    s = np.linalg.svd(A - (A.mean(axis=0) if upd.mean is not None else 0),
                      compute_uv=False)
    # Both are backward stable TSQRs of the same matrix: each σ is within a few √n·ε·σ₁
    # of the true one (Weyl), so the two differ by at most 10·√n·ε·σ₁.
    tol_s = 10 * np.sqrt(n) * eps * s[0]
    np.testing.assert_allclose(upd.S, full.S, rtol=0, atol=tol_s)
    np.testing.assert_allclose(upd.report["singular_values"], full.report["singular_values"],
                               rtol=0, atol=tol_s)
    # Davis–Kahan/Wedin: each right vector moves by at most (backward error)/(gap to its
    # neighbours); the backward error is 10·√n·ε·σ₁ as above.
    gaps = np.minimum(np.r_[np.inf, s[:k - 1] - s[1:k]], s[:k] - s[1:k + 1])
    v_up, v_full = np.asarray(upd.Vt[...]), np.asarray(full.Vt[...])
    for i in range(k):
        err = min(np.linalg.norm(v_up[i] - v_full[i]), np.linalg.norm(v_up[i] + v_full[i]))
        assert err <= 2 * tol_s / gaps[i], (i, err, tol_s / gaps[i])
    if upd.mean is not None:
        # the merged mean: Chan et al.'s update, exact to a few ε of the data's magnitude
        np.testing.assert_allclose(upd.mean, A.mean(axis=0), rtol=0,
                                   atol=100 * eps * np.abs(A).max())
    total_up, total_full = upd.report["total_energy"], full.report["total_energy"]
    assert total_up == pytest.approx(total_full, rel=1e3 * eps)  # sums in another order


# rows_old, chunks, appended blocks, center: a comment per row
CASES = [
    (300, (100, 12), [60], False),          # chunk-aligned old array, one block
    (300, (100, 12), [60], True),           # the same, centred (PCA)
    (250, (100, 12), [30, 45, 80], True),   # grew inside its last chunk, three updates
    (250, (100, 4), [70], False),           # column chunks: panels read by byte range
]


@pytest.mark.parametrize("m_old, chunks, blocks, center", CASES)
def test_update_equals_full_recompute_reading_only_new_rows(tmp_path, m_old, chunks, blocks,
                                                            center):
    n, k = 12, 4
    A = matrix(m_old + sum(blocks), n, offset=50.0 if center else 0.0)
    src = tmp_path / "A.zarr"
    write(src, A[:m_old], chunks)
    prev = svd(str(src), k, method="exact", center=center, compute_u=False,
               out=str(tmp_path / "r0"), client=False)
    m = m_old
    for i, b in enumerate(blocks):
        grow(src, A[m:m + b])
        m += b
        upd = svd(str(src), update=prev.url, compute_u=False, out=str(tmp_path / f"r{i + 1}"),
                  client=False)
        info = upd.report["update"]
        assert info["rows_read"] == b and info["rows_appended"] == b
        assert info["rows_total"] == m and info["parent"] == prev.url
        # the old partial last chunk is re-read only to check its hash
        assert info["rows_checked"] == (prev.report["shape"][0] % chunks[0])
        full = svd(str(src), k, method="exact", center=center, compute_u=False, client=False)
        check_against_full(upd, full, A[:m], k)
        prev = load(upd.url)


def test_update_u_by_one_gemm_pass_and_float32(tmp_path, dask_client):
    """compute_u=True: U = A V Σ⁻¹ over every row (counted), orthonormal and equal to the
    full run's U; a float32 source, on the real cluster."""
    n, k = 10, 3
    A = matrix(400, n).astype(np.float32)
    src = tmp_path / "A.zarr"
    write(src, A[:300], (64, n))
    prev = svd(str(src), k, method="exact", out=str(tmp_path / "r0"), client=dask_client)
    grow(src, A[300:])
    upd = svd(str(src), update=load(prev.url), out=str(tmp_path / "r1"), client=dask_client)
    full = svd(str(src), k, method="exact", client=dask_client)
    A64 = A.astype(np.float64)
    check_against_full(upd, full, A64, k)
    assert upd.report["update"]["rows_read"] == 100 + 400  # new rows, then the U pass
    assert upd.report["u_route"] == "gemm"
    U = np.asarray(upd.U[...])
    eps = np.finfo(np.float64).eps
    # re-orthonormalised by a TSQR: orthonormal to a few ε·√m
    np.testing.assert_allclose(U.T @ U, np.eye(k), rtol=0, atol=100 * np.sqrt(400) * eps)
    # U = A V Σ⁻¹ of the grown matrix: its error is √n·ε·σ₁/σ_k (κ_3 = 1/0.64 here)
    np.testing.assert_allclose(np.abs(U), np.abs(full.U), rtol=0,
                               atol=1e3 * np.sqrt(n) * eps)


def _parent(tmp_path, m=300, n=8, chunks=(100, 8)):
    A = matrix(m + 50, n)
    src = tmp_path / "A.zarr"
    write(src, A[:m], chunks)
    res = svd(str(src), 3, method="exact", compute_u=False, out=str(tmp_path / "r0"),
              client=False)
    return src, A, res


def test_changed_old_chunk_is_refused(tmp_path):
    src, A, res = _parent(tmp_path)
    grow(src, A[300:])
    z = zarr.open_array(str(src), mode="r+")
    z[120, 0] = 7.0  # an old row in chunk row 1 rewritten
    with pytest.raises(UpdateError, match=r"rows 0:300 changed.*chunk row 1 \(rows 100:200\)"
                       r".*submit a full job") as err:
        svd(str(src), update=res.url, compute_u=False, client=False)
    assert err.value.changed == "rows" and err.value.field == "update"
    assert isinstance(err.value, InvalidInputError)


def test_changed_rows_inside_partial_chunk_are_refused(tmp_path):
    src, A, res = _parent(tmp_path, m=250)
    grow(src, A[250:])
    z = zarr.open_array(str(src), mode="r+")
    z[210, 3] = -1.0  # an old row of the chunk the array grew inside
    with pytest.raises(UpdateError, match=r"rows 200:250 \(the old partial last chunk\)"):
        svd(str(src), update=res.url, compute_u=False, client=False)


@pytest.mark.parametrize("change, what", [
    ("shrunk", r"shape expected more than 300 rows, got 200 rows \(the array shrank\)"),
    ("columns", r"columns expected 8 columns, got 9"),
    ("dtype", r"dtype expected 'float64', got 'float32'"),
    ("chunks", r"chunks expected chunks \(100, 8\), got \(50, 8\)"),
])
def test_shape_column_dtype_changes_are_refused(tmp_path, change, what):
    src, A, res = _parent(tmp_path)
    if change == "shrunk":
        zarr.open_array(str(src), mode="r+").resize((200, 8))
    elif change == "columns":
        write(src, np.hstack([A, A[:, :1]]), (100, 9))
    elif change == "chunks":
        write(src, A, (50, 8))
    else:
        write(src, A, (100, 8), dtype="float32")
    with pytest.raises(UpdateError, match=what) as err:
        svd(str(src), update=res.url, compute_u=False, client=False)
    assert err.value.changed == change.replace("shrunk", "shape")


def test_randomized_result_cannot_be_updated(tmp_path):
    src = tmp_path / "A.zarr"
    write(src, matrix(300, 8), (100, 8))
    res = svd(str(src), 2, method="randomized", out=str(tmp_path / "r0"), client=False)
    grow(src, matrix(20, 8, seed=1))
    with pytest.raises(UpdateError, match="methods that support update: exact") as err:
        svd(str(src), update=res.url, client=False)
    assert err.value.changed == "method"
    assert os.path.isdir(res.url)  # the parent stays readable


@pytest.mark.parametrize("center", [False, True])
def test_sketch_update_equals_full_sketch_reading_only_new_rows(tmp_path, center):
    """Two appended blocks (the first lands inside the last chunk) against one full
    single-pass sketch of the grown matrix with the same seed."""
    n, k = 30, 3
    A = matrix(520, n, seed=3, offset=20.0 if center else 0.0)
    src = tmp_path / "A.zarr"
    write(src, A[:350], (100, n))
    kw = {"client": False, "panel_bytes": 100 * n * 8}  # one chunk per panel
    prev = svd(str(src), k, method="sketch", center=center, random_state=7,
               out=str(tmp_path / "r0"), **kw)
    for i, stop in enumerate((420, 520), start=1):
        m = zarr.open_array(str(src)).shape[0]
        grow(src, A[m:stop])
        upd = svd(str(src), update=prev.url, out=str(tmp_path / f"r{i}"), **kw)
        assert upd.report["update"]["rows_read"] == stop - m
        assert upd.method == "sketch" and upd.report["sketch_sizes"] == {"range": 13, "core": 27}
        full = svd(str(src), k, method="sketch", center=center, random_state=7, **kw)
        # Equal to rounding: the two runs differ only in the order of the sums of X and Z
        # and the TSQR tree of Y (a few ε each), amplified by the two least-squares solves'
        # condition (Gaussian test matrices of aspect ≥ 2: κ ≲ 10); 1e-10·σ₁ covers it.
        tol = 1e-10 * full.S[0]
        np.testing.assert_allclose(upd.S, full.S, rtol=0, atol=tol)
        rec_u = np.asarray(upd.U[...]) * upd.S @ np.asarray(upd.Vt[...])
        rec_f = np.asarray(full.U) * full.S @ np.asarray(full.Vt)
        np.testing.assert_allclose(rec_u, rec_f, rtol=0, atol=tol)
        # the probe residuals ~σ_4 ≈ 0.4·σ₁ move by the same 1e-10·σ₁: 1e-8 relative
        np.testing.assert_allclose(upd.report["error_estimate"]["spectral"],
                                   full.report["error_estimate"]["spectral"], rtol=1e-8)
        prev = load(upd.url)


def test_wide_or_masked_parent_cannot_be_updated(tmp_path):
    """No state for a wide parent (its tall view grows along columns); a missing='mask'
    parent's mask depends on every row."""
    src = tmp_path / "W.zarr"
    write(src, matrix(8, 30), (4, 30))
    wide = svd(str(src), 2, method="exact", out=str(tmp_path / "w0"), client=False)
    grow(src, matrix(40, 30, seed=2))
    with pytest.raises(UpdateError, match=r"tall \(rows >= columns\)") as err:
        svd(str(src), update=wide.url, client=False)
    assert err.value.changed == "source"
    src2, A, res = _parent(tmp_path / "m", m=300)
    masked = svd(str(src2), 2, method="exact", missing="mask", out=str(tmp_path / "m1"),
                 client=False)
    grow(src2, A[300:])
    with pytest.raises(UpdateError, match="missing='mask' cannot be updated"):
        svd(str(src2), update=masked.url, client=False)
