"""Matrix files the client can read: what ``svdserve upload`` accepts.

:func:`read_matrix` opens a local file (or a Zarr store) as a lazy 2-D dask
array, reading as little as the format allows:

========================  =======================================================  ==========
suffix                    read as                                                  memory
========================  =======================================================  ==========
``.npy``                  one NumPy array, memory-mapped                           row chunks
``.npz``                  the one array of a NumPy archive (``array=`` picks one   the array
                          of several)
``.csv`` ``.tsv`` ``.txt``  numeric text, one row per line (``,``, tab, whitespace;  row chunks
                          ``#`` comments and one header line skipped)
``.h5`` ``.hdf5`` ``.nc``   a 2-D variable of an HDF5/NetCDF file, through xarray    row chunks
``.nc4`` ``.cdf``         (``array=`` names it; needs xarray, and h5netcdf or
                          netCDF4 for HDF5/NetCDF-4)
Zarr directory or URL     a Zarr array, or ``array=`` inside a group               row chunks
========================  =======================================================  ==========

:func:`read_upload` (what ``svdserve upload`` reads) adds the sparse inputs,
kept sparse (:mod:`svdserve.client._sparse`): a ``scipy.sparse.save_npz``
file, and ``.h5ad`` files (AnnData: ``.X`` or ``layer=``; a dense ``.X``
as a dask array).

:func:`describe` says what a path that is not a Zarr store is (for messages
such as "'m.npy' is a NumPy .npy file, not a Zarr array").

Every refusal is an :class:`~svdserve.client.InputFileError` naming the file
and, for an unknown format, listing the ones above.
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np

from ._errors import InputFileError
from ._storage import default_row_chunk, is_remote, open_dask

__all__ = ["read_matrix", "read_upload", "describe", "FORMATS", "formats_text"]

#: (suffixes, what they are read as); the order of ``formats_text``.
FORMATS: tuple[tuple[tuple[str, ...], str], ...] = (
    ((".npy",), "NumPy array"),
    ((".npz",), "NumPy archive holding one array, or --array NAME; or a scipy.sparse "
                "save_npz matrix (kept sparse)"),
    ((".csv", ".tsv", ".txt"), "numeric text table"),
    ((".h5", ".hdf5", ".nc", ".nc4", ".cdf"), "HDF5/NetCDF variable --array NAME, via xarray"),
    ((".zarr",), "Zarr array or group, a directory or s3:// URL"),
    ((".h5ad",), "AnnData file: .X or --layer NAME (sparse kept sparse)"),
)
_KINDS = {".npy": "a NumPy .npy file", ".npz": "a NumPy .npz archive",
          ".csv": "a CSV text file", ".tsv": "a TSV text file", ".txt": "a text file",
          ".h5": "an HDF5 file", ".hdf5": "an HDF5 file", ".nc": "a NetCDF file",
          ".nc4": "a NetCDF-4 file", ".cdf": "a NetCDF file", ".h5ad": "an AnnData .h5ad file"}
_TEXT = (".csv", ".tsv", ".txt")
_XARRAY = (".h5", ".hdf5", ".nc", ".nc4", ".cdf")
_ZARR_KEYS = ("zarr.json", ".zarray", ".zgroup")


def formats_text() -> str:
    """The accepted formats as one line: ``.npy: NumPy array; .npz: ...``."""
    return "; ".join(f"{'/'.join(s)}: {what}" for s, what in FORMATS)


def _suffix(path: str) -> str:
    return os.path.splitext(path.rstrip("/"))[1].lower()


def describe(path: str | os.PathLike) -> str | None:
    """What a local path that is not a Zarr store is, or None (a Zarr store, a URL, absent).

    Returns
    -------
    str or None
        ``"a NumPy .npy file"``, ``"a file"``, ``"a directory without Zarr metadata"``...
    """
    path = os.fspath(path)
    if is_remote(path) or path.startswith("file://") or not os.path.exists(path):
        return None
    if os.path.isdir(path):
        if any(os.path.exists(os.path.join(path, k)) for k in _ZARR_KEYS):
            return None
        return "a directory without Zarr metadata (zarr.json, .zarray or .zgroup)"
    return _KINDS.get(_suffix(path), "a file")


def read_matrix(
    path: str | os.PathLike,
    *,
    array: str | None = None,
    chunks: int | None = None,
    storage_options: dict[str, Any] | None = None,
):
    """Open a matrix file lazily as a 2-D dask array.

    Parameters
    ----------
    path : str or path-like
        A file of a format in :data:`FORMATS`, or a Zarr store (local path or URL).
    array : str or None, default=None
        The array of an ``.npz`` archive or a Zarr group, or the variable of an
        HDF5/NetCDF file; needed only when the file holds several.
    chunks : int or None, default=None
        Rows per dask chunk when reading (default about 16 MiB of rows).
    storage_options : dict or None, default=None
        fsspec options for a remote Zarr URL.

    Returns
    -------
    dask.array.Array of shape (m, n)

    Raises
    ------
    InputFileError
        The file is missing, of an unknown format, not 2-D, or holds several
        arrays and ``array`` does not pick one.
    """
    path = os.fspath(path)
    if is_remote(path):
        return open_dask(path, array=array, storage_options=storage_options)
    suffix = _suffix(path)
    if not os.path.exists(path):
        what = f"{suffix} file" if suffix in _KINDS else "input"
        raise InputFileError(f"no such {what}: {path!r}")
    if os.path.isdir(path):
        if describe(path) is not None:
            raise InputFileError(f"{path!r} is {describe(path)}; accepted inputs: "
                                 f"{formats_text()}")
        try:
            return open_dask(path, array=array)
        except ValueError as exc:
            raise InputFileError(str(exc)) from exc
    if suffix == ".npy":
        return _matrix(_read_npy(path), path, chunks)
    if suffix == ".npz":
        return _matrix(_read_npz(path, array), path, chunks)
    if suffix in _TEXT:
        return _read_text(path, suffix, chunks)
    if suffix in _XARRAY:
        return _read_xarray(path, array, chunks)
    raise InputFileError(f"cannot read {path!r}: unknown format {suffix or '(no suffix)'!r}; "
                         f"accepted inputs: {formats_text()}")


def read_upload(path: str | os.PathLike, *, array: str | None = None, layer: str | None = None,
                chunks: int | None = None, storage_options: dict[str, Any] | None = None):
    """What ``svdserve upload`` sends: :func:`read_matrix`, plus sparse inputs kept sparse.

    Returns
    -------
    dask.array.Array or SparseRows of shape (m, n)
        A :class:`~svdserve.client._sparse.SparseRows` for a
        ``scipy.sparse.save_npz`` file and for the sparse ``.X`` (or
        ``layer``) of an ``.h5ad`` file.

    Raises
    ------
    InputFileError
        As :func:`read_matrix`; ``layer`` given for a file other than ``.h5ad``.
    """
    from ._sparse import read_h5ad, read_npz_sparse

    path = os.fspath(path)
    suffix = _suffix(path)
    if suffix == ".h5ad":
        return read_h5ad(path, layer)
    if layer is not None:
        raise InputFileError(f"--layer applies to .h5ad files; {path!r} is "
                             f"{describe(path) or 'not one'}")
    if suffix == ".npz" and array is None and os.path.isfile(path):
        try:
            rows = read_npz_sparse(path)
        except (ValueError, OSError) as exc:
            raise InputFileError(f"cannot read {path!r} as a .npz archive: {exc}") from exc
        if rows is not None:
            return rows
    return read_matrix(path, array=array, chunks=chunks, storage_options=storage_options)


def _matrix(arr, path: str, chunks: int | None):
    """A NumPy (or memory-mapped) 2-D array as a dask array in row chunks."""
    import dask.array as da

    if arr.ndim != 2:
        raise InputFileError(f"{path!r} holds an array of shape {arr.shape}; expected a 2-D "
                             "matrix (reshape it, e.g. x.reshape(-1, 1) for one column)")
    if arr.dtype.kind not in "iufb":
        raise InputFileError(f"{path!r} holds an array of dtype {arr.dtype}; expected numbers")
    m, n = arr.shape
    rows = chunks or default_row_chunk(n, arr.dtype.itemsize, m)
    return da.from_array(arr, chunks=(max(1, min(rows, max(m, 1))), max(n, 1)))


def _read_npy(path: str):
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise InputFileError(f"cannot read {path!r} as a .npy array: {exc}") from exc


def _read_npz(path: str, array: str | None):
    """The one array of an ``.npz`` archive (read whole: zip members cannot be mapped)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.files)
            if array is None:
                if len(names) != 1:
                    raise InputFileError(
                        f"{path!r} holds {len(names)} arrays {names}; name the one to upload "
                        "with --array NAME (Python: array=NAME)")
                array = names[0]
            if array not in names:
                raise InputFileError(f"{path!r} has no array {array!r}; it holds {names}")
            return archive[array]
    except (ValueError, OSError) as exc:
        if isinstance(exc, InputFileError):
            raise
        raise InputFileError(f"cannot read {path!r} as a .npz archive: {exc}") from exc


