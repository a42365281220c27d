"""Issue 24 items 1-3: sparse sources (AnnData and Binsparse groups in Zarr) decomposed
from CSR row panels, never densified (except one panel at a time by ``exact``).

Reference results: LAPACK on the densified matrix (``check_svd``),
``scipy.sparse.linalg.svds`` and scikit-learn's ``TruncatedSVD`` and
``PCA(svd_solver="arpack")`` on the sparse matrix in memory.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from svdserve.worker import (InvalidInputError, Limits, NonFiniteError, SourceChangedError,
                             SourceNotFoundError, SparsePin, load_pin, pin_source, svd)

from tests._check import EPS, check_svd
from tests._sparse import (STORES, counts, sparse_low_rank, store_for, write_binsparse,
                           write_group)

#: Panels of a few hundred non-zeros: every store is cut into several panels,
#: which cross the 1-D arrays' chunk boundaries.
BUDGET = 6000
K = 4


@pytest.fixture(scope="module")
def matrices():
    # rank 6 + noise 1e-9 on the pattern: σ₇/σ₄ ~ 1e-10, a clear gap for every method
    return {"tall": sparse_low_rank(300, 40, seed=1), "wide": sparse_low_rank(40, 300, seed=2)}


@pytest.fixture(scope="module")
def stores(matrices, tmp_path_factory):
    out = {}
    for shape, x in matrices.items():
        for encoding, orient in STORES:
            tmp = tmp_path_factory.mktemp(f"{shape}_{encoding}_{orient}")
            out[shape, encoding, orient] = store_for(tmp, x, encoding, orient)
    return out


def _tail(ref, k):
    """‖σ_{k+1:}‖: what a rank-k randomized or sketch answer may miss (Halko et al. 10.8)."""
    return float(np.sqrt(np.sum(ref[k:] ** 2)))


@pytest.mark.parametrize("shape", ["tall", "wide"])
@pytest.mark.parametrize("encoding,orient", STORES)
def test_every_method_matches_lapack(matrices, stores, shape, encoding, orient):
    x = matrices[shape]
    url, array = stores[shape, encoding, orient]
    dense = x.toarray()
    for center in (False, True):
        b = dense - dense.mean(axis=0) if center else dense
        ref = np.linalg.svd(b, compute_uv=False)
        for method in ("exact", "randomized", "sketch"):
            res = svd(url, K, array=array, method=method, center=center, client=False,
                      panel_bytes=BUDGET)
            plan = res.report["plan"]
            assert plan["kind"] == "sparse" and plan["panels"] > 1
            assert plan["densify"] == (method == "exact")
            # exact: LAPACK accuracy (check_svd's bound, 100·√max(m,n)·ε·σ₁); randomized and
            # sketch: within the tail ‖σ_{5:}‖ (≈1e-8 here, the noise) of LAPACK's σ.
            check_svd(res, dense, K, center=center, exact=method == "exact")
            if method != "exact":
                tol = 10 * _tail(ref, K) + 100 * np.sqrt(max(x.shape)) * EPS * ref[0]
                np.testing.assert_allclose(res.S, ref[:K], rtol=0, atol=tol)
                assert abs(np.linalg.norm(b - (res.U * res.S) @ res.Vt) - _tail(ref, K)) <= tol
            want = None if not center else ("pivot" if method == "exact" else "implicit")
            assert (res.report.get("centering") or {}).get("method") == want
        # energy target (randomized: the blocked QB): the rank LAPACK's spectrum gives
        res = svd(url, array=array, energy=0.9, method="randomized", center=center,
                  client=False, panel_bytes=BUDGET, block_size=2)
        frac = np.cumsum(ref ** 2) / np.sum(ref ** 2)
        assert res.S.size == int(np.searchsorted(frac, 0.9)) + 1
        np.testing.assert_allclose(res.S, ref[:res.S.size], rtol=0,
                                   atol=10 * _tail(ref, 6) + 1e-12 * ref[0])


@pytest.mark.parametrize("shape", ["tall", "wide"])
@pytest.mark.parametrize("orient", ["csr", "csc"])
def test_matches_svds_and_scikit_learn(matrices, stores, shape, orient):
    from scipy.sparse.linalg import svds
    from sklearn.decomposition import PCA, TruncatedSVD

    x = matrices[shape]
    url, array = stores[shape, "anndata", orient]
    res = svd(url, K, array=array, method="randomized", client=False, panel_bytes=BUDGET)
    pca = svd(url, K, array=array, method="randomized", center=True, client=False,
              panel_bytes=BUDGET)
    s_ref = np.sort(svds(x, k=K, random_state=0, tol=1e-14)[1])[::-1]
    tsvd = TruncatedSVD(K, algorithm="arpack", tol=1e-14).fit(x)
    ref_pca = PCA(K, svd_solver="arpack", tol=1e-14, random_state=0).fit(x)
    # ARPACK converges to tol=1e-14 relative; the gap σ₄/σ₇ ~ 1e10 makes the vectors as
    # accurate as the values, so 1e-9 relative leaves room for both solvers.
    for s in (s_ref, tsvd.singular_values_):
        np.testing.assert_allclose(res.S, s, rtol=1e-9)
    np.testing.assert_allclose(np.abs(res.Vt @ tsvd.components_.T), np.eye(K), atol=1e-9)
    np.testing.assert_allclose(pca.S, ref_pca.singular_values_, rtol=1e-9)
    np.testing.assert_allclose(np.abs(pca.Vt @ ref_pca.components_.T), np.eye(K), atol=1e-9)
    np.testing.assert_allclose(pca.mean, ref_pca.mean_, rtol=0,
                               atol=100 * EPS * abs(x).max())
    var = pca.report["components"][0]["sigma"] ** 2 / (x.shape[0] - 1)
    np.testing.assert_allclose(var, ref_pca.explained_variance_[0], rtol=1e-9)


@pytest.mark.parametrize("log", [False, True], ids=["counts", "log1p counts"])
@pytest.mark.parametrize("orient", ["csr", "csc"])
def test_implicit_centring_at_counts_offsets(tmp_path, log, orient):
    """Implicit centring (A − 1μᵀ)G = AG − 1(μᵀG) at the offsets of counts (column means
    ~2, spread ~6) and log-counts (means ~0.3, spread ~1): as accurate as the pivot shift.

    With l = k + p = n the randomized range is all of A's column space, so the result
    is exact to rounding and any loss is the centring's.
    """
    x = counts(2000, 30, density=0.1, log=log, seed=3)
    url = write_binsparse(tmp_path / "c.zarr", x, orient.upper())
    dense = x.toarray()
    b = dense - dense.mean(axis=0)
    ref = np.linalg.svd(b, compute_uv=False)
    res = svd(url, 10, method="randomized", n_oversamples=20, center=True, client=False,
              panel_bytes=20_000)
    shifted = svd(dense, 10, method="randomized", n_oversamples=20, center=True,
                  client=False)
    cen = res.report["centering"]
    assert cen["method"] == "implicit"
    d_max = float((x != 0).mean(axis=0).max())
    amp = float(np.linalg.norm(dense) / np.linalg.norm(b))
    np.testing.assert_allclose(cen["amplification"], amp, rtol=1e-12)
    assert amp <= 1 / np.sqrt(1 - d_max)  # the a-priori bound of _sparse_kernels
    # check_svd's LAPACK bound (100·√m·ε·σ₁), widened by the amplification ‖A‖/‖A − 1μᵀ‖
    tol = amp * 100 * np.sqrt(2000) * EPS * ref[0]
    for r in (res, shifted):
        np.testing.assert_allclose(r.S, ref[:10], rtol=0, atol=tol)
    check_svd(res, dense, 10, center=True, exact=False)


def test_energy_report_holds_for_sparse_input(matrices, stores):
    x = matrices["tall"]
    url, array = stores["tall", "binsparse", "csr"]
    dense = x.toarray()
    for center in (False, True):
        b = dense - dense.mean(axis=0) if center else dense
        ref = np.linalg.svd(b, compute_uv=False)
        rep = svd(url, K, array=array, method="randomized", center=center, client=False,
                  panel_bytes=BUDGET).report
        # ‖A‖_F from pass 1 (sums of positive terms): a few ε relative
        np.testing.assert_allclose(rep["frobenius_norm"], np.linalg.norm(b), rtol=1e-13)
        total = np.sum(ref ** 2)
        for c in rep["components"]:
            r = c["rank"]
            np.testing.assert_allclose(c["energy_fraction"], ref[r - 1] ** 2 / total,
                                       rtol=1e-9)
            # exact residuals: ‖A − U_r S_r V_rᵀ‖_F = ‖σ_{r+1:}‖ up to the 1e-9 noise tail
            np.testing.assert_allclose(c["residual"], _tail(ref, r), rtol=1e-6,
                                       atol=10 * _tail(ref, 6))
        assert rep["error_estimate"]["spectral"] >= ref[K] * (1 - 1e-9)


def test_panels_are_sized_by_non_zeros_and_cached_sparse(tmp_path):
    import svdserve.worker._cache as cache
    from svdserve.worker._sparse_source import SparsePanel
    from svdserve.worker._tasks import panel_task

    # rows 0..99 hold 50 non-zeros each, rows 100..999 one each: the panels of the dense rows
    # are short, the rest long; each holds at most the budget (16·nnz + 8·rows bytes).
    rows = np.r_[np.full(100, 50), np.ones(900, dtype=int)]
    indptr = np.r_[0, np.cumsum(rows)]
    indices = np.concatenate([np.arange(r) for r in rows])
    x = sp.csr_matrix((np.ones(indptr[-1]), indices, indptr), shape=(1000, 60))
    url = write_binsparse(tmp_path / "s.zarr", x)
    pin = pin_source(url)
    layout = pin.layout(8000)
    bounds, q = layout.bounds(), layout.tall_chunks[0]
    assert bounds[0][0] == 0 and bounds[-1][1] == 1000
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    assert all(s % q == 0 for s, _ in bounds)  # on the row grid of U's chunks
    for s, e in bounds:
        assert 16 * (indptr[e] - indptr[s]) + 8 * (e - s) <= 8000 or e - s <= q
    assert bounds[0][1] - bounds[0][0] < bounds[-1][1] - bounds[-1][0]
    panel = SparsePanel(*bounds[1], pin)
    out = panel_task(lambda block: type(block), panel, None, ("tok", 0.4), None)
    try:
        assert out[0] is sp.csr_matrix
        assert isinstance(cache.lookup(("tok", *bounds[1])), sp.csr_matrix)
    finally:
        cache.release("tok")
    # exact densifies after the cache: the panel's dense bytes count in the budget
    dense_layout = pin.layout(8000, densify=True)
    q = dense_layout.tall_chunks[0]
    assert all((e - s) * 60 * 8 <= 8000 or e - s <= q for s, e in dense_layout.bounds())


def test_pin_round_trips_and_detects_a_change(stores, tmp_path):
    x = sparse_low_rank(200, 30, seed=5)
    url = write_binsparse(tmp_path / "p.zarr", x)
    pin = pin_source(url)
    assert isinstance(pin, SparsePin) and pin.nnz == x.nnz
    again = load_pin(pin.to_json())
    res = svd(again, K, method="randomized", client=False, panel_bytes=BUDGET)
    np.testing.assert_allclose(res.S, np.linalg.svd(x.toarray(), compute_uv=False)[:K],
                               rtol=1e-9)
    import zarr

    z = zarr.open_array(str(tmp_path / "p.zarr" / "values"), mode="r+")
    z[:10] = 7.0
    with pytest.raises(SourceChangedError, match="changed since the job was submitted"):
        svd(again, K, client=False)


def _broken(tmp_path, what):
    """A small CSR group (4 × 5) broken in one way."""
    indptr, indices, data = np.array([0, 2, 3, 5, 6]), np.array([0, 3, 1, 2, 4, 0]), \
        np.arange(1.0, 7.0)
    shape = (4, 5)
    if what == "index out of range":
        indices = indices.copy()
        indices[4] = 5
    elif what == "indptr decreasing":
        indptr = np.array([0, 3, 2, 5, 6])
    elif what == "NaN value":
        data = data.copy()
        data[3] = np.nan
    elif what == "missing indices":
        indices = None
    elif what == "float indices":
        indices = indices.astype(np.float64)
    elif what == "bad shape":
        shape = (4,)
    elif what == "indptr too short":
        indptr = indptr[:-1]
    return write_group(tmp_path / "bad.zarr", indptr, indices, data, shape, chunk=2)


BAD = [
    # what, error raised (at pin, from metadata, or by the panel), words the message holds
    ("index out of range", InvalidInputError, "indices hold 5 in rows 2:4"),
    ("indptr decreasing", InvalidInputError, "indptr is not monotone"),
    ("NaN value", NonFiniteError, "NaN or Inf"),
    ("missing indices", SourceNotFoundError, "has no 'indices' array"),
    ("float indices", InvalidInputError, "must hold integers"),
    ("bad shape", InvalidInputError, "expected [rows, columns]"),
    ("indptr too short", InvalidInputError, "needs 5"),
]


@pytest.mark.parametrize("what,error,words", BAD, ids=[b[0] for b in BAD])
def test_bad_sparse_stores_fail_with_typed_errors(tmp_path, what, error, words):
    url = _broken(tmp_path, what)
    with pytest.raises(error) as info:
        svd(url, 2, method="randomized", client=False, panel_bytes=100)
    assert words in str(info.value)
    if isinstance(info.value, NonFiniteError):
        assert info.value.rows == (2, 4)
    elif error is SourceNotFoundError:
        assert info.value.field == "source.array"
    else:
        assert info.value.field == "source"


def test_nnz_limit_and_missing_mask_are_refused(tmp_path):
    url = write_binsparse(tmp_path / "n.zarr", sparse_low_rank(50, 20, seed=0))
    with pytest.raises(InvalidInputError, match="at most 10 are accepted") as info:
        pin_source(url, limits=Limits(max_nnz=10))
    assert info.value.field == "source"
    with pytest.raises(InvalidInputError, match="missing='mask'") as info:
        svd(url, 2, missing="mask", client=False)
    assert info.value.field == "missing"


# --------------------------------------------------------------------------- bounded memory

def test_sparse_run_in_bounded_memory(tight_client, tmp_path):
    """A sparse matrix larger than a worker's memory limit once decoded (23M non-zeros:
    270 MB as float64 values and int32 indices; dense it would be 1.6 GB), PCA by the
    randomized method on two workers of 240 MiB: every worker's peak RSS stays under
    the limit, no worker paused or lost, each panel within the 8 MiB budget. The panel
    cache is off: what a worker holds is one panel, O(n·l) and its rows of the basis.

    A is 100 copies of a 1000 × 2000 block B (rank 3 plus noise), stacked, so
    σ(A − 1μᵀ) = √100·σ(B − 1μᵀ) (μ is the same for both), known from LAPACK on B.
    """
    from tests.worker.test_layouts import LIMIT, _healthy, _peak_rss

    b = sparse_low_rank(1000, 2000, rank=3, density=0.2, noise=1.0, seed=0)
    reps = 100
    indptr = np.r_[(b.indptr[:-1][None, :] + b.nnz * np.arange(reps)[:, None]).ravel(),
                   b.nnz * reps]
    url = write_group(tmp_path / "big.zarr", indptr, np.tile(b.indices.astype(np.int32), reps),
                      np.tile(b.data, reps), (1000 * reps, 2000), chunk=2**18)
    assert 12 * b.nnz * reps > LIMIT  # decoded values and indices do not fit one worker
    tight_client.run(_peak_rss, True)
    res = svd(url, 3, method="randomized", center=True, n_iter=0, client=tight_client,
              panel_bytes=8 * 2**20, panel_cache=0)
    plan = res.report["plan"]
    assert plan["kind"] == "sparse" and not plan["densify"] and plan["panels"] > 20
    assert plan["peak_bytes_per_worker"] <= 8 * 2**20
    _healthy(tight_client)
    assert not res.events
    d = b.toarray()
    ref = np.linalg.svd(d - d.mean(axis=0), compute_uv=False) * np.sqrt(reps)
    # one pass (q = 0), l = 13, a gap σ₃/σ₄ ≈ 200 over a flat noise tail: the relative σ
    # error is of order (σ₄/σ₃)² (Gu 2015, Thm. 5.7), 2.3e-5 here; 100× that for the
    # Gaussian factors of the bound.
    np.testing.assert_allclose(res.S, ref[:3], rtol=100 * (ref[3] / ref[2]) ** 2)


def test_result_written_by_a_cluster_is_the_in_process_one(dask_client, stores, tmp_path):
    """Panels of uneven rows write U in chunks of the layout's row grid, none shared by two
    panels: the stored factors are bit for bit those of the in-process run."""
    import zarr

    url, array = stores["tall", "anndata", "csr"]
    kw = dict(array=array, method="randomized", center=True, panel_bytes=BUDGET)
    here = svd(url, K, client=False, **kw)
    there = svd(url, K, client=dask_client, out=str(tmp_path / "r.zarr"), **kw)
    g = zarr.open_group(str(tmp_path / "r.zarr"), mode="r")
    assert g["U"].chunks[0] == there.report["plan"]["tall_chunks"][0]
    for a, b in [(here.U, g["U"][...]), (here.S, there.S), (here.Vt, g["Vt"][...])]:
        assert np.array_equal(a, b)


def test_coo_must_be_sorted_by_row_and_in_range(tmp_path):
    import zarr

    x = sparse_low_rank(60, 20, seed=4)
    url = write_binsparse(tmp_path / "coo.zarr", x, "COO", chunk=64)
    rows = zarr.open_array(str(tmp_path / "coo.zarr" / "indices_0"), mode="r+")
    r = rows[...]
    rows[:] = r[::-1].copy()  # descending: not sorted by row
    with pytest.raises(InvalidInputError, match="not sorted by row") as info:
        svd(url, 2, client=False)
    assert info.value.field == "source"
    r[-1] = 60  # a row index outside [0, 60)
    rows[:] = r
    with pytest.raises(InvalidInputError, match="indices_0 hold 60 in entries"):
        svd(url, 2, client=False)


def test_spec_fits_the_stored_orientation(tmp_path):
    """CSR with 3000 columns: its panels are rows of A with n_t = 3000 > EXACT_MAX_COLUMNS,
    so auto resolves to randomized and exact is refused; a CSC group's tall factor is V,
    formed even with compute_u=False."""
    x = sparse_low_rank(40, 3000, density=0.05, seed=8)
    url = write_binsparse(tmp_path / "w.zarr", x)
    res = svd(url, 3, client=False)
    assert res.method == "randomized"
    np.testing.assert_allclose(res.S, np.linalg.svd(x.toarray(), compute_uv=False)[:3],
                               rtol=1e-9)  # rank-6 input + 1e-9 noise, l = 13: exact range
    with pytest.raises(InvalidInputError, match="3000 × 3000 triangle") as info:
        svd(url, 3, method="exact", client=False)
    assert info.value.field == "method"
    csc = write_binsparse(tmp_path / "c.zarr", sparse_low_rank(300, 30, seed=9), "CSC")
    res = svd(csc, 3, compute_u=False, method="randomized", client=False)
    assert res.Vt.shape == (3, 30)
