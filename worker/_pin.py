"""Pinned sources: a Zarr array identified once, then read exactly as identified.

:func:`pin_source` resolves a Zarr array (a local path, or an fsspec URL
such as ``s3://``) once and records what identifies it:

- its real location, symlinks resolved: never a name that can be re-pointed;
- the SHA-256 digest of its metadata document (``zarr.json`` or ``.zarray``),
  which is also the document the array is validated and decoded from;
- one stamp per chunk key the metadata implies: ``(size, mtime_ns, inode)``
  of the file for local stores, the ETag for object storage, *missing* for
  a key the store lacks.

Reads on the workers (:mod:`._read`) go through the pin. For every chunk they open
the pinned location, check that the file held open (``/proc/self/fd``,
symlinks resolved) lies inside the allowed roots (:mod:`._guard`), compare the open file's
stamp with the pin and read exactly that many bytes. Anything else raises
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
The only thing cached on a worker is parsed metadata (:mod:`._meta`), keyed by the
document's digest.

Object storage: the ETags are compared before the first read and after the
last (a per-read check would double the requests); a chunk that vanishes
mid-run fails the read.
"""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
import os
import posixpath
import stat
import zlib
from dataclasses import dataclass, field, replace

import numpy as np

from ._errors import InvalidInputError, SourceAccessError, SourceChangedError
from ._guard import Guard, remote_fs
from ._meta import (META_DOCUMENT, SourceInfo, check_metadata, chunk_region, info_from_json,
                    info_json, meta_of, open_zarr, options_key, parse_meta, read_checked_meta,
                    read_meta)
from ._missing import absent_chunks_note, json_fill, missing_chunks_mode
from ._view import MatrixView, identity_view

__all__ = ["SourceRef", "SourcePin", "pin_source", "pin_component", "inspect_pinnable",
           "missing_message", "change_message"]


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
    view: MatrixView | None = None

    @property
    def matrix_view(self):
        """The view (the identity view of a 2-D array without one)."""
        return self.view if self.view is not None else identity_view(self.shape,
                                                                     self.key_chunks)

    @property
    def grid(self):
        return tuple(-(-s // c) for s, c in zip(self.shape, self.key_chunks))

    @property
    def meta_key(self):
        return META_DOCUMENT[self.zarr_format]


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
    info: SourceInfo

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
        fill = meta_of(self.ref).fill_value
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
        raise InvalidInputError(missing_message(self.ref, where, n_missing),
                                field="source")

    def with_options(self, *, allow_missing=None, name=None, storage_options=None):
        """A copy with ``allow_missing`` / ``name`` / ``storage_options`` replaced."""
        kw = {}
        if storage_options is not None and self.ref.remote:
            kw["options_key"] = options_key(storage_options)
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
        meta = read_checked_meta(ref)
        now = _stamps(ref, meta, at_pin=False)
        if not np.array_equal(now, self.stamps):
            diff = np.argwhere(now != self.stamps if ref.remote
                               else (now != self.stamps).any(axis=-1))
            where = tuple(int(x) for x in diff[0])
            raise SourceChangedError(change_message(
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
        meta = meta_of(ref)
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
            "name": ref.name, "info": info_json(self.info),
            "view": None if ref.view is None else ref.view.to_json(),
            "stamps": base64.b64encode(zlib.compress(buf.getvalue(), 6)).decode("ascii"),
        }

    @classmethod
    def from_json(cls, data):
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
        return cls(ref, stamps, info_from_json(data["info"]))



def _stamp_value(value, remote):
    return str(value) if remote else tuple(int(x) for x in value)


def missing_message(ref, where, n_missing):
    meta = meta_of(ref)
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


def change_message(ref, key, where, before, after, n_changed=1):
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


def _remote_listing(ref):
    fs, path = remote_fs(ref)
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


def _locate(url, array, storage_options):
    """The array's own location and name, its Zarr format (groups resolved)."""
    remote = "://" in str(url) and not str(url).startswith("file://")
    node, array = open_zarr(url, array, storage_options)
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


def _read_parsed(url, array, storage_options, roots, forbidden, allow_missing):
    """Locate the array and read and parse its metadata: ``(SourceRef with its metadata
    digest, parsed metadata, the array's path, Zarr format)``."""
    loc, array, fmt, remote = _locate(url, array, storage_options)
    name = repr(url) + (f" array {array!r}" if array else "")
    ref = SourceRef(url=loc, remote=remote, zarr_format=fmt, meta_digest="", shape=(),
                    key_chunks=(), listing_digest="",
                    guard=Guard(tuple(roots), tuple(os.path.realpath(f) for f in forbidden)),
                    options_key=options_key(storage_options if remote else None),
                    allow_missing=bool(allow_missing), name=name)
    doc = read_meta(ref, at_pin=True)
    digest = hashlib.sha256(doc).hexdigest()
    try:
        meta = parse_meta(fmt, digest, doc)
    except (ValueError, TypeError, KeyError) as exc:
        raise InvalidInputError(f"the metadata of {name} is not valid Zarr array metadata: "
                                f"{exc}", field="source") from exc
    return replace(ref, meta_digest=digest), meta, array, fmt


def _inspect(url, array=None, *, storage_options=None, roots=(), forbidden=(),
             allow_missing_chunks=True, panel_bytes=None, limits=None, sample_dims=None):
    """Locate, read and check the metadata (no chunk is looked at).

    Returns
    -------
    (SourceRef without listing digest, parsed metadata, SourceInfo)
    """
    url = str(os.fspath(url))
    ref, meta, array, _ = _read_parsed(url, array, storage_options, roots, forbidden,
                                       allow_missing_chunks)
    return check_metadata(ref, meta, url, array, sample_dims, panel_bytes, limits)


def pin_component(url, array, *, storage_options=None, roots=(), forbidden=()):
    """Pin one Zarr array of any shape as it is (no matrix checks): a component of a
    sparse group (:mod:`._sparse_source`), e.g. its 1-D ``indptr``.

    Returns
    -------
    SourcePin
        ``info`` holds the stored shape, dtype and chunks (not a matrix's).
    """
    url = str(os.fspath(url))
    ref, meta, array, fmt = _read_parsed(url, array, storage_options, roots, forbidden,
                                         allow_missing=True)
    shape = tuple(int(s) for s in meta.shape)
    chunks = tuple(int(c) for c in meta.chunk_grid.chunk_shape)
    ref = replace(ref, shape=shape, key_chunks=chunks)
    stamps = _stamps(ref, meta, at_pin=True)
    ref = replace(ref, listing_digest=_listing_digest(stamps))
    dtype = str(np.dtype(meta.dtype.to_native_dtype()))
    return SourcePin(ref, stamps, SourceInfo(shape, dtype, chunks, url, array, fmt))


def inspect_pinnable(url, array=None, *, storage_options=None, panel_bytes=None, limits=None,
                     sample_dims=None):
    """:class:`SourceInfo` of a Zarr array from its metadata alone (limits checked)."""
    return _inspect(url, array, storage_options=storage_options, panel_bytes=panel_bytes,
                    limits=limits, sample_dims=sample_dims)[2]

