"""Opening the input matrix and planning panels.

A *source* is a Zarr array (format 2 or 3, local or any fsspec URL such as
``s3://``), a NumPy array or a dask array. :func:`open_source` validates it
once and returns a :class:`Source`; :func:`plan_panels` cuts it into row
bands aligned with its chunk boundaries (a lazy :class:`PanelPlan`: no
per-panel object however many panels there are).

A Zarr source given by path or URL (or a ``zarr.Array`` on local disk) is
*pinned* (:mod:`._pin`): workers read exactly the metadata and chunks that
were validated, and a change, a vanished or an appeared chunk fails the run
with a typed error. A chunk absent at rest (in the pinned listing) reads as
the fill value, as Zarr says, unless ``missing_chunks="error"``.

A wide matrix (m < n) is decomposed through its transpose: the *tall view*
has ``m_t = max(m, n)`` rows, and a panel of it is a band of columns of the
stored array. Panels are read on the workers by :func:`read_panel`, which
counts nothing itself: every task reports the rows it read, and the driver
adds them up into the pass count.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ._errors import InvalidInputError, SourceNotFoundError, StorageError, SVDError

__all__ = ["SourceInfo", "Source", "PanelRef", "PanelPlan", "open_source", "inspect_source",
           "plan_panels", "read_panel", "DEFAULT_PANEL_BYTES"]

DEFAULT_PANEL_BYTES = 128 * 2**20


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
        slice of a chunk can be read by byte range (:func:`~._pin.read_slices`).
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


@dataclass
class Source:
    """A validated input. ``kind`` is ``"zarr"``, ``"numpy"`` or ``"dask"``.

    ``pin`` (a :class:`~._pin.SourcePin`) is set for Zarr arrays read from a
    path or URL: panels are then read through it on the workers.
    """

    info: SourceInfo
    kind: str
    obj: object  # zarr.Array (unpinned only), ndarray or dask array
    pin: object = None
    view: object = None  # MatrixView of an unpinned N-D zarr.Array

    @property
    def matrix_view(self):
        """The :class:`~._view.MatrixView` of an N-D variable, None for a matrix."""
        return self.pin.ref.view if self.pin is not None else self.view

    def verify(self):
        """Re-list a pinned source; raise :class:`SourceChangedError` if it changed."""
        if self.pin is not None:
            self.pin.verify()

    @property
    def shape(self):
        return self.info.shape

    @property
    def wide(self):
        """True when the matrix is decomposed through its transpose."""
        m, n = self.info.shape
        return m < n

    @property
    def tall_shape(self):
        m, n = self.info.shape
        return (n, m) if self.wide else (m, n)

    @property
    def tall_chunk(self):
        """Chunk length along the tall view's rows."""
        cm, cn = self.info.chunks
        return cn if self.wide else cm


def _check_matrix(shape, dtype, what):
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


def _options_key(storage_options):
    return json.dumps(storage_options or {}, sort_keys=True, default=str)


def _open_zarr(url, array, storage_options):
    import zarr

    kw = {"mode": "r"}
    if storage_options and "://" in str(url):
        kw["storage_options"] = storage_options
    try:
        node = zarr.open(store=str(url), **kw)
    except FileNotFoundError as exc:
        raise SourceNotFoundError(
            f"no Zarr array or group at {str(url)!r}; check the path (and the storage "
            "options for object storage).", field="source.url") from exc
    except (OSError, ValueError, KeyError) as exc:
        raise StorageError(f"could not open {str(url)!r} as Zarr: {exc}") from exc
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


def _local_path_of(node):
    """The directory of a ``zarr.Array`` on a local store, else None."""
    from zarr.storage import LocalStore

    store = getattr(node, "store", None)
    if isinstance(store, LocalStore):
        return os.path.join(str(store.root), node.path) if node.path else str(store.root)
    return None


