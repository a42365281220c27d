"""HTTP routes of matrices uploaded block by block: ``/v1/uploads``.

::

    POST   /v1/uploads                      {name, shape, dtype, block_rows?} -> 201, Location
                                            (sparse: + format="csr", block_nnz, index_dtype)
    PUT    /v1/uploads/{id}/blocks/{i}      raw little-endian C-order bytes of row block i,
                                            with Content-Digest: sha-256=:<base64>: (RFC 9530)
                                            or X-Checksum-SHA256: <hex>; 201 new, 200 repeat
    GET    /v1/uploads/{id}                 which blocks are received / missing (to resume)
    POST   /v1/uploads/{id}/commit          all blocks present -> the array moves into place
    GET    /v1/uploads                      the tenant's uploads
    DELETE /v1/uploads/{id}                 delete (a committed array too)

A sparse matrix (``format="csr"``) goes in row blocks of CSR arrays and is
committed as AnnData's CSR group, never densified
(:mod:`svdserve.service._upload_sparse`). A committed upload is an ordinary
Zarr v3 array (or that group); its ``source`` is what a
job names as ``source.url``, and only its tenant may read it (another
tenant's submit gets the 404 of a missing path, :func:`check_source`).
Storage, quota and expiry: :mod:`svdserve.service._upload_store`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import os
import re
import time
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo,
                      field_validator)
from starlette.requests import ClientDisconnect

from ._auth import Tenant
from ._problems import ProblemError, openapi_problems
from ._sandbox import Sandbox, SandboxError
from ._settings import Settings
from ._upload_sparse import INDEX_DTYPES
from ._upload_store import (NAME_PATTERN, UploadError, UploadRecord, UploadStore, check_dtype,
                            ranges)

__all__ = ["router", "UploadCreate", "UploadPublic", "UploadList", "BlockPublic",
           "make_store", "is_block_upload", "check_source"]

_BLOCK_PATH = re.compile(r"^/v1/uploads/[^/]+/blocks/[^/]+$")
#: Seconds between two sweeps of every tenant's expired uploads (reading an
#: expired upload, or listing, drops it at once).
SWEEP_INTERVAL = 60.0

_DESCRIPTIONS = {
    400: "The block does not match its checksum (corrupted in transit): send it again",
    401: "Missing or invalid bearer token",
    404: "No such upload (or another tenant's, or expired)",
    409: "Name taken, blocks missing at commit, or a block re-sent with different content",
    413: "The tenant's upload quota would be exceeded (`used`, `requested`, `limit`)",
    422: "Validation failed; `errors` names each field (a block: its expected byte count)",
}


def _problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    return openapi_problems(_DESCRIPTIONS, *codes)


# ---------------------------------------------------------------------- schemas
def _shape(value: list[int]) -> list[int]:
    if len(value) != 2 or min(value) < 1:
        raise ValueError(f"shape must be [rows, columns], both >= 1; got {value!r} (a vector "
                         "is uploaded as one column: [m, 1])")
    return value


class UploadCreate(BaseModel):
    """A matrix to upload: its name, shape, dtype and row blocks."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"name": "A", "shape": [100000, 500], "dtype": "float64"}]})

    name: str = Field(pattern=NAME_PATTERN, description="The array's name: letters, digits, "
                      "'_', '.', '-'; `.zarr` is appended when missing.", examples=["A"])
    shape: Annotated[list[Annotated[int, Field(strict=True, le=2**53)]],
                     AfterValidator(_shape)] = Field(description="[rows, columns].")
    dtype: str = Field(default="float64", max_length=32,
                       description="A NumPy dtype of real numbers (float64, float32, int64, "
                                   "uint8, bool, ...); blocks are sent little-endian.")
    block_rows: int | None = Field(
        default=None, strict=True, ge=1,
        description="Rows per block (one Zarr chunk of whole rows); default: about "
                    "SVDSERVE_UPLOAD_BLOCK_BYTES of whole rows. Required with `csr`.")
    format: Literal["dense", "csr"] = Field(
        default="dense", description="`csr`: a sparse matrix, sent as CSR row blocks (each "
        "body: int64 indptr from 0, then indices, then values) and stored as AnnData's CSR "
        "Zarr group.")
    block_nnz: list[Annotated[int, Field(strict=True, ge=0, le=2**53)]] | None = Field(
        default=None, max_length=1_000_000,
        description="`csr` only: the non-zeros of each block, in order.")
    index_dtype: Literal[INDEX_DTYPES] = Field(  # type: ignore[valid-type]
        default="int64", description="`csr` only: the dtype of the column indices.")

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, value: str) -> str:
        return check_dtype(value)

    @field_validator("block_nnz")
    @classmethod
    def _block_nnz(cls, value: list[int] | None, info: ValidationInfo) -> list[int] | None:
        if value is not None and info.data.get("format") != "csr":
            raise ValueError("block_nnz applies to format 'csr' only; drop it or declare "
                             "format 'csr'")
        return value


