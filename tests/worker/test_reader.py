"""Issue 10: the direct chunk reader gives bit-identical panels to zarr's pipeline.

Real Zarr arrays on disk (formats 2 and 3, every encoding the direct reader
takes and some it must hand back to zarr), read panel by panel through the
pin both ways; then whole runs with ``reader="direct"`` and ``"zarr"``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import zarr
from numcodecs import GZip as GZipV2
from numcodecs import Zstd as ZstdV2
from zarr.codecs import BloscCodec, BytesCodec, GzipCodec, ZstdCodec

from svdserve.worker import InvalidInputError, StorageError, pin_source, svd
from svdserve.worker._decode import chunk_decoder
from svdserve.worker._meta import meta_of as _meta_of
from svdserve.worker._read import read_box
from svdserve.worker._source import PanelRefs, read_panel

M, N = 203, 37  # neither a multiple of any chunk shape below: edge chunks everywhere


def _data(dtype, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((M, N)) * np.logspace(-300, 300, N)
    if np.dtype(dtype).kind == "f" and np.dtype(dtype).itemsize == 4:
        a = rng.standard_normal((M, N))
    if np.dtype(dtype).kind in "iu":
        a = rng.integers(-2**40, 2**40, (M, N)) if np.dtype(dtype).kind == "i" \
            else rng.integers(0, 2**60, (M, N))
    a[5, 7] = 0.0 if np.dtype(dtype).kind == "f" else a[5, 7]
    return a.astype(dtype)


# (name, zarr_format, create_array keywords, direct expected)
ENCODINGS = [
    ("v3-zstd", 3, {"compressors": ZstdCodec(level=3)}, True),
    ("v3-zstd-checksum", 3, {"compressors": ZstdCodec(level=1, checksum=True)}, True),
    ("v3-gzip", 3, {"compressors": GzipCodec(level=5)}, True),
    ("v3-blosc", 3, {"compressors": BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")}, True),
    ("v3-raw", 3, {"compressors": None}, True),
    ("v3-big-endian", 3, {"compressors": ZstdCodec(), "serializer": BytesCodec(endian="big")},
     True),
    ("v2-zstd", 2, {"compressors": ZstdV2(level=2)}, True),
    ("v2-gzip", 2, {"compressors": GZipV2(level=1)}, True),
    ("v2-raw", 2, {"compressors": None}, True),
    ("v2-fortran", 2, {"compressors": ZstdV2(), "order": "F"}, False),
    ("v3-sharded", 3, {"compressors": ZstdCodec(), "shards": (80, 20)}, False),
]


def _write(path, a, chunks, zarr_format, kw):
    z = zarr.create_array(str(path), shape=a.shape, dtype=a.dtype, chunks=chunks,
                          zarr_format=zarr_format, overwrite=True, **kw)
    z[...] = a
    return str(path)


def _panels(pin, bounds, wide, direct):
    return [read_panel(ref) for ref in PanelRefs(pin, bounds, wide, False, direct)]


@pytest.mark.parametrize("name, fmt, kw, direct", ENCODINGS, ids=[e[0] for e in ENCODINGS])
@pytest.mark.parametrize("dtype", ["float64", "float32", "int64"])
def test_panels_bit_identical_either_reader(tmp_path, name, fmt, kw, direct, dtype):
    a = _data(dtype)
    path = _write(tmp_path / "A.zarr", a, (40, 10), fmt, kw)
    pin = pin_source(path)
    assert (chunk_decoder(_meta_of(pin.ref)) is not None) is direct
    # Row panels cutting through chunks at their edges, and the wide view's column panels.
    for bounds, wide in (([(0, 40), (40, 120), (120, 200), (200, M)], False),
                         ([(0, 10), (10, 30), (30, N)], True)):
        via_zarr = _panels(pin, bounds, wide, False)
        via_direct = _panels(pin, bounds, wide, direct)
        # float32 stays float32 (issue 28: the cache holds it as stored); the rest is float64.
        kept = np.float32 if dtype == "float32" else np.float64
        bits = np.uint32 if dtype == "float32" else np.uint64
        for x, y, (s, e) in zip(via_zarr, via_direct, bounds):
            want = (a[:, s:e].T if wide else a[s:e]).astype(kept)
            assert y.dtype == kept and x.dtype == kept and y.shape == want.shape
            # Decoding is exact: the same bits, not merely close ones.
            assert np.array_equal(np.asarray(x).view(bits), y.view(bits))
            assert np.array_equal(y.view(bits), want.view(bits))


def test_missing_chunk_reads_fill_value_by_default(tmp_path):
    a = _data("float64")
    path = _write(tmp_path / "A.zarr", a, (40, 37), 3,
                  {"compressors": ZstdCodec(), "fill_value": 2.5})
    os.remove(os.path.join(path, "c", "1", "0"))
    pin = pin_source(path)
    x, y = (_panels(pin, [(0, M)], False, d)[0] for d in (False, True))
    assert np.array_equal(x, y)
    assert np.all(y[40:80] == 2.5) and np.array_equal(y[:40], a[:40])


def test_corrupt_chunk_is_named(tmp_path):
    a = _data("float64")
    path = _write(tmp_path / "A.zarr", a, (40, 37), 3, {"compressors": ZstdCodec()})
    pin = pin_source(path)
    # Same size, so the pinned stamp still matches but the bytes do not decode.
    chunk = os.path.join(path, "c", "2", "0")
    with open(chunk, "r+b") as fh:
        size = os.path.getsize(chunk)
        fh.write(b"\0" * size)
    pin = pin_source(path)  # re-pinned on the corrupt bytes: only decoding can fail
    with pytest.raises(StorageError, match=r"chunk 'c/2/0'.*rows 80:120.*corrupt or truncated"):
        read_box(pin.ref, dict(pin.panel_expect(0, M, False)), slice(0, M), slice(0, N))


@pytest.mark.parametrize("codec, numcodec", [(ZstdCodec(), ZstdV2()), (GzipCodec(), GZipV2()),
                                             (BloscCodec(cname="lz4"), None)],
                         ids=["zstd", "gzip", "blosc"])
def test_chunk_of_the_wrong_size_is_refused_not_half_filled(tmp_path, codec, numcodec):
    """A chunk whose bytes decode to fewer values than the chunk shape (rewritten by
    hand, then pinned as it is) fails by name; the panel is never left half filled."""
    from numcodecs import Blosc

    a = _data("float64")
    path = _write(tmp_path / "A.zarr", a, (40, 37), 3, {"compressors": codec})
    short = np.arange(40 * 37 - 5, dtype="<f8")
    numcodec = numcodec or Blosc(cname="lz4", typesize=8)
    with open(os.path.join(path, "c", "1", "0"), "wb") as fh:
        fh.write(numcodec.encode(short))
    pin = pin_source(path)
    with pytest.raises(StorageError, match=r"chunk 'c/1/0'.*rows 40:80.*11840 expected"):
        read_box(pin.ref, dict(pin.panel_expect(0, M, False)), slice(0, M), slice(0, N))


@pytest.mark.parametrize("method, dtype", [("exact", "float64"), ("randomized", "float64"),
                                           ("randomized", "float32")])
def test_svd_same_bits_with_either_reader(tmp_path, method, dtype, dask_client):
    # finite scales for an SVD (float32: _data's are within float32's range)
    a = _data(dtype)[:, :12].astype(np.float64) @ np.diag(np.logspace(0, -3, 12))
    path = _write(tmp_path / "A.zarr", a.astype(dtype), (40, 12), 3,
                  {"compressors": ZstdCodec()})
    runs = {r: svd(path, 4, method=method, reader=r, client=dask_client,
                        panel_bytes=40 * 12 * 8) for r in ("direct", "zarr")}
    assert runs["direct"].report["plan"]["reader"] == "direct"
    assert runs["zarr"].report["plan"]["reader"] == "zarr"
    if dtype == "float32":  # float32 panels either way, and float32 power passes (issue 28)
        assert runs["direct"].report["precision"]["power"] == "float32"
        assert runs["zarr"].report["precision"]["power"] == "float32"
    for attr in ("U", "S", "Vt"):
        assert np.array_equal(getattr(runs["direct"], attr), getattr(runs["zarr"], attr))


def test_unknown_reader_is_refused(tmp_path):
    path = _write(tmp_path / "A.zarr", _data("float64"), (40, 37), 3, {})
    with pytest.raises(InvalidInputError, match="reader must be one of 'direct', 'zarr'") as e:
        svd(path, 2, reader="fast")
    assert e.value.field == "reader"