def _view_of_array(source, sample_dims):
    """A :class:`~._view.MatrixView` of an in-memory or unpinned N-D array."""
    from ._view import make_view

    dims = getattr(getattr(source, "metadata", None), "dimension_names", None) or \
        (dict(source.attrs).get("_ARRAY_DIMENSIONS") if hasattr(source, "attrs") else None)
    chunks = getattr(source, "chunks", source.shape)
    if chunks and isinstance(chunks[0], tuple):  # dask
        chunks = tuple(max(c) if c else 1 for c in chunks)
    if dims is None or len(dims) != len(source.shape):
        dims = None
    return make_view(source.shape, chunks or source.shape, dims, sample_dims)


def _as_matrix(source, sample_dims):
    """An in-memory or dask N-D array as its samples × features matrix (lazy for dask)."""
    if sample_dims is None:
        return source
    view = _view_of_array(source, sample_dims)
    return source.transpose(view.sample_axes + view.feature_axes).reshape(view.shape)


def open_source(source, *, array=None, storage_options=None, missing_chunks="fill",
                allow_missing_chunks=None, panel_bytes=None, limits=None, sample_dims=None):
    """Validate an input and describe it; pin Zarr sources read from storage.

    Parameters
    ----------
    source : SourcePin, zarr.Array, str, os.PathLike, ndarray or dask array
        The matrix, a path/URL of a Zarr array or group, or a source pinned
        earlier with :func:`pin_source` (then re-checked against storage).
    array : str, optional
        Path of the array inside a group.
    storage_options : dict, optional
        fsspec options (credentials, ``endpoint_url``) for remote URLs.
    missing_chunks : {"fill", "error"}, default="fill"
        A chunk absent from the store reads as the fill value (Zarr's rule),
        or fails (``"error"``). A source pinned with ``"error"`` stays strict.
    allow_missing_chunks : bool, optional
        Deprecated: True is ``missing_chunks="fill"``, False ``"error"``.
    panel_bytes : int, optional
        Panel budget (for the panel-count limit).
    limits : Limits, optional
        Sanity limits (default :class:`~._pin.Limits`).
    sample_dims : sequence of str, optional
        Read an N-D variable as the matrix samples × features (:mod:`._view`).

    Returns
    -------
    Source

    Raises
    ------
    SourceNotFoundError, SourceAccessError, InvalidInputError, StorageError
        ``InvalidInputError`` also when a chunk is absent at rest with
        ``missing_chunks="error"``; ``SourceChangedError`` when a pinned source changed.
    """
    import zarr

    from ._missing import missing_chunks_mode
    from ._pin import SourcePin, check_limits, pin_source

    try:
        import dask.array as da
    except ImportError:  # pragma: no cover - dask is a dependency
        da = None

    mode = missing_chunks_mode(missing_chunks, allow_missing_chunks)
    if sample_dims is not None:
        sample_dims = (sample_dims,) if isinstance(sample_dims, str) else tuple(sample_dims)
    if isinstance(source, SourcePin):
        pinned = source.info.sample_dims
        if sample_dims is not None and tuple(sample_dims) != pinned:
            raise InvalidInputError(
                f"the source was pinned with sample_dims={list(pinned or ())}; got "
                f"sample_dims={list(sample_dims)}. Pin it with the sample_dims to use.",
                field="source.sample_dims")
        pin = source.with_options(allow_missing=mode == "fill" and source.ref.allow_missing)
        pin.verify()
        pin.check_missing()
        return Source(pin.info, "zarr", None, pin=pin)
    if isinstance(source, zarr.Array):
        path = _local_path_of(source)
        if path is not None:
            return open_source(pin_source(path, missing_chunks=mode,
                                          panel_bytes=panel_bytes, limits=limits,
                                          sample_dims=sample_dims),
                               storage_options=storage_options)
        view = None if sample_dims is None else _view_of_array(source, sample_dims)
        shape, chunks = (view.shape, view.chunks) if view else (source.shape, source.chunks)
        dt = _check_matrix(shape, source.dtype, "the Zarr array")
        if len(shape) == 2:
            check_limits(shape, chunks, panel_bytes, limits, what="the Zarr array")
        info = SourceInfo(tuple(shape), dt, tuple(chunks), None, None,
                          source.metadata.zarr_format,
                          dims=view.dims if view else None,
                          nd_shape=view.nd_shape if view else None,
                          sample_dims=view.sample_dims if view else None)
        return Source(info, "zarr", source, view=view)
    if da is not None and isinstance(source, da.Array):
        source = _as_matrix(source, sample_dims)
        dt = _check_matrix(source.shape, source.dtype, "the dask array")
        chunks = tuple(max(c) if c else 0 for c in source.chunks)
        return Source(SourceInfo(tuple(source.shape), dt, chunks), "dask", source)
    if isinstance(source, np.ndarray):
        source = _as_matrix(source, sample_dims)
        dt = _check_matrix(source.shape, source.dtype, "the NumPy array")
        return Source(SourceInfo(tuple(source.shape), dt, tuple(source.shape)), "numpy", source)
    if hasattr(source, "__fspath__") or isinstance(source, str):
        url = str(source.__fspath__() if hasattr(source, "__fspath__") else source)
        pin = pin_source(url, array, storage_options=storage_options,
                         missing_chunks=mode, panel_bytes=panel_bytes,
                         limits=limits, sample_dims=sample_dims)
        return open_source(pin, storage_options=storage_options)
    raise InvalidInputError(
        f"source must be a Zarr array, a path or URL of one, or a NumPy/dask array; "
        f"got {type(source).__name__}.", field="source")


