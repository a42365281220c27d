"""Sparse matrices the client uploads without densifying: scipy.sparse, ``.npz``, ``.h5ad``.

:class:`SparseRows` is a CSR matrix read one block of rows at a time: a
``scipy.sparse`` matrix or array in memory (CSR as it is; CSC and COO
converted to CSR once), a ``scipy.sparse.save_npz`` file (loaded, as NumPy
loads an archive), or the ``.X`` (or a layer) of an ``.h5ad`` file, read
by h5py slice by slice from AnnData's on-disk CSR encoding (only ``indptr``,
8 bytes a row, is held whole; a CSC matrix in an ``.h5ad`` file is read
whole and converted, as the rows of a CSC matrix are spread over the file).

:func:`write_sparse_zarr` writes one as AnnData's CSR encoding in Zarr (what
``anndata.io.write_elem`` writes for a ``csr_matrix``); over HTTP the same
group is written by the service (:mod:`svdserve.client._upload`).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ._errors import InputFileError

__all__ = ["SparseRows", "is_sparse", "as_sparse_rows", "read_npz_sparse", "read_h5ad",
           "write_sparse_zarr", "write_sparse", "ENCODING", "CHUNK_VALUES"]

#: AnnData's encoding of a CSR matrix in a Zarr/HDF5 group.
ENCODING = {"encoding-type": "csr_matrix", "encoding-version": "0.1.0"}
#: Values per Zarr chunk of ``data`` and ``indices`` (8 MiB of float64).
CHUNK_VALUES = 2**20


def is_sparse(x: Any) -> bool:
    """True for a ``scipy.sparse`` matrix or array and for :class:`SparseRows`."""
    if isinstance(x, SparseRows):
        return True
    try:
        import scipy.sparse as sp
    except ImportError:  # pragma: no cover - scipy is a dependency
        return False
    return sp.issparse(x)


class SparseRows:
    """A CSR matrix of shape (m, n), read in blocks of rows.

    Parameters
    ----------
    indptr : ndarray of shape (m + 1,)
        Row pointers (read whole: 8 bytes a row).
    indices, data : array-likes of shape (nnz,)
        Sliced per block (NumPy arrays or h5py datasets).
    shape : (int, int)
    close : callable or None
        Called by :meth:`close` (an open HDF5 file).
    """

    def __init__(self, indptr, indices, data, shape: tuple[int, int], *, close=None):
        self.indptr = np.asarray(indptr, dtype=np.int64)
        self.indices, self.data = indices, data
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(data.dtype)
        self.index_dtype = np.dtype("int32" if self.shape[1] <= np.iinfo(np.int32).max
                                    and np.dtype(indices.dtype).itemsize <= 4 else "int64")
        self.nnz = int(self.indptr[-1])
        self._close = close

    def rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(indptr from 0, indices, data)`` of rows ``start:stop``."""
        lo, hi = int(self.indptr[start]), int(self.indptr[stop])
        return (self.indptr[start:stop + 1] - lo,
                np.asarray(self.indices[lo:hi], dtype=self.index_dtype),
                np.asarray(self.data[lo:hi]))

    def block_nnz(self, block_rows: int) -> list[int]:
        """Non-zeros of each block of ``block_rows`` rows."""
        edges = np.minimum(np.arange(0, self.shape[0] + block_rows, block_rows), self.shape[0])
        edges = np.unique(edges)
        return [int(v) for v in np.diff(self.indptr[edges])]

    def close(self) -> None:
        if self._close is not None:
            self._close()

    def __repr__(self) -> str:
        return (f"SparseRows(shape={self.shape}, nnz={self.nnz}, dtype={self.dtype}, "
                f"index_dtype={self.index_dtype})")


def as_sparse_rows(x: Any) -> SparseRows:
    """A ``scipy.sparse`` matrix/array (CSR, CSC, COO, ...) as :class:`SparseRows`.

    Raises
    ------
    ValueError
        Not 2-D, empty, or of a dtype other than real numbers.
    """
    if isinstance(x, SparseRows):
        return x
    csr = x.tocsr()
    if csr.ndim != 2 or min(csr.shape) < 1:
        raise ValueError(f"expected a non-empty 2-D sparse matrix, got shape {csr.shape}")
    if csr.dtype.kind not in "iufb":
        raise ValueError(f"expected real numbers (float, integer or bool), got dtype "
                         f"{csr.dtype}")
    return SparseRows(csr.indptr, csr.indices, csr.data, csr.shape)


def read_npz_sparse(path: str) -> SparseRows | None:
    """The matrix of a ``scipy.sparse.save_npz`` file, or None when it is a plain NumPy archive."""
    import scipy.sparse as sp

    with np.load(path, allow_pickle=False) as archive:
        if "format" not in archive.files:
            return None
    try:
        return as_sparse_rows(sp.load_npz(path))
    except (ValueError, KeyError) as exc:
        raise InputFileError(f"{path!r} looks like a scipy.sparse .npz file but cannot be "
                             f"read as one: {exc}") from exc


