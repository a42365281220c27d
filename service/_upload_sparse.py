"""Sparse uploads: a CSR matrix sent in row blocks, stored as AnnData's CSR encoding in Zarr.

The committed group is what ``anndata.io.write_elem`` writes for a
``scipy.sparse.csr_matrix`` (and what ``anndata.io.read_elem`` /
the worker's sparse reader open)::

    {name}.zarr/            group, attributes encoding-type="csr_matrix",
                            encoding-version="0.1.0", shape=[m, n]
        data     (nnz,)     the values, of the upload's dtype
        indices  (nnz,)     column of each value (int32 or int64)
        indptr   (m + 1,)   int64; row r's values are data[indptr[r]:indptr[r+1]]

The creator declares every block's number of non-zeros (``block_nnz``), so
each block's place in ``data``/``indices`` is known before it arrives and
blocks may come in any order. The body of block ``i`` (rows ``start:stop``)
is three little-endian arrays one after the other::

    indptr   (stop - start + 1) int64, starting at 0 and ending at block_nnz[i]
    indices  block_nnz[i] of index_dtype, each in [0, n)
    data     block_nnz[i] of dtype

A block is checked before anything is written (:func:`parse_block`): a
``SparseBlockError`` names the field (``body.indptr``, ``body.indices``)
and the first offending row. No HTTP and no upload records here.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SparseBlockError", "INDEX_DTYPES", "ENCODING", "block_nbytes", "parse_block",
           "create_group", "write_block", "encoding_attributes", "CHUNK_VALUES"]

#: Index dtypes of ``indices`` (``indptr`` is always int64).
INDEX_DTYPES = ("int32", "int64")
#: AnnData's encoding of a CSR matrix (anndata ``_io/specs/methods.py``).
ENCODING = {"encoding-type": "csr_matrix", "encoding-version": "0.1.0"}
#: Values per Zarr chunk of ``data`` and ``indices`` (8 MiB of float64).
CHUNK_VALUES = 2**20
_INDPTR = np.dtype("<i8")


class SparseBlockError(ValueError):
    """A sparse block (or declaration) refused; ``field`` names the part at fault."""

    def __init__(self, message: str, *, field: str):
        super().__init__(message)
        self.field = field


def block_nbytes(rows: int, nnz: int, dtype: str, index_dtype: str) -> int:
    """Bytes of the body of a block of ``rows`` rows holding ``nnz`` values."""
    return (rows + 1) * _INDPTR.itemsize + nnz * (np.dtype(index_dtype).itemsize
                                                  + np.dtype(dtype).itemsize)


def parse_block(data: bytes | bytearray, *, start: int, stop: int, nnz: int, n: int,
                dtype: str, index_dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(indptr, indices, values)`` of a block body, checked.

    Parameters
    ----------
    data : bytes of length :func:`block_nbytes`
    start, stop : int
        The block's rows ``[start, stop)`` of the matrix (for messages).
    nnz : int
        The block's non-zeros as declared at creation.
    n : int
        Columns of the matrix.

    Returns
    -------
    indptr : ndarray of shape (stop - start + 1,), int64
    indices : ndarray of shape (nnz,)
    values : ndarray of shape (nnz,)

    Raises
    ------
    SparseBlockError
        ``indptr`` not starting at 0, not ending at ``nnz`` or decreasing;
        an index outside ``[0, n)``; each names the first offending row.
    """
    rows = stop - start
    idx_dt, val_dt = np.dtype(index_dtype).newbyteorder("<"), np.dtype(dtype).newbyteorder("<")
    cut = (rows + 1) * _INDPTR.itemsize
    indptr = np.frombuffer(data, dtype=_INDPTR, count=rows + 1)
    indices = np.frombuffer(data, dtype=idx_dt, count=nnz, offset=cut)
    values = np.frombuffer(data, dtype=val_dt, count=nnz, offset=cut + nnz * idx_dt.itemsize)
    if indptr[0] != 0 or indptr[-1] != nnz:
        raise SparseBlockError(
            f"the indptr of rows {start}:{stop} must start at 0 and end at the block's "
            f"{nnz} non-zeros (declared in block_nnz); got {int(indptr[0])} and "
            f"{int(indptr[-1])}: send each block's indptr relative to its first row",
            field="body.indptr")
    steps = np.diff(indptr)
    if steps.size and steps.min() < 0:
        row = start + int(np.argmax(steps < 0))
        raise SparseBlockError(
            f"indptr is not monotone: it decreases at row {row} (rows {start}:{stop}); "
            "a CSR indptr never decreases (sort or rebuild the matrix: x.tocsr())",
            field="body.indptr")
    bad = (indices < 0) | (indices >= n)
    if bad.any():
        at = int(np.argmax(bad))
        row = start + int(np.searchsorted(indptr, at, side="right")) - 1
        raise SparseBlockError(
            f"column index {int(indices[at])} of row {row} is out of range: the matrix has "
            f"{n} columns, so indices lie in [0, {n})", field="body.indices")
    return indptr, indices, values


def create_group(path: str, *, shape: tuple[int, int], nnz: int, dtype: str,
                 index_dtype: str, block_rows: int) -> None:
    """Create the staging group: empty ``data``, ``indices`` and ``indptr`` arrays (Zarr v3)."""
    import zarr

    m, _ = shape
    group = zarr.open_group(path, mode="w", zarr_format=3)
    chunk = max(1, min(nnz, CHUNK_VALUES))
    group.create_array("data", shape=(nnz,), chunks=(chunk,), dtype=dtype, fill_value=0)
    group.create_array("indices", shape=(nnz,), chunks=(chunk,), dtype=index_dtype,
                       fill_value=0)
    group.create_array("indptr", shape=(m + 1,), chunks=(max(1, min(m + 1, block_rows)),),
                       dtype="int64", fill_value=0)


def write_block(path: str, *, start: int, offset: int, indptr: np.ndarray,
                indices: np.ndarray, values: np.ndarray) -> None:
    """Write one checked block at its place: rows from ``start``, values from ``offset``.

    Blocks share Zarr chunks with their neighbours: the caller writes one
    block of an upload at a time.
    """
    import zarr

    group = zarr.open_group(path, mode="r+")
    nnz = int(indices.size)
    config = {"write_empty_chunks": True}  # every chunk stored: a strict reader finds them
    if nnz:
        group["data"].with_config(config)[offset:offset + nnz] = values
        group["indices"].with_config(config)[offset:offset + nnz] = indices
    rows = indptr.size - 1
    lo = start if start == 0 else start + 1
    group["indptr"].with_config(config)[lo:start + rows + 1] = (
        indptr if start == 0 else indptr[1:]) + offset


def encoding_attributes(shape: list[int]) -> dict:
    """The group attributes AnnData reads a CSR matrix by."""
    return {**ENCODING, "shape": [int(shape[0]), int(shape[1])]}
