"""Bad input, NaN/Inf, the result store and the energy report.

NaN/Inf in a panel and the report's identities, for every method, are in
:class:`tests.worker.test_methods.SVDCommonTests`.
"""

import json
import os

import numpy as np
import pytest
import zarr
from fsspec.implementations.local import LocalFileSystem

from svdserve import _manifest
from svdserve.worker import (
    InvalidInputError,
    NonFiniteError,
    SourceNotFoundError,
    StorageError,
    inspect_source,
    load,
    svd,
)

from tests._check import check_svd, decaying, to_zarr


# ----------------------------------------------------------------------------- bad input


def test_bad_sources(tmp_path):
    one_d = zarr.create_array(str(tmp_path / "v.zarr"), shape=(10,), dtype="f8")
    strings = zarr.create_array(str(tmp_path / "s.zarr"), shape=(3, 3), dtype="<U4")
    empty = zarr.create_array(str(tmp_path / "e.zarr"), shape=(0, 3), dtype="f8")
    cases = [
        (one_d, InvalidInputError, "2-D"),
        (strings, InvalidInputError, "real numbers"),
        (empty, InvalidInputError, "empty"),
        (str(tmp_path / "missing.zarr"), SourceNotFoundError, "no Zarr array"),
        (42, InvalidInputError, "source must be"),
    ]
    for src, exc, words in cases:
        with pytest.raises(exc, match=words) as info:
            svd(src, 1)
        assert info.value.field.startswith("source") and info.value.type == "invalid_input"


def test_group_needs_array_name(tmp_path):
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    g.create_array("a", shape=(20, 4), dtype="f8")[:] = 1.0
    g.create_array("b", shape=(20, 4), dtype="f8")[:] = 2.0
    with pytest.raises(InvalidInputError, match="name the one") as info:
        inspect_source(str(tmp_path / "g.zarr"))
    assert info.value.field == "source.array"
    with pytest.raises(SourceNotFoundError, match="no array 'c'"):
        inspect_source(str(tmp_path / "g.zarr"), array="c")
    info = inspect_source(str(tmp_path / "g.zarr"), array="b")
    assert info.shape == (20, 4) and info.array == "b" and info.zarr_format == 3
    res = svd(str(tmp_path / "g.zarr"), 1, array="b")
    np.testing.assert_allclose(res.S, [2.0 * np.sqrt(80)], rtol=1e-14)


@pytest.mark.parametrize("kw,field", [
    ({"rank": 0}, "rank"),
    ({"rank": 11}, "rank"),  # > min(m, n) = 10
    ({"rank": 2.5}, "rank"),
    ({"rank": 2, "method": "lanczos"}, "method"),
    ({"rank": 2, "n_oversamples": -1}, "n_oversamples"),
    ({"rank": 2, "n_iter": -1}, "n_iter"),
    ({"rank": 2, "panel_bytes": 0}, "panel_bytes"),
])
def test_bad_parameters_name_the_field(kw, field):
    with pytest.raises(InvalidInputError) as info:
        svd(np.ones((30, 10)), **kw)
    assert info.value.field == field


def test_non_finite_wide_names_columns(dask_client):
    A = decaying(10, 500)
    A[3, 250] = np.nan
    with pytest.raises(NonFiniteError, match="columns"):
        svd(A, 2, client=dask_client, panel_bytes=10 * 8 * 100)


# ----------------------------------------------------------------------------- store


