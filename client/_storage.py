"""Zarr and fsspec plumbing shared by uploads, result access and ``to_zarr``.

A *storage URL* is a local path (absolute or relative), a ``file://`` URL, or
an fsspec URL (``s3://bucket/key``, ``http(s)://...``) opened with
``storage_options``.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlparse

import numpy as np

from ._errors import StorageAccessError

__all__ = [
    "is_remote",
    "local_path",
    "absolute_url",
    "store_kwargs",
    "default_row_chunk",
    "write_array",
    "open_dask",
]

#: Target bytes per chunk written by uploads and ``to_zarr`` (rows are whole).
CHUNK_BYTES = 16 * 2**20


def is_remote(url: str) -> bool:
    """True for fsspec URLs other than ``file://`` (``s3://``, ``http://``, ...)."""
    scheme = urlparse(str(url)).scheme
    return len(scheme) > 1 and scheme != "file"  # len > 1: not a Windows drive letter


def local_path(url: str | os.PathLike) -> str:
    """The local filesystem path of a local path or ``file://`` URL."""
    url = os.fspath(url)
    if url.startswith("file://"):
        return urlparse(url).path
    return url


def absolute_url(url: str | os.PathLike) -> str:
    """Remote URLs unchanged; local paths made absolute (``file://`` stripped)."""
    url = os.fspath(url)
    return url if is_remote(url) else os.path.abspath(local_path(url))


def store_kwargs(url: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """``store=`` / ``storage_options=`` arguments for ``zarr.open_*``.

    zarr refuses ``storage_options`` for local paths, so they are passed only
    for remote URLs.
    """
    if is_remote(url):
        return {"store": url, "storage_options": dict(storage_options or {})}
    return {"store": local_path(url)}


def default_row_chunk(n_cols: int, itemsize: int, n_rows: int) -> int:
    """Rows per chunk so that one chunk of whole rows holds about :data:`CHUNK_BYTES`."""
    rows = CHUNK_BYTES // max(1, n_cols * itemsize)
    return int(max(1, min(rows, max(n_rows, 1))))


def _as_dask_matrix(data):
    """``data`` as a 2-D numeric dask array (ValueError otherwise)."""
    import dask.array as da
    import zarr

    if isinstance(data, da.Array):
        darr = data
    elif isinstance(data, zarr.Array):
        darr = da.from_zarr(data)
    else:
        data = np.asarray(data)
        darr = da.from_array(data, chunks=data.shape or (1,))
    if darr.ndim != 2:
        raise ValueError(
            f"expected a 2-D matrix, got an array of shape {darr.shape}; "
            "reshape it (e.g. x.reshape(-1, 1) for a single column)"
        )
    if darr.dtype.kind not in "iufb":
        raise ValueError(f"expected a numeric array, got dtype {darr.dtype}")
    return darr


def _chunk_shape(chunks, m: int, n: int, itemsize: int) -> tuple[int, int]:
    """The Zarr chunk shape ``write_array`` uses for its ``chunks`` argument."""
    if chunks is None:
        return (default_row_chunk(n, itemsize, m), max(n, 1))
    if isinstance(chunks, (int, np.integer)):
        return (int(max(1, min(int(chunks), max(m, 1)))), max(n, 1))
    chunk_shape = tuple(int(c) for c in chunks)
    if len(chunk_shape) != 2 or min(chunk_shape) < 1:
        raise ValueError(f"chunks must be an int or a pair of positive ints, got {chunks!r}")
    return chunk_shape


def write_array(
    data,
    url: str,
    *,
    array: str | None = None,
    storage_options: dict[str, Any] | None = None,
    chunks: int | tuple[int, int] | None = None,
    overwrite: bool = False,
    attributes: dict[str, Any] | None = None,
) -> str:
    """Write a 2-D NumPy/Dask/Zarr array as a row-chunked Zarr v3 array.

    Parameters
    ----------
    data : array-like of shape (m, n)
        NumPy array, dask array, zarr array or anything ``numpy.asarray`` takes.
    url : str
        Where: the array itself, or the group holding it when ``array`` is given.
    array : str or None
        Name of the array inside a group at ``url`` (the group is created or reused).
    chunks : int or (int, int) or None
        Rows per chunk (whole rows), or an explicit chunk shape; default about
        16 MiB of whole rows.
    overwrite : bool, default=False
        Replace an existing array; otherwise an existing one is an error.

    Returns
    -------
    url : str
        ``url`` with local paths made absolute.
    """
    import dask.array as da
    import zarr

    url = absolute_url(url)
    darr = _as_dask_matrix(data)
    m, n = (int(d) for d in darr.shape)
    chunk_shape = _chunk_shape(chunks, m, n, darr.dtype.itemsize)
    try:
        if array is None:
            z = zarr.create_array(
                **store_kwargs(url, storage_options),
                shape=(m, n),
                dtype=darr.dtype,
                chunks=chunk_shape,
                zarr_format=3,
                overwrite=overwrite,
                attributes=attributes,
            )
        else:
            group = zarr.open_group(**store_kwargs(url, storage_options), mode="a", zarr_format=3)
            z = group.create_array(
                name=array,
                shape=(m, n),
                dtype=darr.dtype,
                chunks=chunk_shape,
                overwrite=overwrite,
                attributes=attributes,
            )
        # Dask chunks equal to Zarr chunks: every task writes whole chunks, no locks needed.
        da.store(darr.rechunk(chunk_shape), z, lock=False)
    except zarr.errors.ContainsArrayError as exc:
        raise StorageAccessError(
            f"an array already exists at {url!r}{f' ({array})' if array else ''}; "
            "pass overwrite=True (CLI: --overwrite) to replace it"
        ) from exc
    except zarr.errors.ContainsGroupError as exc:
        raise StorageAccessError(
            f"a Zarr group already exists at {url!r}; pass array=NAME to write into it, "
            "or overwrite=True to replace it"
        ) from exc
    except OSError as exc:
        raise StorageAccessError(f"could not write Zarr to {url!r}: {exc}") from exc
    return url


def open_dask(
    url: str | os.PathLike,
    *,
    array: str | None = None,
    storage_options: dict[str, Any] | None = None,
):
    """A Zarr array (or ``array`` inside a group) at ``url`` as a lazy dask array."""
    import dask.array as da
    import zarr

    url = os.fspath(url)
    try:
        node = zarr.open(**store_kwargs(url, storage_options), mode="r")
    except FileNotFoundError as exc:
        raise StorageAccessError(f"no Zarr array or group at {url!r}") from exc
    if array is not None:
        if not isinstance(node, zarr.Group):
            raise ValueError(f"{url!r} is a Zarr array, not a group; drop array={array!r}")
        try:
            node = node[array]
        except KeyError as exc:
            raise StorageAccessError(
                f"no array {array!r} in the group at {url!r}; it has {sorted(node.array_keys())}"
            ) from exc
    if isinstance(node, zarr.Group):
        raise ValueError(
            f"{url!r} is a Zarr group; name the array inside it (array=...): "
            f"{sorted(node.array_keys())}"
        )
    return da.from_zarr(node)
