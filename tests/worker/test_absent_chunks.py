"""Issue 20, item 1 in the core: a chunk absent from the store *is* the fill value.

zarr-python 3 does not write a chunk whose values all equal the fill value
(``write_empty_chunks=False``), and dask and xarray write through it, so an
all-zero block leaves no chunk files. These arrays are written exactly so,
with each library's defaults, and decomposed with every method and through
every read route; the absent chunks are counted in ``report["input"]`` and
``report["notes"]``. ``missing_chunks="error"`` keeps the strict check, and a
chunk that appears or vanishes after pinning is still a ``SourceChangedError``.

Tolerances: the matrices have full column rank and the randomized and sketch
methods use a range basis of all n columns there (``n_oversamples`` and the
sketch sizes are clipped to n), so every method is exact up to rounding and
:func:`tests._check.check_svd` holds it to LAPACK accuracy (100·√max(m, n)·ε·σ₁).
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import zarr
from zarr.codecs import ZstdCodec

from svdserve.worker import InvalidInputError, SourceChangedError, pin_source, svd

from tests._check import check_svd

NOTE = "chunks absent, read as fill value"


def zero_block(m=120, n=12, rows=(30, 60), seed=0):
    """A full-rank matrix whose rows ``rows`` are all zero (whole chunks of 10 rows)."""
    a = np.random.default_rng(seed).standard_normal((m, n)) @ np.diag(0.8 ** np.arange(n))
    a[slice(*rows)] = 0.0
    return a


def write_zarr(path, a, chunks, **kw):
    """``zarr.create_array`` with zarr's defaults (``write_empty_chunks=False``)."""
    z = zarr.create_array(str(path), shape=a.shape, dtype="f8", chunks=chunks, **kw)
    z[...] = a
    return str(path)


def write_dask(path, a, chunks):
    """``dask.array.to_zarr`` with its defaults."""
    import dask.array as da

    da.from_array(a, chunks=chunks).to_zarr(str(path))
    return str(path)


def absent(path):
    return sorted(set(map(str, range(12))) - set(os.listdir(os.path.join(path, "c"))))


@pytest.mark.parametrize("writer", [write_zarr, write_dask], ids=["zarr", "dask"])
@pytest.mark.parametrize("method", ["exact", "randomized", "sketch"])
def test_absent_chunks_are_the_fill_value_for_every_method(tmp_path, dask_client, writer,
                                                           method):
    a = zero_block()
    path = writer(tmp_path / "A.zarr", a, (10, 12))
    assert absent(path) == ["3", "4", "5"]  # the library left the zero chunks out
    res = svd(path, 3, method=method, client=dask_client, panel_bytes=20 * 12 * 8)
    check_svd(res, a, 3)
    note = ("3 of 12 chunks absent, read as fill value 0.0 (Zarr does not store chunks "
            "equal to the fill value)")
    assert res.report["input"] == {"n_chunks": 12, "absent_chunks": 3, "fill_value": 0.0,
                                   "missing_chunks": "fill", "note": note}
    assert note in res.report["notes"]


def test_nothing_absent_says_so(tmp_path):
    a = zero_block(rows=(0, 0))
    res = svd(write_zarr(tmp_path / "A.zarr", a, (10, 12)), 2, method="exact")
    assert res.report["input"]["absent_chunks"] == 0 and res.report["input"]["note"] is None
    assert not any(NOTE in n for n in res.report.get("notes", []))


@pytest.mark.parametrize("reader", ["direct", "zarr"])
def test_absent_chunks_through_both_decoders_and_their_fill_value(tmp_path, reader):
    """The direct decoder and zarr's pipeline both read the array's own fill value."""
    a = zero_block() + 2.5 * (np.arange(120) >= 30)[:, None] * (np.arange(120) < 60)[:, None]
    path = write_zarr(tmp_path / "A.zarr", a, (10, 12), fill_value=2.5,
                      compressors=ZstdCodec())
    assert absent(path) == ["3", "4", "5"]
    res = svd(path, 3, method="exact", reader=reader, panel_bytes=20 * 12 * 8)
    assert res.report["plan"]["reader"] == reader
    check_svd(res, a, 3)
    assert res.report["input"]["fill_value"] == 2.5


@pytest.mark.parametrize("raw", [True, False], ids=["slices", "rechunk"])
def test_absent_chunks_through_slices_and_the_rechunk_copy(tmp_path, raw):
    """A wide matrix in row chunks whose band exceeds a panel: raw chunks are read
    by byte range, compressed ones copied once to a scratch array first."""
    m, n = 100, 21_000  # the band (n rows of the tall view x m) passes the 16 MiB floor
    a = np.random.default_rng(1).standard_normal((m, n))
    a[20:40] = 0.0
    kw = {"compressors": None} if raw else {"compressors": ZstdCodec()}
    path = write_zarr(tmp_path / "W.zarr", a, (10, n), **kw)
    assert not os.path.exists(os.path.join(path, "c", "2")), "zarr wrote the zero chunk"
    res = svd(path, 3, method="exact", compute_u=False, panel_bytes=2**20,
              scratch=str(tmp_path / "scratch"))
    assert res.report["plan"]["kind"] == ("slices" if raw else "rechunk")
    ref = np.linalg.svd(a, compute_uv=False)
    # Exact TSQR: σ to 100·√max(m, n)·ε·σ₁ (see tests/_check.py).
    assert np.abs(res.S - ref[:3]).max() <= 100 * np.sqrt(n) * np.finfo(float).eps * ref[0]
    assert res.report["input"]["absent_chunks"] == 2


