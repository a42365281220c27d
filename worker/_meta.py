"""What a Zarr array's metadata says, read once and checked.

:class:`SourceInfo` (what a run needs to know of its input, from metadata
alone), opening a Zarr node (:func:`open_zarr`), reading and parsing the
metadata document of a pinned array (:func:`read_meta`, cached by its digest:
:func:`meta_of`), the checks of shape, dtype, dimensions, views and sanity
limits (:func:`check_metadata`, :func:`check_limits`), the CF missing-value
markers and the raw-chunk test (:func:`raw_dtype`). Nothing here lists or
reads a chunk.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
import os
import threading
from dataclasses import dataclass, replace

import numpy as np

from ._errors import InvalidInputError, SourceChangedError, SourceNotFoundError, StorageError
from ._guard import open_guarded, read_fd, remote_fs
from ._layout import plan_layout
from ._view import make_view

__all__ = ["SourceInfo", "Limits", "check_limits", "check_matrix", "check_metadata",
           "options_key", "open_zarr", "META_DOCUMENT", "chunk_box", "chunk_region",
           "info_json", "info_from_json", "read_meta", "parse_meta", "meta_of",
           "read_checked_meta", "raw_dtype", "inner_chunks"]

#: The metadata document of an array, by Zarr format.
META_DOCUMENT = {3: "zarr.json", 2: ".zarray"}


@dataclass(frozen=True)
class SourceInfo:
    """What :func:`inspect_source` learns from metadata alone.

    Attributes
    ----------
    shape : tuple of int
        ``(m, n)`` as stored, or samples × features of an N-D variable
        read with ``sample_dims`` (:mod:`._view`).
    dtype : str
    chunks : tuple of int
        Regular chunk shape ``(cm, cn)`` (the whole array for NumPy input);
        the effective 2-D chunk grid of an N-D variable.
    url : str or None
        The path or URL opened, None for in-memory input.
    array : str or None
        The array's path inside a group, if any.
    zarr_format : int or None
    plain : bool
        The chunks are raw bytes (no compressor, filter or sharding), so any
        slice of a chunk can be read by byte range (:func:`~._read.read_slices`).
    dims : tuple of str or None
        Stored dimension names (``_ARRAY_DIMENSIONS`` in v2,
        ``dimension_names`` in v3, else ``dim_0, …``).
    nd_shape : tuple of int or None
        Stored shape of an N-D variable read with ``sample_dims``.
    sample_dims : tuple of str or None
        The dimensions flattened into the rows (samples).
    fill : tuple of float or None
        CF missing-value markers besides NaN (``_FillValue``, ``missing_value``).
    notes : tuple of str
        What was assumed about the input (e.g. a default ``sample_dims``).
    """

    shape: tuple
    dtype: str
    chunks: tuple
    url: str | None = None
    array: str | None = None
    zarr_format: int | None = None
    plain: bool = False
    dims: tuple | None = None
    nd_shape: tuple | None = None
    sample_dims: tuple | None = None
    fill: tuple | None = None
    notes: tuple = ()




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
    max_nnz : int, default=2**40
        Stored values of a sparse source (:mod:`._sparse_source`).
    """

    max_chunks: int = 1_000_000
    max_panels: int = 1_000_000
    max_band_bytes: int = 4 * 2**30
    max_nnz: int = 2**40


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


def check_matrix(shape, dtype, what):
    if len(shape) != 2:
        raise InvalidInputError(
            f"{what} must be a 2-D matrix; got {len(shape)}-D with shape {tuple(shape)}. "
            "Reshape it to (rows, columns) before decomposing.", field="source")
    dt = np.dtype(dtype) if not hasattr(dtype, "to_native_dtype") else dtype.to_native_dtype()
    if not (np.issubdtype(dt, np.floating) or np.issubdtype(dt, np.integer)
            or np.issubdtype(dt, np.bool_)):
        raise InvalidInputError(
            f"{what} must hold real numbers (float or integer); got dtype {str(dt)!r}. "
            "Convert it, e.g. store it as float64.", field="source")
    if shape[0] == 0 or shape[1] == 0:
        raise InvalidInputError(
            f"{what} is empty (shape {tuple(shape)}); it needs at least one row and one column.",
            field="source")
    return str(dt)


def options_key(storage_options):
    return json.dumps(storage_options or {}, sort_keys=True, default=str)


def open_node(url, storage_options=None):
    """The Zarr array or group at ``url``, read-only (typed errors when absent or unreadable)."""
    import zarr

    kw = {"mode": "r"}
    if storage_options and "://" in str(url):
        kw["storage_options"] = storage_options
    try:
        return zarr.open(store=str(url), **kw)
    except FileNotFoundError as exc:
        raise SourceNotFoundError(
            f"no Zarr array or group at {str(url)!r}; check the path (and the storage "
            "options for object storage).", field="source.url") from exc
    except (OSError, ValueError, KeyError) as exc:
        raise StorageError(f"could not open {str(url)!r} as Zarr: {exc}") from exc


