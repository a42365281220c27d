"""Pinned sources: a Zarr array identified once, then read exactly as identified.

:func:`pin_source` resolves a Zarr array (a local path, or an fsspec URL
such as ``s3://``) once and records what identifies it:

- its real location, symlinks resolved: never a name that can be re-pointed;
- the SHA-256 digest of its metadata document (``zarr.json`` or ``.zarray``),
  which is also the document the array is validated and decoded from;
- one stamp per chunk key the metadata implies: ``(size, mtime_ns, inode)``
  of the file for local stores, the ETag for object storage, *missing* for
  a key the store lacks.

Reads on the workers go through a guarded store. For every chunk it opens
the pinned location, checks that the file it holds open (``/proc/self/fd``,
symlinks resolved) lies inside the allowed roots, compares the open file's
stamp with the pin and reads exactly that many bytes. Anything else raises
:class:`SourceChangedError` naming the chunk and what changed. A chunk
absent at rest (absent in the pinned listing too) reads as the fill value,
as Zarr says (:meth:`SourcePin.absent_chunks` counts them), unless
``missing_chunks="error"``: then it raises :class:`InvalidInputError`. A
chunk that vanishes or appears after pinning is a :class:`SourceChangedError`
in either mode.
:meth:`SourcePin.verify` re-lists the whole source; :func:`svd` calls it
before the first read and after the last.

Cost: pinning looks only at the chunk keys the metadata implies (one
``lstat`` per key and per directory, a ``realpath`` only for a symlink);
nothing else under the array is walked. It is bounded by the chunk-count
limit, which is checked from the metadata *before* anything is listed.
The only thing cached on a worker is parsed metadata, keyed by the
document's digest.

Object storage: the ETags are compared before the first read and after the
last (a per-read check would double the requests); a chunk that vanishes
mid-run fails the read.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import io
import itertools
import json
import math
import os
import posixpath
import stat
import threading
import zlib
from dataclasses import dataclass, field, replace

import numpy as np

from ._errors import (
    InvalidInputError,
    SourceAccessError,
    SourceChangedError,
    SourceNotFoundError,
    StorageError,
    SVDError,
)
from ._missing import absent_chunks_note, json_fill, missing_chunks_mode

__all__ = ["Guard", "SourceRef", "SourcePin", "pin_source", "Limits", "check_limits",
           "open_pinned", "chunk_region"]

_META = {3: "zarr.json", 2: ".zarray"}


@dataclass(frozen=True)
class Limits:
    """Sanity limits on a source, checked from its metadata alone.

    Attributes
    ----------
    max_chunks : int, default=1_000_000
        Chunk keys the metadata may imply (each is stat-ed once when pinned).
    max_panels : int, default=1_000_000
        Panels of the plan (one task per panel and pass).
    max_band_bytes : int, default=4 GiB
        Bytes of one chunk as float64: a compressed chunk is decoded whole,
        so a worker must hold it (raw chunks are read in slices).
    """

    max_chunks: int = 1_000_000
    max_panels: int = 1_000_000
    max_band_bytes: int = 4 * 2**30


def check_limits(shape, chunks, panel_bytes=None, limits=None, *, what="the source",
                 n_chunks=None, plain=False):
    """Refuse a shape/chunk layout that is degenerate or too large, from metadata alone.

    Parameters
    ----------
    shape, chunks : tuple of int
        ``(m, n)`` and the chunk shape of the stored array (of its matrix
        view, :class:`~._view.MatrixView`, for an N-D variable).
    panel_bytes : int, optional
        Panel byte budget (default: the core's).
    limits : Limits, optional
    n_chunks : int, optional
        Stored chunk keys, when they are not the 2-D grid of ``chunks``
        (an N-D variable).
    plain : bool, default=False
        The chunks are raw bytes, read in slices: no chunk is held whole.

    Raises
    ------
    InvalidInputError
        ``field="source"``; the message gives the numbers.
    """
    from ._layout import plan_layout
    from ._source import SourceInfo

    limits = limits or Limits()
    m, n = (int(x) for x in shape)
    if len(chunks) != 2 or any(int(c) < 1 for c in chunks):
        raise InvalidInputError(
            f"{what} has chunk shape {list(chunks)}; every chunk size must be >= 1. "
            "Rewrite the array with positive chunk sizes.", field="source")
    cm, cn = (int(c) for c in chunks)
    if n_chunks is None:
        n_chunks = -(-m // cm) * -(-n // cn)
    if n_chunks > limits.max_chunks:
        raise InvalidInputError(
            f"{what} (shape {[m, n]}, chunks {[cm, cn]}) has {n_chunks:.4g} chunks; at most "
            f"{limits.max_chunks} are accepted. Rewrite it with larger chunks.", field="source")
    one = min(cm, m) * min(cn, n) * 8
    if not plain and one > limits.max_band_bytes:
        raise InvalidInputError(
            f"{what} (shape {[m, n]}, chunks {[cm, cn]}): one chunk, which must be decoded "
            f"whole, is {one / 2**20:.4g} MiB as float64, more than the "
            f"{limits.max_band_bytes / 2**20:.4g} MiB a worker may hold; rewrite it with "
            "smaller chunks (or uncompressed, to be read in slices).", field="source")
    info = SourceInfo((m, n), "float64", (cm, cn), plain=plain)
    n_panels = plan_layout(info, panel_bytes=panel_bytes).n_panels
    if n_panels > limits.max_panels:
        raise InvalidInputError(
            f"{what} (shape {[m, n]}, chunks {[cm, cn]}) makes {n_panels:.4g} panels; at most "
            f"{limits.max_panels} are accepted.", field="source")
    return n_chunks, n_panels


# --------------------------------------------------------------------------- sandbox at read time


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


@dataclass(frozen=True)
class Guard:
    """Where reads may land: inside ``roots`` (if any), never inside ``forbidden``.

    Paths are real paths (symlinks resolved). An empty ``roots`` allows any
    local path (the core used as a library).
    """

    roots: tuple = ()
    forbidden: tuple = ()

    def violation(self, real: str) -> str | None:
        """Why ``real`` may not be read, or None."""
        if self.roots and not any(_within(real, r) for r in self.roots):
            return f"resolves to {real!r}, outside the data roots"
        for bad in self.forbidden:
            if _within(real, bad) or _within(bad, real):
                return f"resolves to {real!r}, inside the service's own database or results"
        return None


# --------------------------------------------------------------------------- identity


@dataclass(frozen=True)
class SourceRef:
    """What a worker needs to open a pinned array (shipped with every panel).

    Attributes
    ----------
    url : str
        The array's own location: a real local path or an fsspec URL.
    remote : bool
    zarr_format : int
    meta_digest : str
        SHA-256 of the metadata document.
    shape, key_chunks : tuple of int
        Array shape and the chunk shape of its *stored keys* (the shard shape
        for sharded arrays).
    listing_digest : str
        SHA-256 of the chunk stamps.
    guard : Guard
    options_key : str
        fsspec storage options as JSON (remote only).
    allow_missing : bool
        A chunk absent at rest reads as the fill value (``missing_chunks="fill"``,
        the default); False is ``missing_chunks="error"``.
    name : str
        How messages name the array (the URL as given, plus the array path).
    view : MatrixView or None
        How an N-D variable is read as a matrix (``sample_dims``); None for a
        2-D array read as itself. ``shape`` and ``key_chunks`` stay the
        stored N-D ones; the matrix shape is ``view.shape``.
    """

    url: str
    remote: bool
    zarr_format: int
    meta_digest: str
    shape: tuple
    key_chunks: tuple
    listing_digest: str
    guard: Guard = field(default_factory=Guard)
    options_key: str = "{}"
    allow_missing: bool = True
    name: str = ""
    view: object = None  # MatrixView

    @property
    def matrix_view(self):
        """The view (the identity view of a 2-D array without one)."""
        from ._view import identity_view

        return self.view if self.view is not None else identity_view(self.shape,
                                                                     self.key_chunks)

    @property
    def grid(self):
        return tuple(-(-s // c) for s, c in zip(self.shape, self.key_chunks))

    @property
    def meta_key(self):
        return _META[self.zarr_format]


def chunk_box(ref, idx):
    """The stored selection (one slice per axis) of chunk key ``idx``."""
    return tuple(slice(i * c, min((i + 1) * c, s))
                 for i, c, s in zip(idx, ref.key_chunks, ref.shape))


def chunk_region(ref, *idx):
    """``"rows a:b, columns c:d"`` of stored chunk ``(i, j)``; for a variable read
    through a view, ``"time a:b, lat c:d, …"`` by dimension name."""
    box = chunk_box(ref, idx)
    names = ("rows", "columns") if ref.view is None else ref.view.dims
    return ", ".join(f"{name} {b.start}:{b.stop}" for name, b in zip(names, box))


@dataclass(frozen=True, eq=False)
class SourcePin:
    """A pinned Zarr array: :class:`SourceRef` plus one stamp per chunk key.

    Attributes
    ----------
    ref : SourceRef
    stamps : ndarray
        Local: int64 of shape (gr, gc, 3), ``(size, mtime_ns, inode)``, size
        -1 for a missing chunk. Remote: str of shape (gr, gc), the ETag,
        ``""`` for a missing chunk.
    info : SourceInfo
    """

    ref: SourceRef
    stamps: np.ndarray
    info: object

    # ---------------------------------------------------------------- state
    def missing_mask(self):
        return self.stamps[..., 0] < 0 if not self.ref.remote else self.stamps == ""

    def first_missing(self):
        """Grid index (``(i, j)`` for 2-D) of the first chunk key the store lacks
        (row-major), or None."""
        mask = self.missing_mask()
        if not mask.any():
            return None
        return tuple(int(x) for x in np.argwhere(mask)[0])

    def absent_chunks(self):
        """How many stored chunk keys the pinned listing lacks, and what they read as.

        Returns
        -------
        dict
            ``{"n_chunks": int, "absent_chunks": int, "fill_value": float or str,
            "missing_chunks": "fill" or "error", "note": str or None}``
            (``fill_value`` as :func:`~._missing.json_fill` gives it: JSON-safe;
            ``note``: "12 of 400 chunks absent, read as fill value 0.0 (…)").
        """
        fill = _meta_of(self.ref).fill_value
        mask = self.missing_mask()
        out = {"n_chunks": int(mask.size), "absent_chunks": int(mask.sum()),
               "fill_value": json_fill(0.0 if fill is None else fill),
               "missing_chunks": "fill" if self.ref.allow_missing else "error"}
        out["note"] = absent_chunks_note(out["absent_chunks"], out["n_chunks"],
                                         out["fill_value"])
        return out

    def check_missing(self):
        """Raise :class:`InvalidInputError` for a chunk absent at rest, in the strict mode
        (``missing_chunks="error"``)."""
        where = self.first_missing()
        if where is None or self.ref.allow_missing:
            return
        n_missing = int(self.missing_mask().sum())
        raise InvalidInputError(_missing_message(self.ref, where, n_missing),
                                field="source")

    def with_options(self, *, allow_missing=None, name=None, storage_options=None):
        """A copy with ``allow_missing`` / ``name`` / ``storage_options`` replaced."""
        from ._source import _options_key

        kw = {}
        if storage_options is not None and self.ref.remote:
            kw["options_key"] = _options_key(storage_options)
        if allow_missing is not None:
            kw["allow_missing"] = bool(allow_missing)
        if name is not None:
            kw["name"] = name
        return replace(self, ref=replace(self.ref, **kw)) if kw else self

    def verify(self):
        """Re-list the source and compare it with the pin.

        Raises
        ------
        SourceChangedError
            The location now resolves elsewhere (or outside the roots), the
            metadata document changed, or a chunk changed, vanished or appeared.
        """
        ref = self.ref
        if not ref.remote:
            real = os.path.realpath(ref.url)
            if real != ref.url:
                why = ref.guard.violation(real) or f"now resolves to {real!r}"
                raise SourceChangedError(
                    f"{ref.name} changed since the job was submitted: its location {ref.url!r} "
                    f"{why}. Resubmit once the input is final.")
        meta = _read_checked_meta(ref)
        now = _stamps(ref, meta, at_pin=False)
        if not np.array_equal(now, self.stamps):
            diff = np.argwhere(now != self.stamps if ref.remote
                               else (now != self.stamps).any(axis=-1))
            where = tuple(int(x) for x in diff[0])
            raise SourceChangedError(_change_message(
                ref, meta.encode_chunk_key(where), where, self.stamps[where], now[where],
                n_changed=len(diff)))

    def panel_expect(self, start, stop, wide):
        """Stamps of the chunk keys covering rows ``start:stop`` of the tall view.

        Returns
        -------
        tuple of (key, ((i, j), stamp)), in grid order (``dict()`` of it maps keys)
        """
        m, n = self.ref.matrix_view.shape
        return (self.box_expect((0, m), (start, stop)) if wide
                else self.box_expect((start, stop), (0, n)))

    def box_expect(self, rows, cols):
        """Stamps of the chunk keys covering the 2-D box ``rows × cols`` of the matrix.

        The box is given in the matrix view (samples × features for an N-D
        variable); what :func:`read_region` reads with a 2-D selection of it.

        Parameters
        ----------
        rows, cols : (int, int)
            Half-open ranges.

        Returns
        -------
        tuple of (key, (index, stamp)), in grid order (``dict()`` of it maps keys);
        ``index`` is the chunk's grid index (``(i, j)`` for a 2-D array).
        """
        ref = self.ref
        meta = _meta_of(ref)
        ranges = ref.matrix_view.key_ranges(rows, cols, ref.key_chunks)
        return tuple((meta.encode_chunk_key(c), (c, _stamp_value(self.stamps[c], ref.remote)))
                     for c in itertools.product(*ranges))

    # ---------------------------------------------------------------- storage
    def to_json(self):
        """A JSON-able dict (stamps compressed); :meth:`from_json` inverts it.

        Storage options (credentials) are left out: give them again with
        :meth:`with_options` after :meth:`from_json`.
        """
        buf = io.BytesIO()
        np.save(buf, self.stamps, allow_pickle=False)
        ref = self.ref
        return {
            "v": 1, "url": ref.url, "remote": ref.remote, "zarr_format": ref.zarr_format,
            "meta_digest": ref.meta_digest, "shape": list(ref.shape),
            "key_chunks": list(ref.key_chunks), "listing_digest": ref.listing_digest,
            "roots": list(ref.guard.roots), "forbidden": list(ref.guard.forbidden),
            "allow_missing": ref.allow_missing,
            "name": ref.name, "info": _info_json(self.info),
            "view": None if ref.view is None else ref.view.to_json(),
            "stamps": base64.b64encode(zlib.compress(buf.getvalue(), 6)).decode("ascii"),
        }

    @classmethod
    def from_json(cls, data):
        from ._view import MatrixView

        stamps = np.load(io.BytesIO(zlib.decompress(base64.b64decode(data["stamps"]))),
                         allow_pickle=False)
        ref = SourceRef(
            url=data["url"], remote=data["remote"], zarr_format=data["zarr_format"],
            meta_digest=data["meta_digest"], shape=tuple(data["shape"]),
            key_chunks=tuple(data["key_chunks"]), listing_digest=data["listing_digest"],
            guard=Guard(tuple(data["roots"]), tuple(data["forbidden"])),
            allow_missing=data["allow_missing"],
            name=data["name"],
            view=MatrixView.from_json(data["view"]) if data.get("view") else None)
        return cls(ref, stamps, _info_from_json(data["info"]))


def _info_json(info):
    out = {"shape": list(info.shape), "dtype": info.dtype, "chunks": list(info.chunks),
           "url": info.url, "array": info.array, "zarr_format": info.zarr_format,
           "plain": info.plain}
    for key in ("dims", "nd_shape", "sample_dims", "fill"):
        value = getattr(info, key)
        if value is not None:
            out[key] = list(value)
    if info.notes:
        out["notes"] = list(info.notes)
    return out


def _info_from_json(info):
    from ._source import SourceInfo

    extra = {key: tuple(info[key]) for key in ("dims", "nd_shape", "sample_dims", "fill",
                                                "notes")
             if info.get(key) is not None}
    return SourceInfo(tuple(info["shape"]), info["dtype"], tuple(info["chunks"]), info["url"],
                      info["array"], info["zarr_format"], info.get("plain", False), **extra)


def _stamp_value(value, remote):
    return str(value) if remote else tuple(int(x) for x in value)


def _missing_message(ref, where, n_missing):
    meta = _meta_of(ref)
    key = meta.encode_chunk_key(tuple(where))
    more = f" ({n_missing} chunks are missing in all)" if n_missing > 1 else ""
    return (f"chunk {key!r} of {ref.name} ({chunk_region(ref, *where)}) is missing from the "
            f"store{more}; an incomplete upload? Finish writing the array, or submit with "
            "missing_chunks='fill' (the default) to read missing chunks as the fill value, "
            "as Zarr does.")


def _describe(stamp, remote):
    if remote:
        return "missing" if stamp == "" else f"ETag {stamp}"
    size, mtime, ino = (int(x) for x in stamp)
    if size < 0:
        return "missing"
    return f"{size} bytes, mtime_ns {mtime}, inode {ino}"


def _change_message(ref, key, where, before, after, n_changed=1):
    before_s, after_s = _describe(before, ref.remote), _describe(after, ref.remote)
    if after_s == "missing":
        what = "vanished"
    elif before_s == "missing":
        what = "appeared"
    else:
        what = "changed"
    more = f"; {n_changed} chunks differ in all" if n_changed > 1 else ""
    return (f"{ref.name} changed since the job was submitted: chunk {key!r} "
            f"({chunk_region(ref, *where)}) {what} (was {before_s}, now {after_s}){more}. "
            "Resubmit once the input is final.")


# --------------------------------------------------------------------------- local files


def _fd_path(fd, path):
    """The real path of an open file (Linux: exact; elsewhere: realpath of ``path``)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return os.path.realpath(path)


def _open_guarded(ref, path, what, *, at_pin):
    """Open ``path`` read-only; the file actually opened must pass the guard."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        real = _fd_path(fd, path)
        why = ref.guard.violation(real)
        if why is not None:
            if at_pin:
                raise SourceAccessError(f"{what} of {ref.name} {why}; sources must lie inside "
                                        "the data roots.", field="source.url")
            raise SourceChangedError(f"{ref.name} changed since the job was submitted: {what} "
                                     f"{why}. It was not read.")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_fd(fd, size, offset=0):
    parts, got = [], 0
    while got < size:
        chunk = os.pread(fd, size - got, offset + got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _read_meta(ref, *, at_pin):
    """The metadata document's bytes, read through the guard."""
    if ref.remote:
        fs, path = _remote_fs(ref)
        try:
            return fs.cat_file(f"{path}/{ref.meta_key}")
        except FileNotFoundError as exc:
            if at_pin:
                raise SourceNotFoundError(f"no Zarr array at {ref.name}.",
                                          field="source.url") from exc
            raise SourceChangedError(
                f"{ref.name} vanished since the job was submitted: its metadata document "
                f"{ref.meta_key} is gone.") from exc
    path = os.path.join(ref.url, ref.meta_key)
    try:
        fd = _open_guarded(ref, path, f"the metadata document {ref.meta_key}", at_pin=at_pin)
    except (FileNotFoundError, NotADirectoryError) as exc:
        if at_pin:
            raise SourceNotFoundError(f"no Zarr array at {ref.name}.",
                                      field="source.url") from exc
        raise SourceChangedError(
            f"{ref.name} vanished since the job was submitted: {path!r} is gone.") from exc
    try:
        size = os.fstat(fd).st_size
        if size > 16 * 2**20:
            raise InvalidInputError(f"the metadata document of {ref.name} is {size} bytes; "
                                    "that is not Zarr array metadata.", field="source")
        return _read_fd(fd, size)
    finally:
        os.close(fd)


def _escape(ref, what, why, *, at_pin):
    if at_pin:
        return SourceAccessError(f"{what} inside {ref.name} {why}; sources must lie inside the "
                                 "data roots.", field="source.url")
    return SourceChangedError(f"{ref.name} changed since the job was submitted: {what} "
                              f"now {why}.")


def _real_dir(ref, rel, dirs, *, at_pin):
    """Real path of directory ``rel`` under the array (None if it is missing).

    Resolved one component at a time from its parent (memoised in ``dirs``):
    one ``lstat`` per directory, a full ``realpath`` only for a symlink.
    """
    if rel in dirs:
        return dirs[rel]
    if rel == "":
        real = os.path.realpath(ref.url)
    else:
        parent, name = posixpath.split(rel)
        base = _real_dir(ref, parent, dirs, at_pin=at_pin)
        real = None
        if base is not None:
            path = f"{base}/{name}"
            try:
                st = os.lstat(path)
            except (FileNotFoundError, NotADirectoryError):
                st = None
            if st is not None and stat.S_ISLNK(st.st_mode):
                real = os.path.realpath(path)
            elif st is not None and stat.S_ISDIR(st.st_mode):
                real = path
    if real is not None:
        why = ref.guard.violation(real)
        if why is not None:
            raise _escape(ref, f"directory {rel or '.'!r}", why, at_pin=at_pin)
    dirs[rel] = real
    return real


def _local_stamp(ref, key, dirs, *, at_pin):
    """``(size, mtime_ns, inode)`` of one chunk file, or None when missing.

    Only the key's own path is looked at: its directory is resolved once
    (memoised in ``dirs``) and the file itself resolved only if it is a symlink.
    """
    parent, name = posixpath.split(key)
    base = _real_dir(ref, parent, dirs, at_pin=at_pin)
    if base is None:
        return None
    path = f"{base}/{name}"
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            real = os.path.realpath(path)
            why = ref.guard.violation(real)
            if why is not None:
                raise _escape(ref, f"chunk {key!r} is a symlink that", why, at_pin=at_pin)
            st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _stamps(ref, meta, *, at_pin):
    """The stamp of every chunk key the metadata implies, in grid order."""
    grid = ref.grid
    if ref.remote:
        listing = _remote_listing(ref)
        out = np.full(grid, "", dtype=object)
        for idx in np.ndindex(*grid):
            out[idx] = listing.get(meta.encode_chunk_key(idx), "")
        return out.astype(str) if out.size else np.zeros(grid, dtype="<U1")
    rows = []
    dirs = {}
    missing = (-1, 0, 0)
    for idx in np.ndindex(*grid):
        st = _local_stamp(ref, meta.encode_chunk_key(idx), dirs, at_pin=at_pin)
        rows.append(missing if st is None else st)
    return np.array(rows, dtype=np.int64).reshape(*grid, 3)


def _listing_digest(stamps):
    h = hashlib.sha256(repr(stamps.shape).encode())
    h.update(stamps.tobytes() if stamps.dtype != object else "\n".join(stamps.ravel()).encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- object storage


def _remote_fs(ref):
    import fsspec

    options = json.loads(ref.options_key)
    fs, path = fsspec.core.url_to_fs(ref.url, **options)
    return fs, path.rstrip("/")


def _remote_listing(ref):
    fs, path = _remote_fs(ref)
    try:
        found = fs.find(path, detail=True)
    except FileNotFoundError:
        found = {}
    out = {}
    for full, info in found.items():
        key = full[len(path):].lstrip("/")
        etag = info.get("ETag") or info.get("etag") or info.get("e_tag")
        if etag is None:  # a store without ETags: size and mtime stand in
            etag = f"{info.get('size')}@{info.get('LastModified') or info.get('mtime')}"
        out[key] = str(etag).strip('"')
    return out


# --------------------------------------------------------------------------- pinning


@functools.lru_cache(maxsize=64)
def _parsed(zarr_format, digest, doc):
    from zarr.core.array import parse_array_metadata

    data = json.loads(doc)
    if not isinstance(data, dict):
        raise ValueError("the metadata document is not a JSON object")
    data.setdefault("zarr_format", zarr_format)
    if zarr_format == 2:
        data.setdefault("attributes", {})
    elif data.get("node_type") != "array":
        raise ValueError(f"node_type is {data.get('node_type')!r}, not 'array'")
    return parse_array_metadata(data)


_BY_DIGEST: dict = {}
_BY_DIGEST_LOCK = threading.Lock()


def _parse_meta(zarr_format, digest, doc):
    """Parsed metadata of a document, cached by its digest (and only by it)."""
    if doc is None:
        return _BY_DIGEST[(zarr_format, digest)]
    meta = _parsed(zarr_format, digest, bytes(doc))
    with _BY_DIGEST_LOCK:
        _BY_DIGEST[(zarr_format, digest)] = meta
        while len(_BY_DIGEST) > 256:
            _BY_DIGEST.pop(next(iter(_BY_DIGEST)))
    return meta


def _meta_of(ref):
    """Parsed metadata of a pinned array: from the digest-keyed cache, else read and checked."""
    cached = _BY_DIGEST.get((ref.zarr_format, ref.meta_digest))
    if cached is not None:
        return cached
    return _read_checked_meta(ref)


def _read_checked_meta(ref):
    """Read the metadata document again, check it against the pinned digest, parse it."""
    doc = _read_meta(ref, at_pin=False)
    digest = hashlib.sha256(doc).hexdigest()
    if digest != ref.meta_digest:
        raise SourceChangedError(
            f"{ref.name} changed since the job was submitted: its metadata document "
            f"{ref.meta_key} is different (sha256 {ref.meta_digest[:12]}… -> {digest[:12]}…). "
            "Resubmit to decompose the new array.")
    return _parse_meta(ref.zarr_format, digest, doc)


def _locate(url, array, storage_options):
    """The array's own location and name, its Zarr format (groups resolved)."""
    from ._source import _open_zarr

    remote = "://" in str(url) and not str(url).startswith("file://")
    node, array = _open_zarr(url, array, storage_options)
    fmt = node.metadata.zarr_format
    if remote:
        loc = str(url).rstrip("/") + (f"/{array}" if array else "")
    else:
        base = str(url)[len("file://"):] if str(url).startswith("file://") else str(url)
        loc = os.path.realpath(os.path.join(base, array) if array else base)
    return loc, array, fmt, remote


def pin_source(url, array=None, *, storage_options=None, roots=(), forbidden=(),
               missing_chunks="fill", allow_missing_chunks=None, panel_bytes=None, limits=None,
               sample_dims=None):
    """Resolve a Zarr array once and record what identifies it.

    Parameters
    ----------
    url : str or os.PathLike
        Path or fsspec URL of a Zarr array or group.
    array : str, optional
        Path of the array inside a group.
    storage_options : dict, optional
        fsspec options (remote URLs).
    roots, forbidden : sequence of str, optional
        Real local paths reads must stay inside / out of (checked now and at
        every read); empty ``roots`` allows any path.
    missing_chunks : {"fill", "error"}, default="fill"
        ``"fill"``: a chunk absent at rest reads as the fill value (Zarr's
        rule; :meth:`SourcePin.absent_chunks` counts them). ``"error"``: it
        fails with :class:`InvalidInputError` (a half-finished upload).
    allow_missing_chunks : bool, optional
        Deprecated (a DeprecationWarning): True is ``missing_chunks="fill"``,
        False is ``"error"``.
    panel_bytes : int, optional
        Panel budget, for the panel-count limit.
    limits : Limits, optional
    sample_dims : sequence of str, optional
        Read an N-D variable as the matrix samples × features
        (:mod:`._view`); required when the array is not 2-D. A 2-D array
        with dimension names (xarray-written) defaults to its first
        dimension (``info.notes`` says so).

    Returns
    -------
    SourcePin

    Raises
    ------
    SourceNotFoundError, SourceAccessError, InvalidInputError, StorageError
    """
    mode = missing_chunks_mode(missing_chunks, allow_missing_chunks)
    ref, meta, info = _inspect(url, array, storage_options=storage_options, roots=roots,
                               forbidden=forbidden, allow_missing_chunks=mode == "fill",
                               panel_bytes=panel_bytes, limits=limits,
                               sample_dims=sample_dims)
    stamps = _stamps(ref, meta, at_pin=True)
    ref = replace(ref, listing_digest=_listing_digest(stamps))
    return SourcePin(ref, stamps, info)


def _inspect(url, array=None, *, storage_options=None, roots=(), forbidden=(),
             allow_missing_chunks=True, panel_bytes=None, limits=None, sample_dims=None):
    """Locate, read and check the metadata (no chunk is looked at).

    Returns
    -------
    (SourceRef without listing digest, parsed metadata, SourceInfo)
    """
    from ._source import _options_key

    url = str(os.fspath(url))
    loc, array, fmt, remote = _locate(url, array, storage_options)
    name = repr(url) + (f" array {array!r}" if array else "")
    ref = SourceRef(url=loc, remote=remote, zarr_format=fmt, meta_digest="", shape=(),
                    key_chunks=(), listing_digest="",
                    guard=Guard(tuple(roots), tuple(os.path.realpath(f) for f in forbidden)),
                    options_key=_options_key(storage_options if remote else None),
                    allow_missing=bool(allow_missing_chunks), name=name)
    doc = _read_meta(ref, at_pin=True)
    digest = hashlib.sha256(doc).hexdigest()
    try:
        meta = _parse_meta(fmt, digest, doc)
    except (ValueError, TypeError, KeyError) as exc:
        raise InvalidInputError(f"the metadata of {name} is not valid Zarr array metadata: "
                                f"{exc}", field="source") from exc
    ref = replace(ref, meta_digest=digest)
    return _check_layout(ref, meta, url, array, sample_dims, panel_bytes, limits)


def _check_layout(ref, meta, url, array, sample_dims, panel_bytes, limits):
    """Shape, dtype, dimensions, view and sanity limits of parsed metadata."""
    from ._source import SourceInfo, _check_matrix
    from ._view import make_view

    name, fmt = ref.name, ref.zarr_format
    shape = tuple(int(s) for s in meta.shape)
    key_chunks = tuple(int(c) for c in meta.chunk_grid.chunk_shape)
    read_chunks = tuple(int(c) for c in (meta.chunks if fmt == 2 else _inner_chunks(meta)))
    if any(c < 1 for c in key_chunks + read_chunks):
        raise InvalidInputError(f"{name} has chunk shape {list(read_chunks)}; every chunk "
                                "size must be >= 1. Rewrite the array with positive chunk "
                                "sizes.", field="source")
    attrs = _read_attrs(ref, meta)
    dims = _dims_of(meta, attrs, len(shape))
    view, notes = _view_for(shape, read_chunks, dims, sample_dims, name)
    mshape = view.shape if view else shape
    dt = _check_matrix(mshape, meta.dtype, f"array {array or url!r}")
    # Raw 2-D chunks can be read in slices (no chunk held whole); an N-D view is
    # read in its effective chunks.
    plain = ((view is None or view.is_identity) and len(shape) == 2
             and key_chunks == read_chunks and raw_dtype(meta) is not None)
    checks = [(read_chunks, limits)]
    if key_chunks != read_chunks:  # sharded: the stored keys (shards) are what is listed
        checks.append((key_chunks, replace(limits or Limits(), max_panels=2**62,
                                           max_band_bytes=2**62)))
    for chunks, lim in checks:
        mchunks = make_view(shape, chunks, dims, view.sample_dims).chunks if view else chunks
        check_limits(mshape, mchunks, panel_bytes, lim, what=name, plain=plain,
                     n_chunks=math.prod(-(-s // c) for s, c in zip(shape, chunks)))
    ref = replace(ref, shape=shape, key_chunks=key_chunks, view=view)
    info = SourceInfo(mshape, dt, view.chunks if view else read_chunks, url, array, fmt,
                      plain, dims=dims if (view or len(shape) == 2) else None,
                      nd_shape=shape if view else None,
                      sample_dims=view.sample_dims if view else None,
                      fill=_fill_markers(meta, attrs, dt), notes=notes)
    return ref, meta, info


def _view_for(shape, read_chunks, dims, sample_dims, name):
    """The :class:`~._view.MatrixView` (or None) and the notes on how it was chosen.

    A 2-D array with dimension names (an xarray-written variable) and no
    ``sample_dims`` is read by its first dimension: rows stay rows, and the
    result is labelled (``to_xarray``).
    """
    from ._view import make_view

    notes = ()
    if sample_dims is None and len(shape) == 2 and dims != _default_dims(2):
        sample_dims = (dims[0],)
        notes = (f"sample_dims not given: using the first dimension {dims[0]!r} of "
                 f"{list(dims)} as the samples (rows)",)
    if sample_dims is not None:
        return make_view(shape, read_chunks, dims, sample_dims, what=name), notes
    if len(shape) > 2:
        raise InvalidInputError(
            f"{name} is {len(shape)}-D with dimensions {list(dims)} and shape {list(shape)}; "
            "a matrix is 2-D. Give sample_dims, the dimensions of the samples (e.g. "
            f"[{dims[0]!r}]): the other dimensions are flattened into the features.",
            field="source.sample_dims")
    return None, notes


def _default_dims(ndim):
    return tuple(f"dim_{i}" for i in range(ndim))


def _read_attrs(ref, meta):
    """The array's attributes: in ``zarr.json`` (v3, pinned), in ``.zattrs`` (v2, read
    through the guard but not pinned: only labels and the CF fill value come from it)."""
    if ref.zarr_format == 3:
        return dict(meta.attributes or {})
    try:
        if ref.remote:
            fs, path = _remote_fs(ref)
            doc = fs.cat_file(f"{path}/.zattrs")
        else:
            fd = _open_guarded(ref, os.path.join(ref.url, ".zattrs"), "the attributes .zattrs",
                               at_pin=True)
            try:
                doc = _read_fd(fd, min(os.fstat(fd).st_size, 16 * 2**20))
            finally:
                os.close(fd)
        data = json.loads(doc)
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _dims_of(meta, attrs, ndim):
    """Dimension names: ``dimension_names`` (v3), ``_ARRAY_DIMENSIONS`` (v2, xarray),
    else ``dim_0, dim_1, …`` as xarray names them."""
    names = getattr(meta, "dimension_names", None) or attrs.get("_ARRAY_DIMENSIONS")
    if (isinstance(names, (list, tuple)) and len(names) == ndim
            and all(isinstance(d, str) for d in names) and len(set(names)) == ndim):
        return tuple(names)
    return _default_dims(ndim)


def _fill_markers(meta, attrs, dtype):
    """Values meaning "missing" besides NaN: the CF ``_FillValue`` and ``missing_value``.

    xarray keeps ``_FillValue`` as the array's ``fill_value`` in Zarr v2 (and
    writes ``_ARRAY_DIMENSIONS``), and as an attribute in v3 (base64 of the
    value's bytes for floats). A plain Zarr array's ``fill_value`` (often 0)
    is *not* a missing-value marker.
    """
    raw = []
    if "_FillValue" in attrs:
        raw.append(attrs["_FillValue"])
    elif meta.zarr_format == 2 and "_ARRAY_DIMENSIONS" in attrs:
        raw.append(meta.fill_value)
    mv = attrs.get("missing_value")
    raw.extend(mv if isinstance(mv, list) else [] if mv is None else [mv])
    out = []
    for value in raw:
        if isinstance(value, str):
            try:
                value = np.frombuffer(base64.b64decode(value, validate=True), dtype=dtype)[0]
            except (ValueError, TypeError):
                pass
        try:
            value = float(value)
        except (TypeError, ValueError):
            continue
        if not np.isnan(value) and value not in out:
            out.append(value)
    return tuple(out) or None


def inspect_pinnable(url, array=None, *, storage_options=None, panel_bytes=None, limits=None,
                     sample_dims=None):
    """:class:`SourceInfo` of a Zarr array from its metadata alone (limits checked)."""
    return _inspect(url, array, storage_options=storage_options, panel_bytes=panel_bytes,
                    limits=limits, sample_dims=sample_dims)[2]


def _inner_chunks(meta):
    try:
        return meta.chunks
    except (AttributeError, NotImplementedError, ValueError):
        return meta.chunk_grid.chunk_shape


# --------------------------------------------------------------------------- reading


def _local_get(ref, expect, key, byte_range):
    """Bytes of one key, checked against the pin; None for an allowed missing chunk."""
    if key not in expect:  # not a chunk of this panel: metadata or a key zarr probes
        if key == ref.meta_key:
            return _read_meta(ref, at_pin=False)
        raise SourceChangedError(f"unexpected read of key {key!r} of {ref.name}")
    got = _local_get_ranges(ref, expect, key, None if byte_range is None else [byte_range])
    return None if got is None else got[0]


def _local_get_ranges(ref, expect, key, ranges):
    """Byte ranges of one chunk file, opened once and checked against the pin.

    ``ranges`` is a list of zarr byte requests (None: the whole file).
    Returns a list of bytes, or None for a missing chunk that is allowed.
    """
    where, stamp = expect[key]
    region = chunk_region(ref, *where)
    path = os.path.join(ref.url, key)
    try:
        fd = _open_guarded(ref, path, f"chunk {key!r} ({region})", at_pin=False)
    except (FileNotFoundError, NotADirectoryError):
        if stamp[0] < 0:
            if ref.allow_missing:
                return None
            raise InvalidInputError(_missing_message(ref, where, 1), field="source") from None
        raise SourceChangedError(_change_message(ref, key, where, stamp, (-1, 0, 0))) from None
    try:
        st = os.fstat(fd)
        now = (st.st_size, st.st_mtime_ns, st.st_ino)
        if now != stamp:
            raise SourceChangedError(_change_message(ref, key, where, stamp, now))
        out = []
        for byte_range in ranges or [None]:
            start, length = ((0, st.st_size) if byte_range is None
                             else _byte_range(byte_range, st.st_size))
            data = _read_fd(fd, length, start)
            if len(data) != length:
                raise SourceChangedError(
                    f"{ref.name} changed while it was read: chunk {key!r} ({region}) gave "
                    f"{len(data)} of {length} bytes.")
            out.append(data)
        return out
    finally:
        os.close(fd)


def _byte_range(byte_range, size):
    from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest

    if isinstance(byte_range, RangeByteRequest):
        start = min(byte_range.start, size)
        return start, max(0, min(byte_range.end, size) - start)
    if isinstance(byte_range, OffsetByteRequest):
        start = min(byte_range.offset, size)
        return start, size - start
    if isinstance(byte_range, SuffixByteRequest):
        start = max(0, size - byte_range.suffix)
        return start, size - start
    raise TypeError(f"unexpected byte range {byte_range!r}")


@functools.lru_cache(maxsize=1)
def _store_classes():
    """The guarded store classes (defined once, on first use: zarr imports lazily)."""
    from zarr.core.buffer.core import default_buffer_prototype
    from zarr.storage import FsspecStore, LocalStore

    class PinnedLocalStore(LocalStore):
        """A read-only LocalStore that reads only what the pin allows (:func:`_local_get`)."""

        def __init__(self, ref, expect):
            super().__init__(ref.url, read_only=True)
            self._ref, self._expect = ref, expect

        async def get(self, key, prototype=None, byte_range=None):
            prototype = prototype or default_buffer_prototype()
            data = await asyncio.to_thread(_local_get, self._ref, self._expect, key, byte_range)
            return None if data is None else prototype.buffer.from_bytes(data)

        async def get_partial_values(self, prototype, key_ranges):
            return [await self.get(k, prototype, r) for k, r in key_ranges]

    class PinnedFsspecStore(FsspecStore):
        """A read-only FsspecStore failing on missing chunks (ETags checked per run)."""

        def __init__(self, ref, expect, base):
            super().__init__(fs=base.fs, path=base.path, read_only=True,
                             allowed_exceptions=base.allowed_exceptions)
            self._ref, self._expect = ref, expect

        async def get(self, key, prototype=None, byte_range=None):
            ref = self._ref
            hit = self._expect.get(key)
            out = await super().get(key, prototype, byte_range)
            if hit is None or out is not None:
                return out
            where, stamp = hit
            if stamp == "":
                if ref.allow_missing:
                    return None
                raise InvalidInputError(_missing_message(ref, where, 1), field="source")
            raise SourceChangedError(_change_message(ref, key, where, stamp, ""))

        async def get_partial_values(self, prototype, key_ranges):
            return [await self.get(k, prototype, r) for k, r in key_ranges]

    return PinnedLocalStore, PinnedFsspecStore


def _make_store(ref, expect):
    local_cls, remote_cls = _store_classes()
    if not ref.remote:
        return local_cls(ref, expect)
    from zarr.storage import FsspecStore

    base = FsspecStore.from_url(ref.url, storage_options=json.loads(ref.options_key),
                                read_only=True)
    return remote_cls(ref, expect, base)


def open_pinned(ref, expect):
    """A ``zarr.Array`` over a guarded store that reads only the keys in ``expect``.

    The metadata document is read (through the guard) and must match the
    pinned digest; the array is built from exactly that document.
    """
    import zarr
    from zarr.core.array import AsyncArray
    from zarr.storage import StorePath

    meta = _read_checked_meta(ref)
    store = _make_store(ref, expect)
    return zarr.Array(AsyncArray(metadata=meta, store_path=StorePath(store, "")))


def read_region(ref, expect, node, sel, what):
    """``node[sel]`` with every failure typed: a decode error names the chunk.

    For a source read through a view (``ref.view``, an N-D variable), ``sel``
    is a pair of slices ``(rows, columns)`` of the *matrix*; the box is read
    with one stored selection (:meth:`~._view.MatrixView.read`), and
    ``expect`` must hold the keys of :meth:`SourcePin.box_expect` of it.
    """
    try:
        if ref.view is None:
            return np.asarray(node[sel])
        m, n = ref.view.shape
        rows, cols = (s.indices(size)[:2] for s, size in zip(sel, (m, n)))
        return ref.view.read(node.__getitem__, rows, cols)
    except SVDError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - codec, decompression, truncation, I/O
        meta = _meta_of(ref)
        for key, (where, _stamp) in expect.items():
            try:
                node[chunk_box(ref, where)]
            except SVDError:
                raise
            except Exception as inner:  # noqa: BLE001
                raise StorageError(
                    f"chunk {meta.encode_chunk_key(where)!r} of {ref.name} "
                    f"({chunk_region(ref, *where)}) could not be read: "
                    f"{type(inner).__name__}: {inner}. The stored chunk is corrupt or "
                    "truncated; rewrite the array.") from inner
        raise StorageError(f"reading {what} of {ref.name} failed: "
                           f"{type(exc).__name__}: {exc}") from exc


# --------------------------------------------------------------------------- reading by byte range


def raw_dtype(meta):
    """The stored dtype of an array whose chunks are raw C-order bytes, else None.

    Such chunks (no compressor, no filter, no sharding: zarr v3 ``bytes``
    alone, v2 ``compressor=None`` in C order) can be read in any sub-box
    by byte ranges, so a chunk never has to be held whole.
    """
    from zarr.codecs import BytesCodec

    if meta.zarr_format == 2:
        if meta.compressor is not None or meta.filters or meta.order != "C":
            return None
        return np.dtype(meta.dtype.to_native_dtype())
    codecs = tuple(meta.codecs)
    if len(codecs) != 1 or not isinstance(codecs[0], BytesCodec):
        return None
    dt = np.dtype(meta.data_type.to_native_dtype())
    endian = getattr(codecs[0].endian, "value", None)
    return dt.newbyteorder("<" if endian == "little" else ">") if endian else dt


def _remote_get_ranges(ref, expect, key, ranges):
    """Byte ranges of one object (ETags are checked per run, not per read)."""
    fs, path = _remote_fs(ref)
    where, stamp = expect[key]
    try:
        return fs.cat_ranges([f"{path}/{key}"] * len(ranges), [a for a, _ in ranges],
                             [b for _, b in ranges], on_error="raise")
    except FileNotFoundError:
        if stamp == "":
            if ref.allow_missing:
                return None
            raise InvalidInputError(_missing_message(ref, where, 1), field="source") from None
        raise SourceChangedError(_change_message(ref, key, where, stamp, "")) from None


def read_slices(ref, expect, rows, cols):
    """Rows ``rows`` and columns ``cols`` (slices) of a raw-chunk array, by byte range.

    Each chunk touched is opened once and only the bytes of the box are
    read: whole chunk rows as one range when most of a row is wanted, one
    range per row otherwise. A chunk missing at rest (when allowed) reads as
    the fill value.

    Returns
    -------
    ndarray of shape (rows, cols), native byte order
    """
    from zarr.abc.store import RangeByteRequest

    meta = _meta_of(ref)
    dt = raw_dtype(meta)
    isz = dt.itemsize
    cm, cn = ref.key_chunks
    out = np.empty((rows.stop - rows.start, cols.stop - cols.start), dtype=dt.newbyteorder("="))
    get = _remote_get_ranges if ref.remote else _local_get_ranges
    for cell, (a0, a1, b0, b1), at in box_cells(rows, cols, (cm, cn)):
        dst = out[at]
        whole_rows = 2 * (b1 - b0) >= cn
        spans = ([(a0 * cn * isz, a1 * cn * isz)] if whole_rows
                 else [((a * cn + b0) * isz, (a * cn + b1) * isz) for a in range(a0, a1)])
        key = meta.encode_chunk_key(cell)
        if ref.remote:
            got = get(ref, expect, key, spans)
        else:
            got = get(ref, expect, key, [RangeByteRequest(a, b) for a, b in spans])
        if got is None:
            dst[...] = meta.fill_value if meta.fill_value is not None else 0
        elif whole_rows:
            dst[...] = np.frombuffer(got[0], dtype=dt).reshape(a1 - a0, cn)[:, b0:b1]
        else:
            dst[...] = np.frombuffer(b"".join(got), dtype=dt).reshape(a1 - a0, b1 - b0)
    return out


def box_cells(rows, cols, chunks):
    """The chunks a box touches, row-major, and what of each.

    Parameters
    ----------
    rows, cols : slice
        The box, in array coordinates.
    chunks : (int, int)
        Chunk shape ``(cm, cn)``.

    Yields
    ------
    cell : (int, int)
        Chunk index.
    within : (a0, a1, b0, b1)
        Rows ``a0:a1`` and columns ``b0:b1`` of the chunk inside the box.
    at : (slice, slice)
        Where they go in an array holding the box.
    """
    (r0, r1), (c0, c1), (cm, cn) = (rows.start, rows.stop), (cols.start, cols.stop), chunks
    for i in range(r0 // cm, -(-r1 // cm)):
        a0, a1 = max(r0, i * cm) - i * cm, min(r1, (i + 1) * cm) - i * cm
        for j in range(c0 // cn, -(-c1 // cn)):
            b0, b1 = max(c0, j * cn) - j * cn, min(c1, (j + 1) * cn) - j * cn
            yield ((i, j), (a0, a1, b0, b1),
                   (slice(i * cm + a0 - r0, i * cm + a1 - r0),
                    slice(j * cn + b0 - c0, j * cn + b1 - c0)))