def test_out_writes_group_with_manifest_last(tmp_path, dask_client):
    A = decaying(700, 30, noise=1e-3)
    src = to_zarr(tmp_path / "A.zarr", A, (70, 30))
    out = str(tmp_path / "res.zarr")
    res = svd(src, 5, method="exact", center=True, client=dask_client, out=out, panel_bytes=1)
    assert res.url == out and isinstance(res.U, zarr.Array)
    assert res.U.chunks == (70, 5)  # row chunks like the input
    loaded = load(out)
    check_svd(loaded, A, 5, center=True)
    assert loaded.report == json.loads(json.dumps(res.report))
    prov = loaded.provenance
    assert prov["input"]["url"] == src and prov["params"]["random_state"] == 0
    assert prov["passes"] == 2 and set(prov["versions"]) >= {"numpy", "dask", "zarr", "svdserve"}
    manifest = _manifest.read(LocalFileSystem(), out)
    assert set(manifest["arrays"]) == {"U", "S", "Vt", "mean"}
    # Without the manifest the group is refused.
    os.remove(_manifest.path_of(out))
    with pytest.raises(StorageError, match="not a finished svdserve result"):
        load(out)


def test_out_wide_and_overwrite(tmp_path, dask_client):
    A = decaying(20, 300, seed=4)
    out = str(tmp_path / "w.zarr")
    svd(A, 3, client=dask_client, out=out, panel_bytes=20 * 8 * 64)
    res = svd(A, 4, client=dask_client, out=out, panel_bytes=20 * 8 * 64)  # overwrite
    loaded = load(out)
    assert loaded.Vt.shape == (4, 300) and loaded.Vt.chunks == (4, 64)
    check_svd(loaded, A, 4)
    np.testing.assert_array_equal(np.asarray(loaded.Vt), np.asarray(res.Vt))


def test_load_missing_group(tmp_path):
    with pytest.raises(StorageError):
        load(str(tmp_path / "nothing.zarr"))


# ----------------------------------------------------------------------------- report


def test_report_more_than_k_and_gaps():
    from svdserve.worker import energy_report
    from svdserve.worker._kernels import sumsq

    sigma = np.array([10.0, 9.0, 1.0])
    rep = energy_report(sigma, sumsq(np.sqrt([1000.0])), shape=(100, 50), method="randomized",
                        center=False, sigma_b=sigma, resid_ss=sumsq(np.sqrt([1000.0 - 182])))
    assert all(e["more_than_k"] and e["rank"] is None for e in rep["energy_ranks"])
    assert rep["spectral_gaps"][0] == {"rank": 2, "ratio": 9.0}


def test_report_explained_variance_matches_sklearn(dask_client):
    from sklearn.decomposition import PCA

    X = decaying(300, 20, seed=7, decay=0.8) + 3.0
    res = svd(X, 5, method="exact", center=True, client=dask_client)
    pca = PCA(n_components=5, svd_solver="full").fit(X)
    rep = res.report
    # Same quantities computed two ways in float64 from a well-separated spectrum.
    np.testing.assert_allclose(rep["explained_variance"], pca.explained_variance_, rtol=1e-10)
    np.testing.assert_allclose(rep["explained_variance_ratio"], pca.explained_variance_ratio_, rtol=1e-10)
    np.testing.assert_allclose(res.S, pca.singular_values_, rtol=1e-10)
    # Same sign convention as scikit-learn's components_ (largest |entry| positive).
    np.testing.assert_allclose(np.asarray(res.Vt), pca.components_, atol=1e-10)


# -- the error estimate: the best bound known, and a flag when it says the result is useless


def _true_spectral_error(res, A):
    return np.linalg.norm(A - (np.asarray(res.U) * res.S) @ np.asarray(res.Vt), 2)


def test_sketch_of_a_flat_spectrum_is_flagged(dask_client):
    from svdserve.worker._energy import FLAT_SPECTRUM_WARNING

    # A Gaussian 100×80: σ_1 ≈ 19.5, σ_80 ≈ 1.1, no gap; a one-pass sketch of rank 2 is off
    # by far more than σ_2 (issue 20: S = [62, 38] against σ_1 = 19.5).
    A = np.random.default_rng(0).standard_normal((100, 80))
    res = svd(A, 2, method="sketch", client=dask_client)
    est, sigma = res.report["error_estimate"], res.S
    assert est["source"] == "probe" and est["probe_bound"] == est["spectral"]
    assert est["exceeds_sigma_k"] and est["spectral"] > sigma[-1]
    assert est["warning"] == FLAT_SPECTRUM_WARNING.format(bound=est["spectral"],
                                                          sigma_k=sigma[-1])
    assert "too flat for a one-pass sketch" in est["warning"] and "n_iter ≥ 1" in est["warning"]
    assert res.report["notes"] == [est["warning"]]
    assert _true_spectral_error(res, A) <= est["spectral"]  # the bound itself still holds


