"""Matrices uploaded over HTTP: staging, blocks, commit, quota and expiry (no HTTP here).

An upload is a 2-D array of ``shape`` and ``dtype`` cut into row blocks of
``block_rows`` rows (the last may be shorter). Block ``i`` is one Zarr chunk
``(block_rows, n)`` of a staging array written by zarr itself; the commit
moves the staging array into place with one ``rename``, so before the commit
nothing is visible as a source and after it the array is complete.

Layout under the uploads root (``SVDSERVE_UPLOADS_ROOT``)::

    {root}/{tenant}/{name}.zarr                 committed arrays: ordinary Zarr v3 sources
    {root}/.uploads/{tenant}/{id}/upload.json   the record (written atomically)
    {root}/.uploads/{tenant}/{id}/blocks/{i}    SHA-256 (hex) of block i, written after its chunk
    {root}/.uploads/{tenant}/{id}/array.zarr    the staging array (renamed at commit)

A block counts as received once its digest file exists, and that file is
written (atomically) only after zarr wrote the chunk: a block cut short by a
crash is reported missing and sent again. ``.uploads`` is never readable as a
source (the sandbox forbids it); tenant names cannot start with a dot.

Quota: a tenant's uploads (committed or not) may hold at most
``SVDSERVE_UPLOAD_QUOTA_BYTES`` raw bytes (m·n·itemsize, as declared).
Expiry: an uncommitted upload without a new block for
``SVDSERVE_UPLOAD_EXPIRY`` seconds is deleted by :meth:`UploadStore.sweep`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import time
import uuid
from dataclasses import asdict, dataclass

import numpy as np

from . import _upload_sparse as sparse
from ._errors import ServiceError
from ._store import ID_PATTERN

__all__ = ["UploadStore", "UploadRecord", "UploadError", "NAME_PATTERN", "STATE_DIR",
           "check_dtype", "ranges"]

#: Upload names: one path segment; ``.zarr`` is appended when missing.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
#: Directory under the uploads root holding records and staging arrays.
STATE_DIR = ".uploads"
_BLOCK_FILE = re.compile(r"^[0-9]+$")


class UploadError(ServiceError):
    """An upload request refused.

    Attributes
    ----------
    status : int
        The HTTP status: 404, 409, 413 or 422.
    field : str or None
        The field at fault (``"body.shape"``, ``"path.block"``, ...).
    extra : dict
        Members added to the problem body (``used``/``requested``/``limit``,
        ``missing_blocks``, ...).
    """

    def __init__(self, status: int, message: str, *, field: str | None = None,
                 extra: dict | None = None):
        super().__init__(message)
        self.status, self.field, self.extra = status, field, dict(extra or {})


def check_dtype(value: str) -> str:
    """The canonical name (``"float64"``) of a numeric dtype given as text; ValueError else."""
    try:
        dt = np.dtype(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{value!r} is not a NumPy dtype; use float64, float32, int64, "
                         "int32, uint8 or bool") from exc
    if dt.kind not in "iufb":
        raise ValueError(f"dtype {value!r} is not real numbers; the service decomposes "
                         "float, integer or bool matrices (float64, float32, int64, ...)")
    if dt.kind == "f" and dt.itemsize > 8:
        raise ValueError(f"dtype {value!r} ({dt.name}, extended precision) has no Zarr v3 "
                         "data type; convert the matrix to float64 and declare 'float64'")
    if dt.byteorder == ">":
        raise ValueError(f"dtype {value!r} is big-endian; blocks are sent little-endian: "
                         f"declare {dt.newbyteorder('<').name!r} and send its bytes")
    return dt.name


def ranges(indices) -> list[list[int]]:
    """Sorted block indices as half-open ranges: ``[0, 1, 2, 5]`` -> ``[[0, 3], [5, 6]]``."""
    out: list[list[int]] = []
    for i in sorted(indices):
        if out and out[-1][1] == i:
            out[-1][1] = i + 1
        else:
            out.append([i, i + 1])
    return out


@dataclass
class UploadRecord:
    """One upload, as stored in ``upload.json``.

    Attributes
    ----------
    id, tenant, name : str
        ``name`` ends in ``.zarr``.
    shape : list of int
        ``[m, n]``.
    dtype : str
        Canonical NumPy name; blocks are sent little-endian.
    block_rows : int
        Rows per block (one Zarr chunk of whole rows).
    state : {"uploading", "committed"}
    created_at, updated_at : float
        Unix seconds; ``updated_at`` is the last block or the creation.
    committed_at : float or None
    source : str or None
        Path of the committed array (what a job names as ``source.url``).
    format : {"dense", "csr"}
        ``"csr"``: a sparse matrix stored as AnnData's CSR group
        (:mod:`svdserve.service._upload_sparse`).
    index_dtype : str or None
        CSR only: the dtype of ``indices``.
    block_nnz : list of int or None
        CSR only: the non-zeros of each block, as declared at creation.
    """

    id: str
    tenant: str
    name: str
    shape: list[int]
    dtype: str
    block_rows: int
    state: str = "uploading"
    created_at: float = 0.0
    updated_at: float = 0.0
    committed_at: float | None = None
    source: str | None = None
    format: str = "dense"
    index_dtype: str | None = None
    block_nnz: list[int] | None = None

    @property
    def n_blocks(self) -> int:
        return -(-self.shape[0] // self.block_rows)

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize

    @property
    def nnz(self) -> int | None:
        """Non-zeros of a CSR upload (None: dense)."""
        return None if self.block_nnz is None else int(sum(self.block_nnz))

    @property
    def nbytes(self) -> int:
        if self.format == "csr":
            return sparse.block_nbytes(self.shape[0], self.nnz, self.dtype, self.index_dtype)
        return self.shape[0] * self.shape[1] * self.itemsize

    def offset(self, i: int) -> int:
        """CSR: the position in ``data``/``indices`` of block ``i``'s first value."""
        return int(sum(self.block_nnz[:i]))

    def rows(self, i: int) -> tuple[int, int]:
        """Row range ``[start, stop)`` of block ``i``."""
        start = i * self.block_rows
        return start, min(self.shape[0], start + self.block_rows)

    def block_nbytes(self, i: int) -> int:
        start, stop = self.rows(i)
        if self.format == "csr":
            return sparse.block_nbytes(stop - start, self.block_nnz[i], self.dtype,
                                       self.index_dtype)
        return (stop - start) * self.shape[1] * self.itemsize


