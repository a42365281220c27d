"""The estimators on every input form and backend: the same numbers, lazily where stored.

In-process (``client=None``), on the shared LocalCluster (``dask_client``);
the service backend is in ``tests/client/test_client_estimators.py``. The
matrix is the ``low_rank`` fixture, as NumPy, dask, Zarr path, ``zarr.Array``
and xarray ``DataArray``.
"""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline

from svdserve import PCA, TruncatedSVD

# The exact method is backward stable: two runs on the same matrix with different
# panel plans (one panel in memory, 64-row chunks from Zarr) differ by rounding,
# ~1e2·eps·σ_1 relative to σ_1 = 100 for this κ ≈ 12 spectrum. 1e-10 is ample.
RTOL = 1e-10


def assert_same_fit(a, b, rtol=RTOL):
    for name in ("components_", "singular_values_", "explained_variance_",
                 "explained_variance_ratio_"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=rtol,
                                   atol=rtol * np.abs(getattr(b, name)).max())
    assert a.n_components_ == b.n_components_ and a.n_features_in_ == b.n_features_in_
    assert a.n_samples_ == b.n_samples_
    if hasattr(b, "mean_"):
        np.testing.assert_allclose(a.mean_, b.mean_, rtol=rtol, atol=rtol * 5)
        np.testing.assert_allclose(a.noise_variance_, b.noise_variance_, rtol=1e-8)


def test_numpy_in_process_equals_cluster(low_rank, dask_client):
    here = PCA(5, svd_solver="randomized", random_state=3).fit(low_rank)
    there = PCA(5, svd_solver="randomized", random_state=3, client=dask_client).fit(low_rank)
    # Same seed, same panel plan, same kernels: bit for bit.
    np.testing.assert_array_equal(here.components_, there.components_)
    np.testing.assert_array_equal(here.singular_values_, there.singular_values_)


def test_in_memory_matrix_stays_in_this_process(low_rank, dask_client):
    # dask_client is the default client here: a NumPy X still never goes to it
    # (worker.svd(client=False)), while a dask X does. The task stream lists the
    # tasks the cluster ran while the block was open; panels are read by panel_task
    # (an earlier test's unneeded _pick parts may still be finishing meanwhile).
    import dask.array as da
    from distributed import get_task_stream

    with get_task_stream(client=dask_client) as here:
        PCA(3).fit(low_rank)
    with get_task_stream(client=dask_client) as there:
        PCA(3).fit(da.from_array(low_rank, chunks=(100, 40)))
    def panel_tasks(stream):
        return [t for t in stream.data if str(t["key"]).startswith("panel_task")]

    assert panel_tasks(here) == [] and len(panel_tasks(there)) >= 1


@pytest.mark.parametrize("form", ["path", "zarr.Array", "dask"])
@pytest.mark.parametrize("where", ["here", "cluster"])
def test_stored_and_lazy_inputs_same_numbers(low_rank, low_rank_zarr, dask_client, form,
                                             where):
    import dask.array as da
    import zarr

    X = {"path": low_rank_zarr, "zarr.Array": zarr.open_array(low_rank_zarr, mode="r"),
         "dask": da.from_array(low_rank, chunks=(64, 40))}[form]
    client = dask_client if where == "cluster" else None
    ref = PCA(5).fit(low_rank)
    est = PCA(5, client=client)
    Z = est.fit_transform(X)
    assert_same_fit(est, ref)
    assert est.report_["passes"] == 2  # exact: pass 1 for σ and V, pass 2 for U; no third
    assert isinstance(Z, da.Array)  # lazy, in the input's row chunks
    np.testing.assert_allclose(Z.compute(), ref.transform(low_rank), rtol=1e-9, atol=1e-9)
    T = est.transform(X)
    assert isinstance(T, da.Array)
    np.testing.assert_allclose(T.compute(), ref.transform(low_rank), rtol=1e-9, atol=1e-9)
    assert_same_fit(est.fit(X), ref)
    assert est.report_["passes"] == 1  # fit alone needs no U: σ, V and the mean in one pass