def test_sketch_of_low_rank_data_is_not_flagged(dask_client):
    # Rank 3 exactly and k = 3: the sketch captures the range, E is rounding (~1e-15·σ_1).
    rng = np.random.default_rng(1)
    A = rng.standard_normal((200, 3)) @ rng.standard_normal((3, 40))
    res = svd(A, 3, method="sketch", client=dask_client)
    est = res.report["error_estimate"]
    assert est["source"] == "probe" and not est["exceeds_sigma_k"] and est["warning"] is None
    assert res.report["notes"] == []
    # 10·sqrt(2/π)·max‖Eω‖ with ‖E‖ at rounding level: far below σ_3 (1e-8 leaves 6 digits).
    assert est["spectral"] < 1e-8 * res.S[-1]
    # k = 6 above the rank: σ_4..σ_6 and the bound are rounding (≈ σ_1·max(m, n)·ε, the
    # numerical-rank tolerance); a bound that small is no reason to flag the result.
    over = svd(A, 6, method="sketch", client=dask_client).report
    tol = over["numerical_rank_tol"]
    assert over["singular_values"][-1] < over["error_estimate"]["spectral"] < 100 * tol
    assert not over["error_estimate"]["exceeds_sigma_k"] and over["notes"] == []


@pytest.mark.parametrize("kw", [{"energy": 0.95}, {"rank": 10}], ids=["energy", "rank"])
def test_randomized_estimate_is_the_smaller_of_probe_bound_and_frobenius(dask_client, kw):
    from sklearn.datasets import load_digits

    # Centred digits (issue 20: the probe bound 3527 exceeded σ_1 = 567 and ‖A‖_F = 1469).
    X = load_digits().data
    res = svd(X, method="randomized", center=True, client=dask_client, **kw)
    rep = res.report
    est = rep["error_estimate"]
    frob = rep["components"][-1]["residual"]  # exact ‖A − U_kS_kV_kᵀ‖_F of these factors
    assert est["spectral"] == min(est["probe_bound"], frob) and est["frobenius"] == frob
    # the probe bound is about 8·‖E‖_F (10·sqrt(2/π)·max‖Eω_j‖): ‖E‖_F wins
    assert est["source"] == "frobenius" and est["probability"] == 1.0
    assert est["spectral"] <= rep["frobenius_norm"] and est["spectral"] <= est["probe_bound"]
    assert _true_spectral_error(res, X - X.mean(axis=0)) <= est["spectral"]
    assert est["warning"] is None and rep["notes"] == []


# -- the exact method knows every σ: energy ranks beyond k


def test_exact_energy_ranks_use_the_whole_spectrum(dask_client):
    A = decaying(300, 64, seed=3, decay=0.95)  # slow decay: 90 % needs far more than 5
    res = svd(A, 5, method="exact", client=dask_client)
    s = np.linalg.svd(A, compute_uv=False)
    cum = np.cumsum(s**2) / np.sum(s**2)
    ranks = {e["fraction"]: e for e in res.report["energy_ranks"]}
    for level, e in ranks.items():
        want = int(np.searchsorted(cum, level)) + 1  # first r with cum ≥ level
        # the levels are not within 1e-10 of a cumulative fraction here (no tie to break)
        assert np.min(np.abs(cum - level)) > 1e-10
        assert e["rank"] == want and e["more_than_k"] == (want > 5)
        assert e["storage_ratio"] == pytest.approx(want * (300 + 64 + 1) / (300 * 64))
    assert ranks[0.9]["rank"] > 5