def read_h5ad(path: str, layer: str | None = None):
    """``.X`` (or ``layers/<layer>``) of an ``.h5ad`` file: :class:`SparseRows`, or a dask
    array for a dense matrix; read by h5py slice by slice.

    Raises
    ------
    InputFileError
        No such file, layer or matrix, or an encoding other than a dense array
        or ``csr_matrix``/``csc_matrix``.
    """
    import h5py

    if not os.path.exists(path):
        raise InputFileError(f"no such .h5ad file: {path!r}")
    f = h5py.File(path, "r")
    key = "X" if layer is None else f"layers/{layer}"
    try:
        if key not in f:
            layers = sorted(f["layers"]) if "layers" in f else []
            raise InputFileError(f"{path!r} has no {key!r}; its layers: {layers!r} "
                                 "(--layer NAME picks one)")
        return _h5ad_matrix(f, f[key], path, key)
    except BaseException:
        f.close()
        raise


def _h5ad_matrix(f, node, path: str, key: str):
    import h5py

    if isinstance(node, h5py.Dataset):
        import dask.array as da

        if node.ndim != 2:
            raise InputFileError(f"{path!r}[{key!r}] has shape {node.shape}; expected 2-D")
        return da.from_array(node, chunks=(max(1, 2**24 // max(1, node.shape[1] * 8)), -1))
    kind = node.attrs.get("encoding-type")
    shape = tuple(int(v) for v in node.attrs.get("shape", ()))
    if kind not in ("csr_matrix", "csc_matrix") or len(shape) != 2:
        raise InputFileError(f"{path!r}[{key!r}] has encoding-type {kind!r}; expected a dense "
                             "array, 'csr_matrix' or 'csc_matrix'")
    if kind == "csc_matrix":  # columns are contiguous on disk: read whole, convert once
        import scipy.sparse as sp

        csc = sp.csc_matrix((node["data"][:], node["indices"][:], node["indptr"][:]), shape)
        f.close()
        return as_sparse_rows(csc)
    return SparseRows(node["indptr"][:], node["indices"], node["data"], shape, close=f.close)


def write_sparse_zarr(rows: SparseRows, url: str, *, array: str | None = None,
                      storage_options: dict[str, Any] | None = None,
                      block_rows: int | None = None, overwrite: bool = False) -> str:
    """Write ``rows`` as AnnData's CSR encoding: a Zarr v3 group ``data``/``indices``/``indptr``.

    Parameters
    ----------
    rows : SparseRows
    url : str
        A local path or ``s3://`` URL.
    array : str or None
        Write the group inside the group at ``url`` under this name.
    block_rows : int or None
        Rows written at a time (default: about 16 MiB of values).

    Returns
    -------
    str
        ``url`` (submit with ``array=`` when given).
    """
    import zarr

    m, _ = rows.shape
    store = url if not storage_options else zarr.storage.FsspecStore.from_url(
        url, storage_options=storage_options)
    root = zarr.open_group(store, mode="a" if array else ("w" if overwrite else "w-"),
                           zarr_format=3)
    group = root.create_group(array, overwrite=overwrite) if array else root
    chunk = max(1, min(rows.nnz, CHUNK_VALUES))
    data = group.create_array("data", shape=(rows.nnz,), chunks=(chunk,), dtype=rows.dtype)
    indices = group.create_array("indices", shape=(rows.nnz,), chunks=(chunk,),
                                 dtype=rows.index_dtype)
    group.create_array("indptr", shape=(m + 1,), chunks=(max(1, min(m + 1, 2**20)),),
                       dtype="int64")[:] = rows.indptr
    per_row = max(1.0, rows.nnz / m) * (rows.dtype.itemsize + rows.index_dtype.itemsize)
    step = block_rows or max(1, int(2**24 // per_row))
    for start in range(0, m, step):
        stop = min(m, start + step)
        lo, hi = int(rows.indptr[start]), int(rows.indptr[stop])
        _, idx, val = rows.rows(start, stop)
        if hi > lo:
            data[lo:hi], indices[lo:hi] = val, idx
    group.update_attributes({**ENCODING, "shape": [m, int(rows.shape[1])]})
    return url


def write_sparse(x, url: str, *, array: str | None = None,
                 storage_options: dict[str, Any] | None = None, overwrite: bool = False) -> str:
    """Write a ``scipy.sparse`` matrix (CSR, CSC, COO, ...) as AnnData's CSR encoding in Zarr.

    The group ``anndata.io.write_elem`` writes for a ``csr_matrix`` (``data``,
    ``indices``, ``indptr``; attributes ``encoding-type``, ``encoding-version``,
    ``shape``), which jobs read as a sparse source; never densified.

    Parameters
    ----------
    x : scipy.sparse matrix or array of shape (m, n)
    url : str
        A local path or ``s3://`` URL.
    array : str or None
        Write inside the group at ``url`` under this name (as ``X`` of an AnnData store).

    Returns
    -------
    str
        ``url``.
    """
    return write_sparse_zarr(as_sparse_rows(x), url, array=array,
                             storage_options=storage_options, overwrite=overwrite)
