"""Upload a matrix to the service over HTTP, block by block (``/v1/uploads``).

For a client that shares no filesystem or bucket with the service. The
matrix is sent as row blocks of raw little-endian bytes, each with its
SHA-256 (``Content-Digest``, RFC 9530), then committed: the service moves
the complete array into place atomically and answers its ``source`` path,
which :meth:`Client.submit` takes like any other.

- Memory: one block at a time (a NumPy memmap, a dask or a zarr array is
  read block by block into one reused buffer).
- Resume: an interrupted upload is found again by name, shape and dtype;
  the blocks already received are checked against ``data`` by their SHA-256
  (read locally, not sent), and only the blocks the service lacks are sent.
- A block sent twice is a no-op on the service, so retries are safe.
- Sparse: a ``scipy.sparse`` matrix (or :class:`~svdserve.client._sparse.SparseRows`)
  goes as CSR row blocks (``format="csr"``: each block's ``indptr`` from 0,
  its column indices, its values), never densified; the service commits
  AnnData's CSR group. Blocks hold about :data:`SPARSE_BLOCK_BYTES`.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import numpy as np

from ._http import HTTPTransport
from ._sparse import SparseRows, as_sparse_rows, is_sparse

__all__ = ["upload_http", "zarr_name", "expand_ranges", "PROGRESS_MIN_BYTES",
           "SPARSE_BLOCK_BYTES"]

#: Uploads at least this large show a progress bar (when ``progress=True``).
PROGRESS_MIN_BYTES = 32 * 2**20
#: Bytes of a sparse block (on average over the rows) when ``block_rows`` is not given.
SPARSE_BLOCK_BYTES = 16 * 2**20


def zarr_name(name: str) -> str:
    """The name as the service stores it: ``.zarr`` appended when missing."""
    return name if name.endswith(".zarr") else name + ".zarr"


def expand_ranges(pairs: list[list[int]]) -> list[int]:
    """``[[0, 3], [5, 6]]`` -> ``[0, 1, 2, 5]``."""
    return [i for start, stop in pairs for i in range(start, stop)]


def _as_matrix(data) -> tuple[Any, tuple[int, int], np.dtype]:
    """``data`` (kept lazy) with its shape and little-endian wire dtype; TypeError/ValueError."""
    if not (hasattr(data, "shape") and hasattr(data, "dtype") and hasattr(data, "__getitem__")):
        if isinstance(data, (list, tuple)):
            data = np.asarray(data)
        else:
            raise TypeError(f"expected a NumPy, dask or zarr array of shape (m, n), got "
                            f"{type(data).__name__}")
    if len(data.shape) != 2:
        raise ValueError(f"expected a 2-D matrix, got an array of shape {tuple(data.shape)}; "
                         "reshape it (x.reshape(-1, 1) for a single column)")
    dt = np.dtype(data.dtype)
    if dt.kind not in "iufb":
        raise ValueError(f"expected real numbers (float, integer or bool), got dtype {dt}")
    m, n = (int(d) for d in data.shape)
    if m < 1 or n < 1:
        raise ValueError(f"expected a non-empty matrix, got shape {(m, n)}")
    return data, (m, n), dt.newbyteorder("<")


def _fill(buffer: bytearray, data, start: int, stop: int, wire: np.dtype) -> memoryview:
    """Rows ``start:stop`` as little-endian C-order bytes, copied into ``buffer``.

    One buffer serves every block: httpx keeps a sent body alive in reference
    cycles until the garbage collector runs, so fresh ``bytes`` per block would
    pile up to many blocks; a reused buffer keeps the client at one block.
    """
    part = data[start:stop]
    if hasattr(part, "compute"):  # dask: compute this block only
        part = part.compute()
    n = int(data.shape[1])
    view = memoryview(buffer)[:(stop - start) * n * wire.itemsize]
    np.frombuffer(view, dtype=wire).reshape(stop - start, n)[...] = np.asarray(part)
    return view


def _find_or_create(http: HTTPTransport, name: str, shape: tuple[int, int], dtype: str,
                    block_rows: int | None, sparse: dict | None = None) -> dict:
    """An unfinished upload of this name, shape and dtype (to resume), or a new one.

    ``sparse``: the CSR fields (``format``, ``block_nnz``, ``index_dtype``), which a
    resumed upload must have too.
    """
    for item in http.get_json("/v1/uploads").get("items", []):
        if (item["name"] == name and item["state"] == "uploading"
                and tuple(item["shape"]) == shape and item["dtype"] == dtype
                and block_rows in (None, item["block_rows"])
                and (item.get("format") or "dense") == (sparse or {}).get("format", "dense")
                and all(item.get(k) == v for k, v in (sparse or {}).items())):
            return http.get_json(f"/v1/uploads/{item['id']}", params={"digests": "true"})
    body: dict[str, Any] = {"name": name, "shape": list(shape), "dtype": dtype, **(sparse or {})}
    if block_rows is not None:
        body["block_rows"] = int(block_rows)
    return http.request("POST", "/v1/uploads", json=body, idempotent=False).json()


def _check_resumed(record: dict, data, wire: np.dtype, buffer: bytearray) -> None:
    """Refuse to resume an upload whose received blocks hold other data than ``data``."""
    rows, m = int(record["block_rows"]), int(record["shape"][0])
    for key, known in sorted((record.get("block_sha256") or {}).items(), key=lambda kv: int(kv[0])):
        i = int(key)
        body = (_sparse_body(data, i * rows, min(m, (i + 1) * rows), wire)
                if isinstance(data, SparseRows)
                else _fill(buffer, data, i * rows, min(m, (i + 1) * rows), wire))
        if hashlib.sha256(body).hexdigest() != known:
            raise ValueError(
                f"the unfinished upload {record['name']!r} (id {record['id']}) holds other data "
                f"in block {i} (rows {i * rows}:{min(m, (i + 1) * rows)}) than the array given; "
                "delete it (Client.delete_upload) or upload under another name")


def _progress_bar(record: dict, progress: bool):
    from tqdm.auto import tqdm

    total = int(record["nbytes"])
    missing = expand_ranges(record["missing"])
    done = total - sum(_nbytes(record, i) for i in missing)
    return tqdm(total=total, initial=done, unit="B", unit_scale=True, unit_divisor=1024,
                desc=f"upload {record['name']}", leave=False,
                disable=not progress or total < PROGRESS_MIN_BYTES)


def _nbytes(record: dict, i: int) -> int:
    m, n = record["shape"]
    rows = min(m, (i + 1) * record["block_rows"]) - i * record["block_rows"]
    if record.get("format") == "csr":
        per_value = (np.dtype(record["dtype"]).itemsize
                     + np.dtype(record["index_dtype"]).itemsize)
        return (rows + 1) * 8 + record["block_nnz"][i] * per_value
    return rows * n * np.dtype(record["dtype"]).itemsize


def _sparse_body(rows: SparseRows, start: int, stop: int, wire: np.dtype) -> bytes:
    """Rows ``start:stop`` as the service's CSR block: int64 indptr from 0, indices, values."""
    indptr, indices, values = rows.rows(start, stop)
    return b"".join([indptr.astype("<i8").tobytes(),
                     indices.astype(rows.index_dtype.newbyteorder("<")).tobytes(),
                     values.astype(wire).tobytes()])