def test_strict_mode_refuses_absent_chunks_with_todays_message(tmp_path):
    path = write_zarr(tmp_path / "A.zarr", zero_block(), (10, 12))
    with pytest.raises(InvalidInputError, match=r"chunk 'c/3/0' of .* \(rows 30:40, columns "
                                                r"0:12\) is missing from the store \(3 chunks "
                                                r"are missing in all\); an incomplete upload"):
        svd(path, 2, missing_chunks="error")
    with pytest.raises(InvalidInputError, match="missing_chunks must be 'fill' or 'error'; "
                                                "got 'skip'") as info:
        svd(path, 2, missing_chunks="skip")
    assert info.value.field == "missing_chunks"
    # A pin made strict stays strict.
    with pytest.raises(InvalidInputError, match="is missing from the store"):
        svd(pin_source(path, missing_chunks="error"), 2)


def test_allow_missing_chunks_is_deprecated_but_works(tmp_path):
    a = zero_block()
    path = write_zarr(tmp_path / "A.zarr", a, (10, 12))
    with pytest.warns(DeprecationWarning, match="allow_missing_chunks is deprecated") as rec:
        res = svd(path, 3, method="exact", allow_missing_chunks=True)
    assert rec[0].filename == __file__  # points at the caller
    check_svd(res, a, 3)
    with pytest.warns(DeprecationWarning), pytest.raises(InvalidInputError, match="missing"):
        svd(path, 3, allow_missing_chunks=False)
    with pytest.warns(DeprecationWarning), pytest.raises(InvalidInputError, match="contradicts"):
        pin_source(path, missing_chunks="error", allow_missing_chunks=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        svd(path, 3, method="exact")  # the new default warns about nothing


@pytest.mark.parametrize("reader", ["direct", "zarr"])
def test_absent_chunk_that_appears_mid_run_is_source_changed(tmp_path, reader):
    """An absent chunk is the fill value only as pinned: written during the run, it
    fails the job rather than mixing two versions of the array."""
    a = zero_block()
    path = write_zarr(tmp_path / "A.zarr", a, (10, 12), compressors=ZstdCodec())
    late = np.ones((10, 12))

    def progress(done, total, phase):
        if done == 1 and phase.pass_no == 1:
            zarr.open_array(path, mode="r+")[40:50] = late

    with pytest.raises(SourceChangedError, match=r"chunk 'c/4/0' \(rows 40:50.*appeared"):
        svd(path, 3, method="exact", reader=reader, panel_bytes=10 * 12 * 8,
            progress=progress)


def test_xarray_land_chunks_absent_are_masked(tmp_path):
    """xarray writes NaN as the fill value: a chunk all land (NaN) is left out and
    reads as NaN, which missing="mask" drops as a feature missing everywhere."""
    xr = pytest.importorskip("xarray")
    a = zero_block(rows=(0, 0))
    field = a.copy()
    field[:, 4:8] = np.nan  # land: one whole column chunk
    xr.Dataset({"sst": (("time", "space"), field)}).to_zarr(
        str(tmp_path / "f.zarr"), mode="w", encoding={"sst": {"chunks": (120, 4)}},
        consolidated=False)
    assert sorted(os.listdir(tmp_path / "f.zarr" / "sst" / "c" / "0")) == ["0", "2"]
    res = svd(str(tmp_path / "f.zarr"), 3, array="sst", method="exact", missing="mask")
    kept = a.copy()
    kept[:, 4:8] = 0.0
    check_svd(res, kept, 3)
    assert res.report["input"]["fill_value"] == "NaN"
    assert res.report["input"]["absent_chunks"] == 1
    assert res.mask.tolist() == [False] * 4 + [True] * 4 + [False] * 4


# ---------------------------------------------------------------- item 17: sample_dims default
def test_named_2d_variable_defaults_sample_dims_to_its_first_dimension(tmp_path):
    xr = pytest.importorskip("xarray")
    a = zero_block(rows=(0, 0))
    xr.Dataset({"x": (("time", "station"), a)},
               coords={"time": np.arange(120), "station": np.arange(12) * 10}).to_zarr(
        str(tmp_path / "s.zarr"), mode="w", consolidated=False)
    pin = pin_source(str(tmp_path / "s.zarr"), "x")
    assert pin.info.sample_dims == ("time",)
    res = svd(pin, 3, method="exact")
    check_svd(res, a, 3)
    # The result maps back to the variable's dimensions without sample_dims being given.
    from svdserve.client import StoredResult

    out = str(tmp_path / "res.zarr")
    svd(str(tmp_path / "s.zarr"), 3, array="x", method="exact", out=out)
    ds = StoredResult.open(out).to_xarray()
    assert ds["components"].dims == ("mode", "station") and ds["scores"].dims == ("time", "mode")
    np.testing.assert_array_equal(ds["components"].values, res.Vt)
    assert res.labels["sample_dims"] == ["time"] and res.labels["feature_dims"] == ["station"]
    assert np.array_equal(res.labels["coords"]["station"][0], np.arange(12) * 10)
    note = "sample_dims not given: using the first dimension 'time' of ['time', 'station']"
    assert any(n.startswith(note) for n in res.report["notes"]), res.report["notes"]
    # Read as fast as a plain matrix: the identity view keeps the direct decoder.
    assert res.report["plan"]["reader"] == "direct"
    # An array without dimension names is a plain matrix, as before.
    plain = svd(write_zarr(tmp_path / "p.zarr", a, (10, 12)), 3, method="exact")
    assert plain.labels is None
