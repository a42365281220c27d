"""Opening the input matrix and planning panels.

A *source* is a Zarr array (format 2 or 3, local or any fsspec URL such as
``s3://``), a NumPy array or a dask array. :func:`open_source` validates it
once and returns a :class:`Source`; :func:`plan_panels` cuts it into row
bands aligned with its chunk boundaries.

A wide matrix (m < n) is decomposed through its transpose: the *tall view*
has ``m_t = max(m, n)`` rows, and a panel of it is a band of columns of the
stored array. Panels are read on the workers by :func:`read_panel`, which
counts nothing itself: every task reports the rows it read, and the driver
adds them up into the pass count.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field

import numpy as np

from ._errors import InvalidInputError, SourceNotFoundError, StorageError

__all__ = ["SourceInfo", "Source", "PanelRef", "open_source", "inspect_source",
           "plan_panels", "read_panel", "DEFAULT_PANEL_BYTES"]

DEFAULT_PANEL_BYTES = 128 * 2**20


@dataclass(frozen=True)
class SourceInfo:
    """What :func:`inspect_source` learns from metadata alone.

    Attributes
    ----------
    shape : tuple of int
        ``(m, n)`` as stored.
    dtype : str
    chunks : tuple of int
        Regular chunk shape ``(cm, cn)`` (the whole array for NumPy input).
    url : str or None
        The path or URL opened, None for in-memory input.
    array : str or None
        The array's path inside a group, if any.
    zarr_format : int or None
    """

    shape: tuple
    dtype: str
    chunks: tuple
    url: str | None = None
    array: str | None = None
    zarr_format: int | None = None


@dataclass
class Source:
    """A validated input. ``kind`` is ``"zarr"``, ``"numpy"`` or ``"dask"``."""

    info: SourceInfo
    kind: str
    obj: object  # zarr.Array, ndarray or dask array
    storage_options: dict | None = None
    zarr_ref: tuple | None = field(default=None)  # (url, array, storage_options json)

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


@functools.lru_cache(maxsize=32)
def _open_zarr_cached(url, array, options_key):
    return _open_zarr(url, array, json.loads(options_key))


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


def open_source(source, *, array=None, storage_options=None):
    """Validate an input and describe it.

    Parameters
    ----------
    source : zarr.Array, str, os.PathLike, ndarray or dask array
        The matrix, or a path/URL of a Zarr array or group.
    array : str, optional
        Path of the array inside a group.
    storage_options : dict, optional
        fsspec options (credentials, ``endpoint_url``) for remote URLs.

    Returns
    -------
    Source

    Raises
    ------
    SourceNotFoundError, InvalidInputError, StorageError
    """
    import zarr

    try:
        import dask.array as da
    except ImportError:  # pragma: no cover - dask is a dependency
        da = None

    if isinstance(source, zarr.Array):
        dt = _check_matrix(source.shape, source.dtype, "the Zarr array")
        info = SourceInfo(tuple(source.shape), dt, tuple(source.chunks), None, None,
                          source.metadata.zarr_format)
        return Source(info, "zarr", source, storage_options)
    if da is not None and isinstance(source, da.Array):
        dt = _check_matrix(source.shape, source.dtype, "the dask array")
        chunks = tuple(max(c) if c else 0 for c in source.chunks)
        return Source(SourceInfo(tuple(source.shape), dt, chunks), "dask", source)
    if isinstance(source, np.ndarray):
        dt = _check_matrix(source.shape, source.dtype, "the NumPy array")
        return Source(SourceInfo(tuple(source.shape), dt, tuple(source.shape)), "numpy", source)
    if hasattr(source, "__fspath__") or isinstance(source, str):
        url = str(source.__fspath__() if hasattr(source, "__fspath__") else source)
        node, array = _open_zarr(url, array, storage_options)
        dt = _check_matrix(node.shape, node.dtype, f"array {array or url!r}")
        info = SourceInfo(tuple(node.shape), dt, tuple(node.chunks), url, array,
                          node.metadata.zarr_format)
        return Source(info, "zarr", node, storage_options,
                      zarr_ref=(url, array, _options_key(storage_options)))
    raise InvalidInputError(
        f"source must be a Zarr array, a path or URL of one, or a NumPy/dask array; "
        f"got {type(source).__name__}.", field="source")


def inspect_source(source, *, array=None, storage_options=None):
    """Open only the metadata of ``source`` and validate it.

    Returns
    -------
    SourceInfo

    Raises
    ------
    SourceNotFoundError, InvalidInputError, StorageError
    """
    return open_source(source, array=array, storage_options=storage_options).info


# --------------------------------------------------------------------------- panels


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
    list of (start, stop)
    """
    budget = DEFAULT_PANEL_BYTES if panel_bytes is None else int(panel_bytes)
    if budget <= 0:
        raise InvalidInputError(f"panel_bytes must be positive; got {panel_bytes!r}.",
                                field="panel_bytes")
    chunk = max(1, min(int(chunk), n_rows))
    chunks_per_panel = max(1, budget // max(1, chunk * n_cols * itemsize))
    step = chunk * chunks_per_panel
    return [(s, min(s + step, n_rows)) for s in range(0, n_rows, step)]


@dataclass(frozen=True)
class PanelRef:
    """A panel to be read on a worker: rows ``start:stop`` of the tall view."""

    start: int
    stop: int
    wide: bool
    zarr_ref: tuple | None = None  # (url, array, options json): reopened on the worker
    array: object = None  # a zarr.Array when no URL is known

    def read(self):
        if self.zarr_ref is not None:
            url, array, key = self.zarr_ref
            node = _open_zarr_cached(url, array, key)[0]
        else:
            node = self.array
        try:
            if self.wide:
                block = np.asarray(node[:, self.start:self.stop]).T
            else:
                block = np.asarray(node[self.start:self.stop, :])
        except (OSError, ValueError, KeyError) as exc:
            raise StorageError(
                f"reading rows {self.start}:{self.stop} failed: {exc}") from exc
        return block


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