def test_transform_of_a_stored_matrix_is_lazy_and_bounded(low_rank, low_rank_zarr):
    import dask.array as da

    est = PCA(4).fit(low_rank)
    Z = est.transform(low_rank_zarr)
    # Nothing read yet; one task per stored chunk of 64 rows, each (64, 4).
    assert isinstance(Z, da.Array) and Z.shape == (300, 4)
    assert Z.chunks[0] == (64, 64, 64, 64, 44) and Z.chunks[1] == (4,)
    back = est.inverse_transform(Z)
    assert isinstance(back, da.Array) and back.shape == (300, 40)
    np.testing.assert_allclose(back.compute(), est.inverse_transform(est.transform(low_rank)),
                               rtol=1e-12, atol=1e-9)
    with pytest.raises(ValueError, match="X has 40 features, but PCA is expecting 39"):
        PCA(2).fit(low_rank[:, :39]).transform(low_rank_zarr)


def test_truncated_svd_on_a_zarr_path_matches_numpy(low_rank, low_rank_zarr):
    ref = TruncatedSVD(3, algorithm="exact").fit(low_rank)
    est = TruncatedSVD(3, algorithm="exact")
    Z = est.fit_transform(low_rank_zarr)
    assert_same_fit(est, ref)
    np.testing.assert_allclose(Z.compute(), ref.transform(low_rank), rtol=1e-9, atol=1e-9)


def test_xarray_dataarray_by_sample_dims(low_rank):
    xr = pytest.importorskip("xarray")
    # (lat, time, lon): the samples are "time", the features (lat, lon) in C order.
    cube = low_rank.reshape(300, 5, 8).transpose(1, 0, 2)
    arr = xr.DataArray(cube, dims=("lat", "time", "lon"), name="sst")
    est = PCA(4, sample_dims="time").fit(arr)
    assert_same_fit(est, PCA(4).fit(low_rank))
    lazy = PCA(4, sample_dims=["time"]).fit(arr.chunk({"time": 64}))
    assert_same_fit(lazy, est)
    np.testing.assert_allclose(lazy.transform(arr.chunk({"time": 64})).compute(),
                               est.transform(arr), rtol=1e-9, atol=1e-9)


