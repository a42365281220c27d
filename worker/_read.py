"""Every way to read a box of the matrix, and the one rule for a chunk that is not there.

A box of a pinned source (:mod:`._pin`) is read by :func:`read_pinned`, the
one dispatcher, in one of three ways:

``"slices"``
    Raw chunks, by byte range (:func:`read_slices`): only the bytes of the
    box are read, so a box may cut through chunks.
``"direct"``
    Each chunk file read through the guard and decoded by its numcodecs
    codec straight into the box (:func:`read_box`, codecs in :mod:`._decode`).
``"zarr"``
    Zarr's own pipeline over a guarded store that reads only the pinned keys
    (:func:`open_pinned`, :func:`read_region`).

Every route opens a chunk through the pin: the local file's stamp is checked
against the pinned one and exactly that many bytes are read. A chunk the
store lacks is judged by :func:`absent_chunk`, written once: absent at rest
too (in the pinned listing) it reads as the fill value, or fails with
:class:`InvalidInputError` under ``missing_chunks="error"``; present at rest,
it vanished during the run: :class:`SourceChangedError`.

An unpinned ``zarr.Array`` (one on a store that cannot be pinned) is read by
:func:`read_array`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os

import numpy as np

from ._decode import chunk_decoder
from ._errors import InvalidInputError, SourceChangedError, StorageError, SVDError
from ._guard import open_guarded, read_fd, remote_fs
from ._meta import chunk_box, chunk_region, meta_of, raw_dtype, read_checked_meta, read_meta
from ._pin import change_message, missing_message

__all__ = ["READ_ROUTES", "absent_chunk", "read_pinned", "read_array", "read_slices",
           "read_box", "read_region", "open_pinned", "box_cells", "decodes_directly"]

#: The ways :func:`read_pinned` reads a box of a pinned source.
READ_ROUTES = ("slices", "direct", "zarr")


def absent_chunk(ref, key, where, stamp):
    """What a chunk the store lacks now means; the one rule every reader follows.

    Parameters
    ----------
    ref : SourceRef
    key : str
        The chunk key.
    where : tuple of int
        Its grid index.
    stamp : tuple of int or str
        Its pinned stamp (``size < 0`` locally, ``""`` remotely: absent at rest).

    Returns
    -------
    None
        Absent at rest too, and ``missing_chunks="fill"``: it reads as the fill value.

    Raises
    ------
    InvalidInputError
        Absent at rest with ``missing_chunks="error"`` (``field="source"``).
    SourceChangedError
        Present when pinned: it vanished while the job ran.
    """
    at_rest = stamp == "" if ref.remote else stamp[0] < 0
    if not at_rest:
        raise SourceChangedError(change_message(ref, key, where, stamp,
                                                "" if ref.remote else (-1, 0, 0))) from None
    if not ref.allow_missing:
        raise InvalidInputError(missing_message(ref, where, 1), field="source") from None
    return None


def read_pinned(ref, expect, rows, cols, *, route, what, node=None):
    """Rows ``rows`` and columns ``cols`` (slices) of the matrix of a pinned source.

    Parameters
    ----------
    ref : SourceRef
    expect : dict
        Chunk key to ``(index, stamp)`` for every chunk the box touches
        (:meth:`~._pin.SourcePin.box_expect`).
    rows, cols : slice
        The box, in the matrix (the view of an N-D variable).
    route : {"slices", "direct", "zarr"}
        How to read it (:data:`READ_ROUTES`).
    what : str
        How messages name the box (``"rows 0:100"``).
    node : zarr.Array, optional
        ``route="zarr"``: the guarded array of :func:`open_pinned` to reuse
        (a task reading several boxes opens it once); default: opened here.

    Returns
    -------
    ndarray of shape (rows, cols)
    """
    if route == "slices":
        return read_slices(ref, expect, rows, cols)
    if route == "direct":
        return read_box(ref, expect, rows, cols)
    node = open_pinned(ref, expect) if node is None else node
    return read_region(ref, expect, node, (rows, cols), what)


def read_array(array, view, sel, what):
    """``array[sel]`` of an unpinned ``zarr.Array`` (through ``view`` for an N-D variable),
    every failure typed as :class:`StorageError`."""
    try:
        if view is None:
            return np.asarray(array[sel])
        m, n = view.shape
        rows, cols = (s.indices(size)[:2] for s, size in zip(sel, (m, n)))
        return view.read(array.__getitem__, rows, cols)
    except (SVDError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - codec, decompression, I/O
        raise StorageError(
            f"reading {what} of the Zarr array failed: {type(exc).__name__}: {exc}") from exc


# --------------------------------------------------------------------------- through zarr


def _local_get(ref, expect, key, byte_range):
    """Bytes of one key, checked against the pin; None for an allowed missing chunk."""
    if key not in expect:  # not a chunk of this panel: metadata or a key zarr probes
        if key == ref.meta_key:
            return read_meta(ref, at_pin=False)
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
        fd = open_guarded(ref, path, f"chunk {key!r} ({region})", at_pin=False)
    except (FileNotFoundError, NotADirectoryError):
        return absent_chunk(ref, key, where, stamp)
    try:
        st = os.fstat(fd)
        now = (st.st_size, st.st_mtime_ns, st.st_ino)
        if now != stamp:
            raise SourceChangedError(change_message(ref, key, where, stamp, now))
        out = []
        for byte_range in ranges or [None]:
            start, length = ((0, st.st_size) if byte_range is None
                             else _byte_range(byte_range, st.st_size))
            data = read_fd(fd, length, start)
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
            return absent_chunk(ref, key, *hit)

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

    meta = read_checked_meta(ref)
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
        meta = meta_of(ref)
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


# --------------------------------------------------------------------------- by byte range


def _remote_get_ranges(ref, expect, key, ranges):
    """Byte ranges of one object (ETags are checked per run, not per read)."""
    fs, path = remote_fs(ref)
    where, stamp = expect[key]
    try:
        return fs.cat_ranges([f"{path}/{key}"] * len(ranges), [a for a, _ in ranges],
                             [b for _, b in ranges], on_error="raise")
    except FileNotFoundError:
        return absent_chunk(ref, key, where, stamp)
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

    meta = meta_of(ref)
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


# --------------------------------------------------------------------------- decoded directly


def _remote_whole(ref, expect, keys):
    """Whole objects of ``keys`` fetched concurrently; None for an allowed missing one."""
    fs, path = remote_fs(ref)
    got = fs.cat([f"{path}/{key}" for key in keys], on_error="return")  # a list: a dict back
    out = []
    for key in keys:
        data = got[f"{path}/{key}"]
        if isinstance(data, FileNotFoundError):
            data = absent_chunk(ref, key, *expect[key])
        elif isinstance(data, BaseException):
            raise data
        out.append(data)
    return out


def read_box(ref, expect, rows, cols):
    """Rows ``rows`` and columns ``cols`` (slices) of a pinned 2-D array, decoded directly.

    Parameters
    ----------
    ref : SourceRef
        Its chunks must have a :func:`~._decode.chunk_decoder`.
    expect : dict
        Chunk key to ``((i, j), stamp)`` for every chunk the box touches.
    rows, cols : slice

    Returns
    -------
    ndarray of shape (rows, cols), C order: float32 for float32 chunks (kept as stored,
    :mod:`._precision`), else float64
    """
    meta = meta_of(ref)
    dec = chunk_decoder(meta)
    cm, cn = dec.chunks
    single = dec.dtype.kind == "f" and dec.dtype.itemsize == 4
    out = np.empty((rows.stop - rows.start, cols.stop - cols.start),
                   dtype=np.float32 if single else np.float64)
    cells = list(box_cells(rows, cols, (cm, cn)))
    keys = [meta.encode_chunk_key(cell) for cell, _, _ in cells]
    fetched = _remote_whole(ref, expect, keys) if ref.remote else None
    scratch = None
    for n_cell, (((i, j), (a0, a1, b0, b1), at), key) in enumerate(zip(cells, keys)):
        dst = out[at]
        if fetched is not None:
            raw = fetched[n_cell]
        else:
            got = _local_get_ranges(ref, expect, key, None)
            raw = None if got is None else got[0]
        if raw is None:  # missing at rest, allowed: the fill value
            dst[...] = dec.fill if dec.fill is not None else 0
            continue
        # A whole chunk spanning the box's width is contiguous in ``out``: decode in place.
        whole = dec.dtype == out.dtype and (a0, a1, b0, b1) == (0, cm, 0, cn) and cn == out.shape[1]
        try:
            if whole:
                dec.decode(raw, dst)
                continue
            if scratch is None:
                scratch = np.empty((cm, cn), dtype=dec.dtype)
            dec.decode(raw, scratch)
        except (MemoryError, SourceChangedError):
            raise
        except Exception as exc:  # noqa: BLE001 - codec, truncation
            raise StorageError(
                f"chunk {key!r} of {ref.name} ({chunk_region(ref, i, j)}) could not be read: "
                f"{type(exc).__name__}: {exc}. The stored chunk is corrupt or truncated; "
                "rewrite the array.") from exc
        dst[...] = scratch[a0:a1, b0:b1]
    return out


def decodes_directly(ref, reader):
    """Whether panels of the pinned array ``ref`` are read by :func:`read_box` under ``reader``."""
    return (reader == "direct" and (ref.view is None or ref.view.is_identity)
            and chunk_decoder(meta_of(ref)) is not None)