def _send(http: HTTPTransport, path: str, i: int, body) -> None:
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    # a list (not a generator) so that a retry sends the same bytes again
    http.request("PUT", f"{path}/blocks/{i}", content=[body], headers={
        "Content-Type": "application/octet-stream", "Content-Length": str(len(body)),
        "Content-Digest": f"sha-256=:{digest}:"})


def _upload_sparse(http: HTTPTransport, rows: SparseRows, name: str, *,
                   block_rows: int | None, progress: bool) -> str:
    """:func:`upload_http` of a CSR matrix: blocks of about :data:`SPARSE_BLOCK_BYTES`."""
    m = rows.shape[0]
    wire = rows.dtype.newbyteorder("<")
    per_row = 8 + rows.nnz / m * (wire.itemsize + rows.index_dtype.itemsize)
    block_rows = int(block_rows or max(1, min(m, SPARSE_BLOCK_BYTES // per_row)))
    fields = {"format": "csr", "block_nnz": rows.block_nnz(block_rows),
              "index_dtype": rows.index_dtype.name}
    record = _find_or_create(http, name, rows.shape, wire.name, block_rows, fields)
    path = f"/v1/uploads/{record['id']}"
    _check_resumed(record, rows, wire, bytearray())
    with _progress_bar(record, progress) as bar:
        for i in expand_ranges(record["missing"]):
            body = _sparse_body(rows, i * block_rows, min(m, (i + 1) * block_rows), wire)
            _send(http, path, i, body)
            bar.update(len(body))
    return http.request("POST", f"{path}/commit", idempotent=True).json()["source"]


def upload_http(http: HTTPTransport, data, name: str, *, block_rows: int | None = None,
                progress: bool = True) -> str:
    """Send ``data`` to the service block by block, commit it and return its source path.

    Parameters
    ----------
    http : HTTPTransport
    data : ndarray, numpy.memmap, dask array, zarr array or scipy.sparse matrix of shape (m, n)
        Read one block of rows at a time; a sparse matrix is sent as CSR
        blocks and stored as AnnData's CSR group.
    name : str
        The array's name among the tenant's uploads (``.zarr`` appended).
    block_rows : int or None, default=None
        Rows per block; None lets the service choose (about 16 MiB).
    progress : bool, default=True
        A tqdm bar for uploads of at least :data:`PROGRESS_MIN_BYTES`.

    Returns
    -------
    str
        The committed array's ``source`` (what :meth:`Client.submit` takes).
    """
    if is_sparse(data):
        return _upload_sparse(http, as_sparse_rows(data), zarr_name(name),
                              block_rows=block_rows, progress=progress)
    data, shape, wire = _as_matrix(data)
    record = _find_or_create(http, zarr_name(name), shape, wire.name, block_rows)
    path = f"/v1/uploads/{record['id']}"
    rows = int(record["block_rows"])
    buffer = bytearray(rows * shape[1] * wire.itemsize)
    _check_resumed(record, data, wire, buffer)
    with _progress_bar(record, progress) as bar:
        for i in expand_ranges(record["missing"]):
            start, stop = i * rows, min(shape[0], (i + 1) * rows)
            body = _fill(buffer, data, start, stop, wire)
            _send(http, path, i, body)
            bar.update(len(body))
    return http.request("POST", f"{path}/commit", idempotent=True).json()["source"]