def test_missing_mask_features_nan_everywhere(low_rank):
    X = low_rank.copy()
    X[:, 7] = np.nan  # a feature missing in every sample (land in an ocean field)
    est = PCA(3, missing="mask").fit(X)
    assert est.mask_.sum() == 1 and est.mask_[7]
    kept = np.delete(low_rank, 7, axis=1)
    ref = PCA(3).fit(kept)
    np.testing.assert_allclose(np.delete(est.components_, 7, axis=1), ref.components_,
                               rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(est.transform(X), ref.transform(kept), rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="NaN"):
        PCA(3).fit(X)  # missing="error", the default


def test_pipeline_clone_gridsearch_pickle(low_rank, dask_client):
    rng = np.random.default_rng(0)
    y = (low_rank[:, 0] > np.median(low_rank[:, 0])).astype(int)
    pipe = make_pipeline(PCA(random_state=0), LogisticRegression(max_iter=500))
    grid = GridSearchCV(pipe, param_grid={"pca__n_components": [5, 10]}, cv=3).fit(low_rank, y)
    assert grid.best_params_["pca__n_components"] in (5, 10)
    assert grid.best_estimator_.named_steps["pca"].n_components_ in (5, 10)
    assert grid.score(low_rank, y) > 0.5

    est = PCA(6, client=dask_client, whiten=True)
    twin = clone(est)
    assert twin.get_params() == est.get_params() and twin.client is dask_client  # shared

    fitted = PCA(6, whiten=True).fit(low_rank)
    back = pickle.loads(pickle.dumps(fitted))
    X_new = rng.standard_normal((7, 40))
    np.testing.assert_array_equal(back.transform(X_new), fitted.transform(X_new))
    assert back.score(low_rank) == fitted.score(low_rank)
    on_cluster = pickle.loads(pickle.dumps(PCA(6, client=dask_client).fit(low_rank)))
    assert on_cluster.client is None and on_cluster.n_components_ == 6


def test_bad_client_and_re_exports():
    import svdserve
    import svdserve.estimators

    assert svdserve.PCA is svdserve.estimators.PCA
    assert svdserve.TruncatedSVD is svdserve.estimators.TruncatedSVD
    with pytest.raises(TypeError, match="client must be None.*got 'tcp://x:8786'"):
        PCA(2, client="tcp://x:8786").fit(np.eye(4))


def test_an_unreadable_path_with_n_components_none_names_it(tmp_path):
    # n_components=None and "mle" read the shape here before fitting: the error says so
    absent = str(tmp_path / "absent.zarr")
    for nc in (None, "mle"):
        with pytest.raises(ValueError, match=r"n_components=.* cannot open .*absent\.zarr"
                                             r".* give n_components as an int"):
            PCA(nc).fit(absent)


def test_nd_variable_of_a_stored_dataset_by_sample_dims(low_rank, tmp_path):
    xr = pytest.importorskip("xarray")
    import dask.array as da

    # An xarray-written store: sst(lat, time, lon); the matrix is time × (lat, lon).
    cube = low_rank.reshape(300, 5, 8).transpose(1, 0, 2)
    ds = xr.Dataset({"sst": (("lat", "time", "lon"), cube)})
    path = str(tmp_path / "sst.zarr")
    ds.chunk({"time": 64}).to_zarr(path, zarr_format=3, consolidated=False)
    est = PCA(4, sample_dims="time", array="sst")
    Z = est.fit_transform(path)
    ref = PCA(4).fit(low_rank)
    assert_same_fit(est, ref)
    assert isinstance(Z, da.Array)
    np.testing.assert_allclose(est.transform(path).compute(), ref.transform(low_rank),
                               rtol=1e-9, atol=1e-9)


def test_import_svdserve_stays_light():
    import subprocess
    import sys

    # svdserve.PCA is looked up lazily (test_bad_client_and_re_exports): the bare import
    # pulls in neither scikit-learn nor the numerical core.
    code = ("import sys, svdserve; print([m for m in ('sklearn', 'svdserve.estimators', "
            "'svdserve.worker', 'dask') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


_READS = [0]
_READS_LOCK = threading.Lock()


def _counted(block):
    """A block of X as read (counted): module level, so tasks pickle it by reference; the
    session cluster's workers are threads of this process, so they count here too."""
    with _READS_LOCK:
        _READS[0] += 1
    return block


def test_truncated_svd_of_a_stored_matrix_reads_it_only_for_the_decomposition(low_rank):
    """The total variance behind ``explained_variance_ratio_`` comes from the first
    pass's statistics (‖X‖²_F/m − ‖μ‖²), not from another read of X."""
    import dask.array as da

    X = da.from_array(low_rank, chunks=(64, 40)).map_blocks(_counted, dtype=low_rank.dtype)
    _READS[0] = 0  # map_blocks called it once on an empty block for the array's meta
    est = TruncatedSVD(3, algorithm="exact")
    Z = est.fit_transform(X)
    # every block read belongs to a pass of the decomposition that the report counts
    assert _READS[0] == est.report_["passes"] * X.numblocks[0], (_READS[0], est.report_)
    ref = TruncatedSVD(3, algorithm="exact").fit(low_rank)
    # ‖X‖²_F/m − ‖μ‖² against np.var's two-pass sum: the offsets (|μ| ≤ 5) against a
    # spread of about 10 lose about one digit to cancellation; 1e-12 is ample
    np.testing.assert_allclose(est.explained_variance_ratio_, ref.explained_variance_ratio_,
                               rtol=1e-12)
    np.testing.assert_allclose(np.asarray(Z), ref.transform(low_rank), rtol=1e-9, atol=1e-9)


def test_total_variance_gives_way_to_a_read_where_cancellation_would_cost_digits():
    from svdserve.estimators import total_variance

    report = {"shape": [4, 2], "frobenius_norm": 2.0, "column_mean_norm": 0.5}
    assert total_variance(report) == pytest.approx(4.0 / 4 - 0.25)
    offset = {"shape": [4, 2], "frobenius_norm": 2.0, "column_mean_norm": 1.0 - 1e-12}
    assert total_variance(offset) is None  # 1 − (1 − 1e-12)²: fewer than 8 digits left
    assert total_variance({"shape": [4, 2], "frobenius_norm": 2.0}) is None  # wide, centred