def _delimiter(suffix: str) -> str | None:
    return {".csv": ",", ".tsv": "\t"}.get(suffix)


def _fields(line: bytes, delimiter: str | None) -> list[bytes]:
    return line.split(delimiter.encode()) if delimiter else line.split()


def _scan_text(path: str, delimiter: str | None, chunks: int | None):
    """One streaming pass: byte offsets of each chunk's first row, rows, columns, and the
    delimiter (a ``.txt`` whose first row holds a comma is comma-separated)."""
    offsets: list[int] = []
    m, n, rows, pos, header = 0, 0, 1, 0, False
    with open(path, "rb") as f:
        for line in f:
            start, pos = pos, pos + len(line)
            text = line.strip()
            if not text or text.startswith(b"#"):
                continue
            if m == 0:
                if delimiter is None and b"," in text:
                    delimiter = ","
                fields = _fields(text, delimiter)
                try:
                    [float(x) for x in fields]
                except ValueError:
                    if header:
                        raise InputFileError(
                            f"{path!r}: row {text[:60]!r} is not numeric; expected numbers "
                            "(one header line at most)") from None
                    header = True
                    continue
                n = len(fields)
                rows = chunks or default_row_chunk(n, 8, 1 << 62)
            if m % rows == 0:
                offsets.append(start)
            m += 1
    if m == 0:
        raise InputFileError(f"{path!r} holds no numeric rows")
    return offsets, m, n, rows, delimiter