def inspect_source(source, *, array=None, storage_options=None, sample_dims=None):
    """Open only the metadata of ``source`` and validate it.

    A Zarr path or URL is checked as :func:`open_source` checks it (2-D,
    real dtype, chunk sizes and the sanity limits) without looking at any
    chunk.

    Returns
    -------
    SourceInfo

    Raises
    ------
    SourceNotFoundError, InvalidInputError, StorageError
    """
    if hasattr(source, "__fspath__") or isinstance(source, str):
        from ._pin import inspect_pinnable

        return inspect_pinnable(source, array, storage_options=storage_options,
                                sample_dims=sample_dims)
    return open_source(source, array=array, storage_options=storage_options,
                       sample_dims=sample_dims).info


# --------------------------------------------------------------------------- panels


class PanelPlan(Sequence):
    """The panels of a plan as ``(start, stop)`` pairs, computed on demand.

    A sequence (``len``, indexing, iteration, ``==`` with a list of pairs)
    that holds three integers, whatever the number of panels.
    """

    __slots__ = ("n_rows", "step")

    def __init__(self, n_rows, step):
        self.n_rows, self.step = int(n_rows), int(step)

    def __len__(self):
        return -(-self.n_rows // self.step)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"panel {i} out of range (the plan has {n} panels)")
        s = i * self.step
        return (s, min(s + self.step, self.n_rows))

    def __eq__(self, other):
        if isinstance(other, PanelPlan):
            return (self.n_rows, self.step) == (other.n_rows, other.step)
        if isinstance(other, (list, tuple)):
            return len(other) == len(self) and all(
                tuple(a) == b for a, b in zip(other, self))
        return NotImplemented

    __hash__ = None

    def __repr__(self):
        return f"PanelPlan({len(self)} panels of {self.step} rows over {self.n_rows} rows)"


def plan_panels(n_rows, n_cols, chunk, panel_bytes=None, itemsize=8):
    """Cut the tall view's rows into panels aligned with chunk boundaries.

    Parameters
    ----------
    n_rows, n_cols : int
        Shape of the tall view.
    chunk : int
        Chunk length along the rows (every boundary ``i*chunk`` is a chunk edge).
    panel_bytes : int, optional
        Budget for one panel held as float64; default 128 MiB. A panel is
        never smaller than one chunk (a partial chunk would be read twice).

    Returns
    -------
    PanelPlan
        A lazy sequence of ``(start, stop)``; ``list(plan)`` gives the pairs.
    """
    budget = DEFAULT_PANEL_BYTES if panel_bytes is None else int(panel_bytes)
    if budget <= 0:
        raise InvalidInputError(f"panel_bytes must be positive; got {panel_bytes!r}.",
                                field="panel_bytes")
    chunk = max(1, min(int(chunk), n_rows))
    chunks_per_panel = max(1, budget // max(1, chunk * n_cols * itemsize))
    return PanelPlan(n_rows, chunk * chunks_per_panel)


class PanelRefs(Sequence):
    """The :class:`PanelRef` of each panel of a pinned source, made on demand.

    ``sliced``: read by byte ranges (:func:`~._pin.read_slices`; raw chunks only).
    ``direct``: chunks decoded straight into the panel (:mod:`._decode`).
    """

    def __init__(self, pin, bounds, wide, sliced=False, direct=False):
        self.pin, self.bounds, self.wide, self.sliced = pin, bounds, wide, sliced
        self.direct = direct

    def __len__(self):
        return len(self.bounds)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        s, e = self.bounds[i]
        return PanelRef(s, e, self.wide, ref=self.pin.ref,
                        expect=self.pin.panel_expect(s, e, self.wide), sliced=self.sliced,
                        direct=self.direct)


@dataclass(frozen=True)
class PanelRef:
    """A panel to be read on a worker: rows ``start:stop`` of the tall view.

    ``ref`` and ``expect`` (a pinned source and the stamps of this panel's
    chunk keys) are set for pinned sources; ``array`` (a ``zarr.Array``)
    otherwise. ``sliced`` panels are read by byte ranges, so a panel may
    cut through chunks (raw chunks only, :func:`~._pin.read_slices`);
    ``direct`` panels of a pinned source decode each chunk straight into the
    panel buffer (:func:`~._decode.read_box`), others go through zarr.
    """

    start: int
    stop: int
    wide: bool
    ref: object = None  # SourceRef
    expect: tuple = ()  # ((key, ((i, j), stamp)), ...)
    array: object = None  # a zarr.Array when the source is not pinned
    view: object = None  # its MatrixView, for an N-D variable
    sliced: bool = False
    direct: bool = False

    def read(self):
        from ._decode import read_box
        from ._pin import open_pinned, read_region, read_slices

        full = None if self.ref is None else self.ref.matrix_view.shape[0 if self.wide else 1]
        span, every = slice(self.start, self.stop), slice(0, full)
        sel = (every, span) if self.wide else (span, every)
        what = f"{'columns' if self.wide else 'rows'} {self.start}:{self.stop}"
        if self.sliced:
            block = read_slices(self.ref, dict(self.expect), *sel)
        elif self.direct:
            block = read_box(self.ref, dict(self.expect), *sel)
        elif self.ref is not None:
            expect = dict(self.expect)
            block = read_region(self.ref, expect, open_pinned(self.ref, expect), sel, what)
        else:
            try:
                if self.view is not None:
                    m, n = self.view.shape
                    rows, cols = (s.indices(size)[:2] for s, size in zip(sel, (m, n)))
                    block = self.view.read(self.array.__getitem__, rows, cols)
                else:
                    block = np.asarray(self.array[sel])
            except (SVDError, MemoryError):
                raise
            except Exception as exc:  # noqa: BLE001 - codec, decompression, I/O
                raise StorageError(
                    f"reading {what} of the Zarr array failed: {type(exc).__name__}: {exc}"
                ) from exc
        return block.T if self.wide else block


def read_panel(panel):
    """Materialise a panel as float64.

    Parameters
    ----------
    panel : PanelRef or ndarray of shape (rows, n)

    Returns
    -------
    ndarray of shape (rows, n), float64 (the input itself when it already is)
    """
    block = panel.read() if isinstance(panel, PanelRef) else panel
    return np.asarray(block, dtype=np.float64)