class UploadLinks(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    self_: str = Field(alias="self")
    blocks: str = Field(description="Template: PUT the bytes of block i here.")
    commit: str


class UploadPublic(BaseModel):
    """An upload as the API shows it."""

    id: str
    name: str
    state: Literal["uploading", "committed"]
    shape: list[int]
    dtype: str
    block_rows: int
    n_blocks: int
    block_bytes: int = Field(description="Bytes of a full block (the last may be shorter).")
    nbytes: int = Field(description="Raw bytes: what the quota counts.")
    n_received: int
    received: list[list[int]] = Field(description="Received blocks as [start, stop) ranges.")
    missing: list[list[int]] = Field(description="Blocks still to send, as [start, stop) "
                                                 "ranges.")
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None = Field(description="When an uncommitted upload is deleted "
                                                    "unless a block arrives first.")
    committed_at: datetime | None = None
    source: str | None = Field(default=None, description="After the commit: the path a job "
                                                         "names as `source.url`.")
    format: Literal["dense", "csr"] = "dense"
    nnz: int | None = Field(default=None, description="`csr`: the non-zeros.")
    index_dtype: str | None = None
    block_nnz: list[int] | None = None
    block_sha256: dict[int, str] | None = Field(
        default=None, description="With `?digests=true`: the SHA-256 (hex) of each received "
                                  "block, so a resuming client can check its data is the same.")
    links: UploadLinks


class UploadList(BaseModel):
    items: list[UploadPublic]
    used_bytes: int = Field(description="Raw bytes the tenant's uploads hold.")
    quota_bytes: int


class BlockPublic(BaseModel):
    upload: str
    block: int
    rows: list[int] = Field(description="[start, stop) rows of the matrix.")
    bytes: int
    sha256: str
    replayed: bool = Field(description="True when the same block had been received before "
                                       "(nothing was written).")


# ---------------------------------------------------------------------- helpers
def make_store(settings: Settings) -> UploadStore:
    """The upload store configured by ``settings``."""
    return UploadStore(settings.uploads_root, quota_bytes=settings.upload_quota_bytes,
                       expiry=settings.upload_expiry, block_bytes=settings.upload_block_bytes,
                       max_block_bytes=settings.upload_max_block_bytes,
                       max_blocks=settings.max_chunks)


def is_block_upload(scope: dict) -> bool:
    """True for ``PUT /v1/uploads/{id}/blocks/{i}``: its body is streamed, not buffered."""
    return scope.get("method") == "PUT" and bool(_BLOCK_PATH.match(scope.get("path", "")))


def _when(t: float | None) -> datetime | None:
    return None if t is None else datetime.fromtimestamp(t, timezone.utc)


def to_public(store: UploadStore, rec: UploadRecord, *, digests: bool = False) -> UploadPublic:
    """The upload as the API shows it (``digests``: with each received block's SHA-256)."""
    got = store.received(rec)
    base = f"/v1/uploads/{rec.id}"
    return UploadPublic.model_validate({
        "id": rec.id, "name": rec.name, "state": rec.state, "shape": rec.shape,
        "dtype": rec.dtype, "block_rows": rec.block_rows, "n_blocks": rec.n_blocks,
        "block_bytes": rec.block_nbytes(0), "nbytes": rec.nbytes, "n_received": len(got),
        "received": ranges(got), "missing": ranges(set(range(rec.n_blocks)) - set(got)),
        "created_at": _when(rec.created_at), "updated_at": _when(rec.updated_at),
        "expires_at": _when(rec.updated_at + store.expiry) if rec.state == "uploading"
        else None,
        "committed_at": _when(rec.committed_at), "source": rec.source,
        "block_sha256": store.digests(rec) if digests else None, "format": rec.format,
        "nnz": rec.nnz, "index_dtype": rec.index_dtype, "block_nnz": rec.block_nnz,
        "links": {"self": base, "blocks": base + "/blocks/{i}", "commit": base + "/commit"},
    })


def _problem(exc: UploadError) -> ProblemError:
    errors = [{"field": exc.field, "message": str(exc)}] if exc.field else None
    return ProblemError(exc.status, str(exc), errors=errors, extra=exc.extra or None)


async def _store(request: Request) -> UploadStore:
    """The store; every :data:`SWEEP_INTERVAL` seconds a request first deletes every
    tenant's expired uploads (an expired upload is also dropped whenever it is read)."""
    store: UploadStore = request.app.state.uploads
    state = request.app.state
    now = time.monotonic()
    if now - getattr(state, "uploads_swept", -SWEEP_INTERVAL) >= SWEEP_INTERVAL:
        state.uploads_swept = now
        await asyncio.to_thread(store.sweep)
    return store


Store = Annotated[UploadStore, Depends(_store)]
UploadId = Annotated[str, Path(description="Upload id (32 hex digits).", max_length=64)]

router = APIRouter(prefix="/v1", tags=["uploads"], responses=_problems(401))


async def _get(store: UploadStore, tenant: str, upload_id: str) -> UploadRecord:
    rec = await asyncio.to_thread(store.get, tenant, upload_id)
    if rec is None:
        raise ProblemError(404, f"no upload {upload_id!r} (for this tenant); uncommitted uploads "
                                f"are deleted after {store.expiry:g} s without a new block")
    return rec


# ---------------------------------------------------------------------- routes
@router.post("/uploads", status_code=201, response_model=UploadPublic,
             summary="Create an upload", responses=_problems(409, 413, 422))
async def create_upload(body: UploadCreate, response: Response, tenant: Tenant,
                        store: Store) -> UploadPublic:
    """Reserve the upload (the quota counts its raw bytes from now on) and answer 201.

    Send its blocks next, then commit. A name already used by one of the
    tenant's uploads is a 409; a shape beyond the quota is a 413 with
    `used`, `requested` and `limit`.
    """
    try:
        rec = await asyncio.to_thread(functools.partial(
            store.create, tenant, body.name, body.shape, body.dtype, body.block_rows,
            format=body.format, block_nnz=body.block_nnz, index_dtype=body.index_dtype))
    except UploadError as exc:
        raise _problem(exc) from exc
    response.headers["Location"] = f"/v1/uploads/{rec.id}"
    return await asyncio.to_thread(to_public, store, rec)


@router.get("/uploads", response_model=UploadList, summary="List the tenant's uploads")
async def list_uploads(tenant: Tenant, store: Store) -> UploadList:
    records = await asyncio.to_thread(store.list, tenant)
    items = [await asyncio.to_thread(to_public, store, r) for r in records]
    return UploadList(items=items, used_bytes=sum(r.nbytes for r in records),
                      quota_bytes=store.quota_bytes)


@router.get("/uploads/{upload_id}", response_model=UploadPublic, summary="Get an upload",
            responses=_problems(404))
async def get_upload(
    upload_id: UploadId, tenant: Tenant, store: Store,
    digests: Annotated[bool, Query(description="Add `block_sha256`: each received block's "
                                               "SHA-256.")] = False,
) -> UploadPublic:
    """The upload with the blocks received and missing: resume by sending the missing ones."""
    rec = await _get(store, tenant, upload_id)
    return await asyncio.to_thread(functools.partial(to_public, digests=digests), store, rec)


def parse_digest(header: str | None, hex_value: str | None) -> str:
    """The SHA-256 (hex) announced by ``Content-Digest`` or ``X-Checksum-SHA256``."""
    if header is not None:
        for item in header.split(","):
            key, _, value = item.strip().partition("=")
            value = value.strip()
            if key.strip().lower() != "sha-256":
                continue
            try:
                raw = base64.b64decode(value[1:-1], validate=True)
            except (binascii.Error, ValueError):
                raw = b""
            if len(value) > 2 and value[0] == value[-1] == ":" and len(raw) == 32:
                return raw.hex()
            break
    if hex_value is not None and re.fullmatch(r"[0-9a-fA-F]{64}", hex_value.strip()):
        return hex_value.strip().lower()
    message = ("each block needs its SHA-256: `Content-Digest: sha-256=:<base64 of the "
               "digest>:` (RFC 9530) or `X-Checksum-SHA256: <64 hex digits>`")
    got = header if header is not None else hex_value
    if got is not None:
        message += f"; got {got!r}"
    raise ProblemError(422, message, errors=[{"field": "header.content-digest",
                                              "message": message}])


async def _read_block(request: Request, rec: UploadRecord, i: int) -> bytearray:
    """The request body, refused (422 naming the block) unless it is exactly the block's size."""
    expected = rec.block_nbytes(i)
    data = bytearray()
    try:
        async for piece in request.stream():
            data += piece
            if len(data) > expected:
                break
    except ClientDisconnect as exc:  # nothing stored; the client sends the block again
        raise ProblemError(400, f"the connection closed after {len(data)} of {expected} bytes "
                                f"of block {i}; nothing was stored") from exc
    if len(data) != expected:
        start, stop = rec.rows(i)
        received = f"{len(data)}" if len(data) <= expected else f"more than {expected}"
        holds = (f"{rec.block_nnz[i]} non-zeros ({rec.dtype}, {rec.index_dtype} indices, "
                 "int64 indptr)" if rec.format == "csr" else f"{rec.shape[1]} {rec.dtype} columns")
        message = (f"block {i} holds rows {start}:{stop} of {holds}: {expected} bytes "
                   f"expected, {received} received")
        raise ProblemError(422, message, errors=[{"field": "body", "message": message}],
                           extra={"block": i, "expected_bytes": expected})
    return data


@router.put("/uploads/{upload_id}/blocks/{block}", status_code=201, response_model=BlockPublic,
            summary="Send one row block",
            responses={200: {"description": "The same block again: nothing written",
                             "model": BlockPublic}, **_problems(400, 404, 409, 422)},
            openapi_extra={"requestBody": {"required": True, "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
async def put_block(
    upload_id: UploadId, block: Annotated[int, Path(ge=0)], request: Request,
    response: Response, tenant: Tenant, store: Store,
    content_digest: Annotated[str | None, Header(
        description="`sha-256=:<base64 of the body's SHA-256>:` (RFC 9530); or send "
                    "X-Checksum-SHA256.")] = None,
    x_checksum_sha256: Annotated[str | None, Header(
        description="The body's SHA-256 as 64 hex digits.")] = None,
) -> BlockPublic:
    """Store block `i`: rows `i*block_rows` to `(i+1)*block_rows` as raw little-endian bytes
    in C order (`application/octet-stream`), exactly `block_bytes` long (the last block:
    its rows only). Sending a block again is a no-op (200); different bytes for a block
    already received are a 409."""
    rec = await _get(store, tenant, upload_id)
    if block >= rec.n_blocks:
        message = f"this upload has {rec.n_blocks} blocks (0 to {rec.n_blocks - 1}); got {block}"
        raise ProblemError(422, message, errors=[{"field": "path.block", "message": message}])
    digest = parse_digest(content_digest, x_checksum_sha256)
    data = await _read_block(request, rec, block)
    try:  # the checksum, the zarr write and the digest file, off the event loop
        written = await asyncio.to_thread(store.put_block, rec, block, data, digest)
    except UploadError as exc:
        raise _problem(exc) from exc
    if not written:
        response.status_code = 200
    start, stop = rec.rows(block)
    return BlockPublic(upload=rec.id, block=block, rows=[start, stop], bytes=len(data),
                       sha256=digest, replayed=not written)


@router.post("/uploads/{upload_id}/commit", response_model=UploadPublic,
             summary="Commit: the array becomes a source", responses=_problems(404, 409))
async def commit_upload(upload_id: UploadId, tenant: Tenant, store: Store) -> UploadPublic:
    """Check every block is present (409 listing the missing ones), write the array's
    attributes and move it into place atomically. Committing again answers the same."""
    rec = await _get(store, tenant, upload_id)
    try:
        rec = await asyncio.to_thread(store.commit, rec)
    except UploadError as exc:
        raise _problem(exc) from exc
    return await asyncio.to_thread(to_public, store, rec)


@router.delete("/uploads/{upload_id}", status_code=204, response_class=Response,
               summary="Delete an upload", responses=_problems(404))
async def delete_upload(upload_id: UploadId, tenant: Tenant, store: Store) -> Response:
    """Delete an upload, committed or not. Jobs that pinned a committed one and have not
    read it yet fail with `storage_error`."""
    rec = await _get(store, tenant, upload_id)
    await asyncio.to_thread(store.delete, rec)
    return Response(status_code=204)


# ---------------------------------------------------------------------- job sources
def check_source(settings: Settings, sandbox: Sandbox, url: str, array: str | None,
                 tenant: str) -> None:
    """A 404 when a job's source lies in another tenant's uploads (or in the staging area).

    Resolved as the submit route resolves it (real paths, so a symlink into
    the uploads root counts where it leads); what the sandbox refuses is
    left to the submit route's own checks.
    """
    try:
        resolved = sandbox.resolve(url, array, check_exists=False)
    except SandboxError:
        return
    if resolved.url.startswith("s3://"):
        return
    root = settings.uploads_root
    own = os.path.join(root, tenant)
    try:
        real = os.path.realpath(resolved.url)
        paths = [real] + ([os.path.realpath(os.path.join(real, array))] if array else [])
    except (OSError, ValueError):
        return  # not a usable path: the submit route's own checks answer it
    for path in paths:
        inside_uploads = path == root or path.startswith(root + os.sep)
        if inside_uploads and not (path == own or path.startswith(own + os.sep)):
            message = f"no such file or directory inside the data roots: {url!r}"
            raise ProblemError(404, message, errors=[{"field": "body.source.url",
                                                      "message": message}])