def _write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class UploadStore:
    """Uploads kept as files under one root.

    Parameters
    ----------
    root : str
        The uploads root (absolute local path).
    quota_bytes : int
        Raw bytes a tenant's uploads may hold at once.
    expiry : float
        Seconds an uncommitted upload may go without a block before it is deleted.
    block_bytes : int
        Byte budget of a block when the creator does not choose ``block_rows``.
    max_block_bytes : int
        Largest block accepted (one request body).
    max_blocks : int
        Most blocks (Zarr chunks) of one upload (``SVDSERVE_MAX_CHUNKS``).
    """

    def __init__(self, root: str, *, quota_bytes: int, expiry: float, block_bytes: int,
                 max_block_bytes: int, max_blocks: int):
        self.root = root
        self.state_root = os.path.join(root, STATE_DIR)
        self.quota_bytes, self.expiry = quota_bytes, expiry
        self.block_bytes, self.max_block_bytes = block_bytes, max_block_bytes
        self.max_blocks = max_blocks
        self._stripes = [threading.Lock() for _ in range(64)]
        # taken inside a block's stripe: CSR blocks of one upload share Zarr chunks
        self._csr_writes = [threading.Lock() for _ in range(16)]

    def lock(self, *key: str | int) -> threading.Lock:
        """The lock of a tenant (quota, names), an upload or a block (striped; never nested)."""
        return self._stripes[hash(key) % len(self._stripes)]

    # ------------------------------------------------------------------ paths
    def _dir(self, tenant: str, upload_id: str) -> str:
        return os.path.join(self.state_root, tenant, upload_id)

    def staging(self, rec: UploadRecord) -> str:
        return os.path.join(self._dir(rec.tenant, rec.id), "array.zarr")

    def target(self, rec: UploadRecord) -> str:
        return os.path.join(self.root, rec.tenant, rec.name)

    def _block_file(self, rec: UploadRecord, i: int) -> str:
        return os.path.join(self._dir(rec.tenant, rec.id), "blocks", str(i))

    # ------------------------------------------------------------------ records
    def _save(self, rec: UploadRecord) -> None:
        path = os.path.join(self._dir(rec.tenant, rec.id), "upload.json")
        _write_atomic(path, json.dumps(asdict(rec)).encode())

    def _load(self, tenant: str, upload_id: str) -> UploadRecord | None:
        path = os.path.join(self._dir(tenant, upload_id), "upload.json")
        try:
            with open(path, "rb") as f:
                rec = UploadRecord(**json.loads(f.read()))
        except (FileNotFoundError, NotADirectoryError):
            return None
        if (rec.state == "uploading" and not os.path.exists(self.staging(rec))
                and os.path.isdir(self.target(rec))):
            self._finish_commit(rec)  # the service stopped between the rename and the record
        return rec

    def get(self, tenant: str, upload_id: str) -> UploadRecord | None:
        """The tenant's upload ``upload_id`` (None: unknown, expired or another tenant's)."""
        if not ID_PATTERN.match(upload_id):
            return None
        rec = self._load(tenant, upload_id)
        if rec is not None and self._expired(rec, time.time()):
            self._remove(rec)
            return None
        return rec

    def list(self, tenant: str) -> list[UploadRecord]:
        """The tenant's uploads, newest first."""
        try:
            names = os.listdir(os.path.join(self.state_root, tenant))
        except FileNotFoundError:
            return []
        records = [self.get(tenant, name) for name in names if ID_PATTERN.match(name)]
        return sorted((r for r in records if r is not None), key=lambda r: -r.created_at)

    def received(self, rec: UploadRecord) -> set[int]:
        """Indices of the blocks received so far (one directory listing)."""
        try:  # gone: the upload was deleted meanwhile
            names = os.listdir(os.path.join(self._dir(rec.tenant, rec.id), "blocks"))
        except (FileNotFoundError, NotADirectoryError):
            names = []
        return {int(name) for name in names if _BLOCK_FILE.match(name)}

    def digests(self, rec: UploadRecord) -> dict[int, str]:
        """``{block index: sha-256 hex}`` of the blocks received so far."""
        known = {i: self._known_digest(rec, i) for i in self.received(rec)}
        return {i: d for i, d in known.items() if d is not None}  # None: deleted meanwhile

    # ------------------------------------------------------------------ create
    def default_block_rows(self, n: int, itemsize: int, m: int) -> int:
        return int(max(1, min(m, self.block_bytes // max(1, n * itemsize))))

    def create(self, tenant: str, name: str, shape: list[int], dtype: str,
               block_rows: int | None, *, format: str = "dense",
               block_nnz: list[int] | None = None,
               index_dtype: str | None = None) -> UploadRecord:
        """Reserve a new upload (quota checked) and create its staging array.

        ``format="csr"`` (with ``block_rows``, ``block_nnz`` and
        ``index_dtype``): a sparse matrix, staged as AnnData's CSR group.
        """
        import zarr

        name = name if name.endswith(".zarr") else name + ".zarr"
        m, n = shape
        itemsize = np.dtype(dtype).itemsize
        rows = block_rows or self.default_block_rows(n, itemsize, m)
        now = time.time()
        rec = UploadRecord(id=uuid.uuid4().hex, tenant=tenant, name=name, shape=[m, n],
                           dtype=dtype, block_rows=int(min(rows, m)), created_at=now,
                           updated_at=now)
        if format == "csr":
            rec.format, rec.index_dtype = "csr", index_dtype or "int64"
            rec.block_nnz = None if block_nnz is None else [int(v) for v in block_nnz]
            self._check_sparse(rec, chosen=block_rows is not None)
        else:
            self._check_blocks(m, n, itemsize, rows, chosen=block_rows is not None)
        with self.lock(tenant):
            self._check_name(tenant, name)
            self._check_quota(tenant, rec.nbytes)
            os.makedirs(os.path.join(self._dir(tenant, rec.id), "blocks"))
            try:
                if rec.format == "csr":
                    sparse.create_group(self.staging(rec), shape=(m, n), nnz=rec.nnz,
                                        dtype=dtype, index_dtype=rec.index_dtype,
                                        block_rows=rec.block_rows)
                else:
                    zarr.create_array(self.staging(rec), shape=(m, n),
                                      chunks=(rec.block_rows, n), dtype=dtype, zarr_format=3,
                                      fill_value=0)
                self._save(rec)
            except BaseException:
                shutil.rmtree(self._dir(tenant, rec.id), ignore_errors=True)
                raise
        return rec

    def _check_sparse(self, rec: UploadRecord, *, chosen: bool) -> None:
        """A CSR declaration: block_rows given, one nnz per block, blocks within limits."""
        m, n = rec.shape
        if rec.block_nnz is None:
            raise UploadError(422, "a csr upload declares block_nnz: the non-zeros of each "
                                   "block of block_rows rows", field="body.block_nnz")
        if not chosen:
            raise UploadError(422, "a csr upload needs block_rows (rows per block) together "
                                   "with block_nnz (the non-zeros of each block)",
                              field="body.block_rows")
        if rec.n_blocks > self.max_blocks:
            raise UploadError(
                422, f"{m} rows in blocks of {rec.block_rows} make {rec.n_blocks} blocks, more "
                     f"than SVDSERVE_MAX_CHUNKS={self.max_blocks}; use at least "
                     f"{-(-m // self.max_blocks)} rows per block", field="body.block_rows")
        if len(rec.block_nnz) != rec.n_blocks:
            raise UploadError(422, f"block_nnz must give the non-zeros of each of the "
                                   f"{rec.n_blocks} blocks of {rec.block_rows} rows; got "
                                   f"{len(rec.block_nnz)} numbers", field="body.block_nnz")
        if rec.index_dtype == "int32" and n > np.iinfo(np.int32).max:
            raise UploadError(422, f"{n} columns do not fit int32 indices; declare "
                                   "index_dtype 'int64'", field="body.index_dtype")
        for i, nnz in enumerate(rec.block_nnz):
            start, stop = rec.rows(i)
            if not 0 <= nnz <= (stop - start) * n:
                raise UploadError(422, f"block {i} (rows {start}:{stop}, {n} columns) holds "
                                       f"0 to {(stop - start) * n} non-zeros; block_nnz says "
                                       f"{nnz}", field="body.block_nnz")
            if rec.block_nbytes(i) > self.max_block_bytes:
                raise UploadError(
                    422, f"block {i} (rows {start}:{stop}, {nnz} non-zeros) is "
                         f"{rec.block_nbytes(i)} bytes, more than the largest block accepted "
                         f"({self.max_block_bytes} bytes, SVDSERVE_UPLOAD_MAX_BLOCK_BYTES); "
                         "use fewer rows per block", field="body.block_nnz")

    def _check_blocks(self, m: int, n: int, itemsize: int, rows: int, *, chosen: bool) -> None:
        field = "body.block_rows" if chosen else "body.shape"
        row_bytes = n * itemsize
        if min(rows, m) * row_bytes > self.max_block_bytes:
            raise UploadError(
                422, f"a block of {min(rows, m)} rows x {n} columns is "
                     f"{min(rows, m) * row_bytes} bytes, more than the largest block accepted "
                     f"({self.max_block_bytes} bytes, SVDSERVE_UPLOAD_MAX_BLOCK_BYTES); use at "
                     f"most {max(1, self.max_block_bytes // row_bytes)} rows per block"
                     + ("" if self.max_block_bytes >= row_bytes else
                        " (one row alone is too large: store the matrix transposed)"),
                field=field)
        blocks = -(-m // rows)
        if blocks > self.max_blocks:
            raise UploadError(
                422, f"{m} rows in blocks of {rows} make {blocks} blocks, more than "
                     f"SVDSERVE_MAX_CHUNKS={self.max_blocks}; use at least "
                     f"{-(-m // self.max_blocks)} rows per block", field=field)

    def _check_name(self, tenant: str, name: str) -> None:
        if os.path.exists(os.path.join(self.root, tenant, name)) or any(
                r.name == name for r in self.list(tenant)):
            raise UploadError(409, f"an upload named {name!r} exists already; delete it "
                                   "(DELETE /v1/uploads/{id}) or choose another name",
                              field="body.name")

    def usage(self, tenant: str) -> int:
        """Raw bytes the tenant's uploads (committed or not) hold."""
        return sum(r.nbytes for r in self.list(tenant))

    def _check_quota(self, tenant: str, requested: int) -> None:
        used = self.usage(tenant)
        if used + requested > self.quota_bytes:
            raise UploadError(
                413, f"this upload needs {requested} bytes but the tenant's uploads hold "
                     f"{used} of {self.quota_bytes} bytes (SVDSERVE_UPLOAD_QUOTA_BYTES); "
                     "delete uploads you no longer need (DELETE /v1/uploads/{id})",
                field="body.shape",
                extra={"used": used, "requested": requested, "limit": self.quota_bytes})

    # ------------------------------------------------------------------ blocks
    def put_block(self, rec: UploadRecord, i: int, data: bytes | bytearray, digest: str) -> bool:
        """Store block ``i`` after checking its bytes against ``digest`` (SHA-256, hex).

        Returns True when written, False when the same block was received
        before (a no-op). Raises :class:`UploadError` 400 when the bytes do
        not match the digest, 409 when a different block ``i`` was received
        before.
        """
        import zarr

        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise UploadError(
                400, f"block {i} does not match its checksum (SHA-256 of the body is {actual}, "
                     f"the header says {digest}): it was corrupted on the way; send it again",
                field="header.content-digest")
        with self.lock(rec.tenant, rec.id, i):
            known = self._known_digest(rec, i)
            if known is not None:
                if known == digest:
                    return False
                raise UploadError(
                    409, f"block {i} was received before with SHA-256 {known}; this one has "
                         f"{digest}. Blocks are write-once: delete the upload and start "
                         "again to change its data", field="path.block",
                    extra={"block": i, "received_sha256": known, "sent_sha256": digest})
            if rec.state != "uploading" or not os.path.isdir(self.staging(rec)):
                raise UploadError(409, f"upload {rec.id} is {rec.state}; it takes no blocks")
            start, stop = rec.rows(i)
            try:
                if rec.format == "csr":
                    self._write_sparse(rec, i, data)
                else:
                    block = np.frombuffer(data, dtype=np.dtype(rec.dtype).newbyteorder("<"))
                    # Every block is stored, zeros too: a strict reader then finds every chunk.
                    z = zarr.open_array(self.staging(rec), mode="r+").with_config(
                        {"write_empty_chunks": True})
                    z[start:stop] = block.reshape(stop - start, rec.shape[1])
                _write_atomic(self._block_file(rec, i), digest.encode())
            except FileNotFoundError as exc:  # deleted or expired meanwhile
                raise UploadError(404, f"upload {rec.id} was deleted while block {i} was "
                                       "being written") from exc
        with self.lock(rec.tenant, rec.id):  # the last activity, for expiry
            fresh = self._load(rec.tenant, rec.id)
            if fresh is not None and fresh.state == "uploading":
                fresh.updated_at = time.time()
                self._save(fresh)
        return True

    def _write_sparse(self, rec: UploadRecord, i: int, data: bytes | bytearray) -> None:
        """Check CSR block ``i`` (422 naming ``body.indptr``/``body.indices``), then write it;
        one block of an upload at a time, as neighbours share Zarr chunks."""
        start, stop = rec.rows(i)
        try:
            indptr, indices, values = sparse.parse_block(
                data, start=start, stop=stop, nnz=rec.block_nnz[i], n=rec.shape[1],
                dtype=rec.dtype, index_dtype=rec.index_dtype)
        except sparse.SparseBlockError as exc:
            raise UploadError(422, str(exc), field=exc.field, extra={"block": i}) from exc
        with self._csr_writes[hash((rec.tenant, rec.id)) % len(self._csr_writes)]:
            sparse.write_block(self.staging(rec), start=start, offset=rec.offset(i),
                               indptr=indptr, indices=indices, values=values)

    def _known_digest(self, rec: UploadRecord, i: int) -> str | None:
        try:
            with open(self._block_file(rec, i)) as f:
                return f.read().strip()
        except FileNotFoundError:
            return None

    # ------------------------------------------------------------------ commit
    def commit(self, rec: UploadRecord) -> UploadRecord:
        """Move the complete staging array into place; idempotent once committed.

        Raises :class:`UploadError` 409 naming the missing blocks, or when
        the name was taken meanwhile.
        """
        import zarr

        with self.lock(rec.tenant, rec.id):
            rec = self._load(rec.tenant, rec.id) or rec
            if rec.state == "committed":
                return rec
            got = self.digests(rec)
            missing = [i for i in range(rec.n_blocks) if i not in got]
            if missing:
                shown = ", ".join(map(str, missing[:20])) + (", ..." if len(missing) > 20 else "")
                raise UploadError(
                    409, f"{len(missing)} of {rec.n_blocks} blocks are missing ({shown}); "
                         "send them (PUT /v1/uploads/{id}/blocks/{i}), then commit again",
                    extra={"missing_blocks": ranges(missing)})
            digest = hashlib.sha256("".join(got[i] for i in range(rec.n_blocks)).encode())
            if rec.format == "csr":
                z = zarr.open_group(self.staging(rec), mode="r+")
                z.update_attributes(sparse.encoding_attributes(rec.shape))
            else:
                z = zarr.open_array(self.staging(rec), mode="r+")
            z.update_attributes({"svdserve_upload": {
                "id": rec.id, "name": rec.name, "created_at": rec.created_at,
                "block_rows": rec.block_rows, "blocks_sha256": digest.hexdigest()}})
            target = self.target(rec)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if os.path.exists(target):
                raise UploadError(409, f"{rec.name!r} exists already; delete it first",
                                  field="body.name")
            os.rename(self.staging(rec), target)
            self._finish_commit(rec)
        return rec

    def _finish_commit(self, rec: UploadRecord) -> None:
        rec.state, rec.source = "committed", self.target(rec)
        rec.committed_at = rec.committed_at or time.time()
        self._save(rec)

    # ------------------------------------------------------------------ delete, expiry
    def delete(self, rec: UploadRecord) -> None:
        """Delete the upload; a committed array is moved out of sight first, then removed."""
        with self.lock(rec.tenant, rec.id):
            self._remove(rec)

    def _remove(self, rec: UploadRecord) -> None:
        folder = self._dir(rec.tenant, rec.id)
        if rec.state == "committed" and os.path.isdir(self.target(rec)):
            os.rename(self.target(rec), os.path.join(folder, f"deleted-{uuid.uuid4().hex}"))
        shutil.rmtree(folder, ignore_errors=True)

    def _expired(self, rec: UploadRecord, now: float) -> bool:
        return rec.state == "uploading" and now - rec.updated_at > self.expiry

    def sweep(self, tenant: str | None = None, now: float | None = None) -> int:
        """Delete expired uncommitted uploads (of one tenant, or of all); returns how many.

        Each record is read again under its upload's lock, so a block that
        arrived since keeps the upload. A directory without a record older
        than the expiry goes too: what a block write leaves when its upload
        is deleted meanwhile (zarr creates the chunk's folders again).
        """
        now = time.time() if now is None else now
        try:
            tenants = [tenant] if tenant else os.listdir(self.state_root)
        except FileNotFoundError:
            return 0
        removed = 0
        for t in tenants:
            try:
                names = os.listdir(os.path.join(self.state_root, t))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for name in filter(ID_PATTERN.match, names):
                with self.lock(t, name):
                    rec = self._load(t, name)
                    if rec is None:
                        removed += self._remove_orphan(t, name, now)
                    elif self._expired(rec, now):
                        self._remove(rec)
                        removed += 1
        return removed

    def _remove_orphan(self, tenant: str, upload_id: str, now: float) -> int:
        """Remove an upload directory without ``upload.json`` untouched for the expiry
        (younger: an upload being created); 1 if removed."""
        folder = self._dir(tenant, upload_id)
        try:
            stale = now - os.path.getmtime(folder) > self.expiry
        except FileNotFoundError:
            return 0
        if stale:
            shutil.rmtree(folder, ignore_errors=True)
        return int(stale)
