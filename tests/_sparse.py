"""Sparse test matrices and the two on-disk encodings svdserve reads (issue 24).

AnnData stores are written by ``anndata`` itself; Binsparse stores are written
with zarr directly, following the Binsparse specification 0.1 (a group whose
``binsparse`` attribute is the descriptor, arrays ``pointers_to_1``,
``indices_1``, ``values``).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import zarr

__all__ = ["sparse_low_rank", "counts", "write_anndata", "write_binsparse", "write_group",
           "STORES"]

#: (encoding, orientation) of every store kind the tests write.
STORES = [("anndata", "csr"), ("anndata", "csc"), ("binsparse", "csr"), ("binsparse", "csc"),
          ("binsparse", "coo")]


def sparse_low_rank(m, n, *, rank=6, density=0.3, noise=1e-9, seed=0):
    """A sparse non-negative matrix of rank ``rank`` plus ``noise`` on its pattern.

    ``P @ Q`` with sparse non-negative factors (density ``density`` each): a
    clear gap after σ_rank, so randomized and sketch results are exact to
    rounding up to ``noise``.
    """
    rng = np.random.default_rng(seed)
    p = sp.random(m, rank, density=density, random_state=rng, format="csr")
    q = sp.random(rank, n, density=density, random_state=rng, format="csr")
    p.data = 1 + 9 * p.data
    q.data = 1 + 9 * q.data
    a = (p @ q).tocsr()
    a.data += noise * rng.standard_normal(a.nnz)
    a.eliminate_zeros()
    return a


def counts(m, n, *, density=0.1, mean=20.0, log=False, seed=0):
    """A counts-like CSR matrix: Poisson(mean)+1 at ``density`` (or its log1p)."""
    rng = np.random.default_rng(seed)
    a = sp.random(m, n, density=density, random_state=rng, format="csr")
    a.data = rng.poisson(mean, a.nnz).astype(np.float64) + 1.0
    if log:
        a.data = np.log1p(a.data)
    return a


def write_anndata(path, x):
    """An AnnData store (written by anndata) with ``X`` CSR and ``layers/csc`` CSC."""
    import anndata as ad

    ad.settings.allow_write_nullable_strings = True
    ad.AnnData(X=sp.csr_matrix(x), layers={"csc": sp.csc_matrix(x)}).write_zarr(str(path))
    return str(path)


def write_binsparse(path, x, fmt="CSR", *, chunk=500, zarr_format=3):
    """A Binsparse 0.1 CSR, CSC or COO (sorted by row) group, written with zarr (uint64
    indices, as the spec's reference writers do)."""
    if fmt == "COO":
        return _write_coo(path, sp.csr_matrix(x).tocoo(), chunk)
    m = sp.csr_matrix(x) if fmt == "CSR" else sp.csc_matrix(x)
    g = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    g.attrs["binsparse"] = {
        "version": "0.1", "format": fmt, "shape": list(m.shape),
        "number_of_stored_values": int(m.nnz),
        "data_types": {"pointers_to_1": "uint64", "indices_1": "uint64", "values": "float64"}}
    for name, arr, c in [("pointers_to_1", m.indptr.astype(np.uint64), max(8, chunk // 8)),
                         ("indices_1", m.indices.astype(np.uint64), chunk),
                         ("values", m.data, chunk)]:
        z = g.create_array(name, shape=arr.shape, dtype=arr.dtype, chunks=(c,))
        z[:] = arr
    return str(path)


def _write_coo(path, m, chunk):
    g = zarr.open_group(str(path), mode="w")
    g.attrs["binsparse"] = {
        "version": "0.1", "format": "COO", "shape": list(m.shape),
        "number_of_stored_values": int(m.nnz),
        "data_types": {"indices_0": "uint64", "indices_1": "uint64", "values": "float64"}}
    for name, arr in [("indices_0", m.row.astype(np.uint64)),
                      ("indices_1", m.col.astype(np.uint64)), ("values", m.data)]:
        z = g.create_array(name, shape=arr.shape, dtype=arr.dtype, chunks=(chunk,))
        z[:] = arr
    return str(path)


def write_group(path, indptr, indices, data, shape, *, encoding="csr_matrix", chunk=100,
                **attrs):
    """An AnnData-encoded group from raw arrays (to write broken ones on purpose)."""
    g = zarr.open_group(str(path), mode="w")
    g.attrs.update({"encoding-type": encoding, "encoding-version": "0.1.0",
                    "shape": list(shape), **attrs})
    for name, arr in [("indptr", indptr), ("indices", indices), ("data", data)]:
        if arr is None:
            continue
        arr = np.asarray(arr)
        z = g.create_array(name, shape=arr.shape, dtype=arr.dtype,
                           chunks=(max(1, min(chunk, arr.size)),))
        z[:] = arr
    return str(path)


def store_for(tmp, x, encoding, orient):
    """Write ``x`` as (encoding, orient); returns ``(url, array)`` for :func:`svd`."""
    if encoding == "anndata":
        url = write_anndata(tmp / "ad.zarr", x)
        return url, ("X" if orient == "csr" else "layers/csc")
    return write_binsparse(tmp / f"bs_{orient}.zarr", x, orient.upper()), None
