"""svdserve.PCA / TruncatedSVD fitted through the real service (``client=svdserve.client.Client``).

The same numbers as the in-process fit of the same matrix, whether the
service reads it by path or it is uploaded over HTTP for the job.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests._check import to_zarr


@pytest.fixture(scope="module")
def matrix():
    rng = np.random.default_rng(11)
    u, _ = np.linalg.qr(rng.standard_normal((400, 6)))
    v, _ = np.linalg.qr(rng.standard_normal((30, 6)))
    return (u * (50.0 * 0.6 ** np.arange(6))) @ v.T + 1e-3 * rng.standard_normal((400, 30)) + 2.0


def test_pca_through_the_service_equals_in_process(client, data_dir, matrix):
    import dask.array as da

    from svdserve import PCA, TruncatedSVD

    path = to_zarr(data_dir / "X.zarr", matrix, (50, 30))
    remote = PCA(4, client=client)
    Z = remote.fit_transform(path)
    local = PCA(4).fit(matrix)
    # Exact method both ways; the service cuts 64 KiB panels, this process one panel:
    # the results differ by rounding, ~1e2·eps relative to σ_1 = 50 (κ ≈ 8). 1e-10 is ample.
    for name in ("components_", "singular_values_", "explained_variance_ratio_", "mean_"):
        np.testing.assert_allclose(getattr(remote, name), getattr(local, name), rtol=1e-10,
                                   atol=1e-10)
    assert remote.noise_variance_ == pytest.approx(local.noise_variance_, rel=1e-8)
    assert isinstance(Z, da.Array)  # U from the stored result, read lazily
    np.testing.assert_allclose(Z.compute(), local.transform(matrix), rtol=1e-9, atol=1e-9)
    T = remote.transform(path)
    assert isinstance(T, da.Array)
    np.testing.assert_allclose(T.compute(), local.transform(matrix), rtol=1e-9, atol=1e-9)

    tsvd = TruncatedSVD(3, algorithm="exact", client=client).fit(path)
    ref = TruncatedSVD(3, algorithm="exact").fit(matrix)
    np.testing.assert_allclose(tsvd.explained_variance_ratio_, ref.explained_variance_ratio_,
                               rtol=1e-10)


def test_in_memory_matrix_is_uploaded_for_the_job(client, matrix):
    from svdserve import PCA

    before = {u["name"] for u in client.uploads()}
    est = PCA(3, client=client)
    Z = est.fit_transform(matrix)
    local = PCA(3).fit(matrix)
    # Exact both ways, different panel plans: rounding only (see above).
    np.testing.assert_allclose(est.singular_values_, local.singular_values_, rtol=1e-10)
    np.testing.assert_allclose(est.components_, local.components_, rtol=1e-10, atol=1e-10)
    assert isinstance(Z, np.ndarray)  # NumPy in, NumPy out
    np.testing.assert_allclose(Z, local.transform(matrix), rtol=1e-9, atol=1e-9)
    assert {u["name"] for u in client.uploads()} == before  # the upload was deleted


def test_an_upload_cut_short_for_a_fit_is_deleted(client):
    import dask.array as da

    from svdserve import PCA

    def unreadable(block):
        raise OSError("the disk went away")

    # created on the service, then its first block cannot be read
    X = da.zeros((20, 4), chunks=(10, 4)).map_blocks(unreadable, dtype=np.float64)
    before = {u["name"] for u in client.uploads()}
    with pytest.raises(OSError, match="the disk went away"):
        PCA(2, client=client).fit(X)
    assert {u["name"] for u in client.uploads()} == before  # no upload holds the quota


def test_eof_of_an_in_memory_field_through_the_service(client):
    """svdserve.EOF with client=Client: the DataArray is uploaded, √cos φ weights computed
    from its coordinate go with the job, the labelled outputs equal the in-process fit."""
    import xarray as xr

    from svdserve import EOF

    rng = np.random.default_rng(5)
    field = xr.DataArray(rng.standard_normal((40, 6, 8)) @ np.diag(np.linspace(1, 3, 8)),
                         dims=("time", "lat", "lon"), name="t2m",
                         coords={"time": np.arange(40), "lat": np.linspace(-60, 60, 6),
                                 "lon": np.arange(0.0, 360.0, 45.0)})
    remote = EOF(3, use_coslat=True, standardize=True, solver="full", client=client).fit(
        field, dim="time")
    local = EOF(3, use_coslat=True, standardize=True, solver="full").fit(field, dim="time")
    assert remote.report_["scaling"]["weights"] != "coslat"  # the array computed here
    # exact both ways, different panel plans: rounding only. Davis–Kahan: ~ε·λ₁/gap with
    # λ₁/min gap ≈ 10 among modes 1-4 here, so ~1e-14; 1e-10 is ample, and a wrong weight,
    # sign or mode is O(1e-2) or more
    s = np.sign((remote.components() * local.components()).sum(("lat", "lon")))
    np.testing.assert_allclose(remote.components() * s, local.components(), atol=1e-10)
    np.testing.assert_allclose(remote.scores() * s, local.scores(), atol=1e-10 * 40)
    np.testing.assert_allclose(remote.explained_variance_ratio(),
                               local.explained_variance_ratio(), rtol=1e-10)
    assert remote.scores().dims == ("mode", "time")