def _load_rows(path: str, offset: int, first: int, rows: int, n: int,
               delimiter: str | None):
    """Data rows ``first:first + rows`` of the text file, which start at byte ``offset``
    (a task of the dask graph)."""
    where = f"data rows {first + 1}-{first + rows} of {path!r}"
    with open(path, "rb") as raw:
        raw.seek(offset)
        text = io.TextIOWrapper(raw, encoding="utf-8")
        try:
            block = np.loadtxt(text, delimiter=delimiter, max_rows=rows, comments="#",
                               ndmin=2, dtype=np.float64)
        except ValueError as exc:
            why = str(exc).split("; use `usecols`")[0]  # numpy's hint is not for this reader
            raise InputFileError(f"cannot read {where} as numbers: {why.rstrip('.')}; every "
                                 f"row needs {n} numbers") from exc
    if block.shape != (rows, n):
        raise InputFileError(f"cannot read {where}: read {block.shape[0]} rows of "
                             f"{block.shape[1]} numbers; every row needs {n}")
    return block


def _read_text(path: str, suffix: str, chunks: int | None):
    """A numeric text table, read in row chunks (the file is scanned once for offsets)."""
    import dask
    import dask.array as da

    offsets, m, n, rows, delimiter = _scan_text(path, _delimiter(suffix), chunks)
    blocks = []
    for i, offset in enumerate(offsets):
        r = min(rows, m - i * rows)
        part = dask.delayed(_load_rows, pure=True)(path, offset, i * rows, r, n, delimiter)
        blocks.append(da.from_delayed(part, shape=(r, n), dtype=np.float64))
    return da.concatenate(blocks, axis=0)


def _read_xarray(path: str, array: str | None, chunks: int | None):
    """A 2-D variable of an HDF5/NetCDF file, lazily through xarray."""
    try:
        import xarray as xr
    except ImportError:
        raise InputFileError(
            f"reading {path!r} needs xarray: pip install 'svdserve[xarray]' (and h5netcdf "
            "or netCDF4 for HDF5/NetCDF-4 files)") from None
    try:
        ds = xr.open_dataset(path, chunks={})
    except (ValueError, OSError) as exc:
        raise InputFileError(
            f"xarray could not open {path!r}: {exc} (HDF5/NetCDF-4 files need h5netcdf or "
            "netCDF4 installed: pip install h5netcdf)") from exc
    names = [str(v) for v in ds.data_vars]
    if array is None:
        if len(names) != 1:
            raise InputFileError(f"{path!r} holds {len(names)} variables {names}; name the "
                                 "one to upload with --array NAME (Python: array=NAME)")
        array = names[0]
    if array not in names:
        raise InputFileError(f"{path!r} has no variable {array!r}; it holds {names}")
    var = ds[array]
    if var.ndim != 2:
        raise InputFileError(
            f"variable {array!r} of {path!r} has dims {var.dims} and shape {var.shape}; "
            "upload writes a 2-D matrix (write an N-D field to Zarr with xarray and submit "
            "it with --sample-dims)")
    data = var.data
    m, n = var.shape
    rows = chunks or default_row_chunk(n, var.dtype.itemsize, m)
    return data.rechunk((max(1, min(rows, max(m, 1))), max(n, 1)))