def open_zarr(url, array, storage_options):
    import zarr

    node = open_node(url, storage_options)
    if isinstance(node, zarr.Group):
        names = sorted(node.array_keys())
        if array is None:
            if len(names) == 1:
                array = names[0]
            else:
                raise InvalidInputError(
                    f"{str(url)!r} is a Zarr group holding {len(names)} arrays {names}; "
                    "name the one to decompose with `array`.", field="source.array")
        try:
            node = node[array]
        except KeyError as exc:
            raise SourceNotFoundError(
                f"group {str(url)!r} has no array {array!r}; it holds {names}.",
                field="source.array") from exc
        if isinstance(node, zarr.Group):
            raise InvalidInputError(
                f"{array!r} in {str(url)!r} is a group, not an array.", field="source.array")
    elif array is not None:
        raise InvalidInputError(
            f"{str(url)!r} is a single array, so `array` must be None (got {array!r}).",
            field="source.array")
    return node, array


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



def info_json(info):
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


def info_from_json(info):

    extra = {key: tuple(info[key]) for key in ("dims", "nd_shape", "sample_dims", "fill",
                                                "notes")
             if info.get(key) is not None}
    return SourceInfo(tuple(info["shape"]), info["dtype"], tuple(info["chunks"]), info["url"],
                      info["array"], info["zarr_format"], info.get("plain", False), **extra)


def read_meta(ref, *, at_pin):
    """The metadata document's bytes, read through the guard."""
    if ref.remote:
        fs, path = remote_fs(ref)
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
        fd = open_guarded(ref, path, f"the metadata document {ref.meta_key}", at_pin=at_pin)
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
        return read_fd(fd, size)
    finally:
        os.close(fd)


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


def parse_meta(zarr_format, digest, doc):
    """Parsed metadata of a document, cached by its digest (and only by it)."""
    if doc is None:
        return _BY_DIGEST[(zarr_format, digest)]
    meta = _parsed(zarr_format, digest, bytes(doc))
    with _BY_DIGEST_LOCK:
        _BY_DIGEST[(zarr_format, digest)] = meta
        while len(_BY_DIGEST) > 256:
            _BY_DIGEST.pop(next(iter(_BY_DIGEST)))
    return meta


def meta_of(ref):
    """Parsed metadata of a pinned array: from the digest-keyed cache, else read and checked."""
    cached = _BY_DIGEST.get((ref.zarr_format, ref.meta_digest))
    if cached is not None:
        return cached
    return read_checked_meta(ref)


def read_checked_meta(ref):
    """Read the metadata document again, check it against the pinned digest, parse it."""
    doc = read_meta(ref, at_pin=False)
    digest = hashlib.sha256(doc).hexdigest()
    if digest != ref.meta_digest:
        raise SourceChangedError(
            f"{ref.name} changed since the job was submitted: its metadata document "
            f"{ref.meta_key} is different (sha256 {ref.meta_digest[:12]}… -> {digest[:12]}…). "
            "Resubmit to decompose the new array.")
    return parse_meta(ref.zarr_format, digest, doc)


def check_metadata(ref, meta, url, array, sample_dims, panel_bytes, limits):
    """Shape, dtype, dimensions, view and sanity limits of parsed metadata.

    Returns ``(ref with shape, key chunks and view, meta, SourceInfo)``.
    """
    name, fmt = ref.name, ref.zarr_format
    shape = tuple(int(s) for s in meta.shape)
    key_chunks = tuple(int(c) for c in meta.chunk_grid.chunk_shape)
    read_chunks = tuple(int(c) for c in (meta.chunks if fmt == 2 else inner_chunks(meta)))
    if any(c < 1 for c in key_chunks + read_chunks):
        raise InvalidInputError(f"{name} has chunk shape {list(read_chunks)}; every chunk "
                                "size must be >= 1. Rewrite the array with positive chunk "
                                "sizes.", field="source")
    attrs = _read_attrs(ref, meta)
    dims = _dims_of(meta, attrs, len(shape))
    view, notes = _view_for(shape, read_chunks, dims, sample_dims, name)
    mshape = view.shape if view else shape
    dt = check_matrix(mshape, meta.dtype, f"array {array or url!r}")
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
            fs, path = remote_fs(ref)
            doc = fs.cat_file(f"{path}/.zattrs")
        else:
            fd = open_guarded(ref, os.path.join(ref.url, ".zattrs"), "the attributes .zattrs",
                               at_pin=True)
            try:
                doc = read_fd(fd, min(os.fstat(fd).st_size, 16 * 2**20))
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



def inner_chunks(meta):
    try:
        return meta.chunks
    except (AttributeError, NotImplementedError, ValueError):
        return meta.chunk_grid.chunk_shape


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

