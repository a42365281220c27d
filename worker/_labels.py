"""Labels of an N-D variable: dimensions and 1-D coordinates, for results that map back.

An xarray-written store keeps each dimension's coordinate as a 1-D array of
the same name next to the variable (``time``, ``lat``, ``lon``), encoded as
CF says (``units``/``calendar`` for times). :func:`read_labels` reads them
as stored (raw values plus the CF attributes), so the client can restore
them with ``xarray.decode_cf`` without the worker depending on xarray.
"""

from __future__ import annotations

import json
import os
import posixpath

import numpy as np

__all__ = ["read_labels"]

#: Coordinate attributes kept (what ``decode_cf`` and a plot need).
_ATTRS = ("units", "calendar", "long_name", "standard_name", "axis")

#: Largest coordinate read (elements): a coordinate is one value per index.
_MAX_COORD = 2**24


def read_labels(src):
    """Dimensions, sample/feature split and coordinates of a source read through a view.

    Parameters
    ----------
    src : Source

    Returns
    -------
    dict or None
        ``{"dims", "shape", "sample_dims", "feature_dims", "coords": {dim: (values,
        attrs)}}``; None for a matrix read as itself.
    """
    view = src.matrix_view
    if view is None:
        return None
    coords = {}
    if src.pin is not None:
        try:
            coords = _read_coords(src.pin.ref, view)
        except Exception:  # noqa: BLE001 - labels are optional; the numbers are not
            coords = {}
    return {"dims": list(view.dims), "shape": list(view.nd_shape),
            "sample_dims": list(view.sample_dims), "feature_dims": list(view.feature_dims),
            "coords": coords}


def _read_coords(ref, view):
    """``{dim: (ndarray, attrs)}`` of the 1-D coordinates beside a pinned array."""
    import zarr

    if ref.remote:
        parent = ref.url.rstrip("/").rsplit("/", 1)[0]
        kw = {"storage_options": json.loads(ref.options_key)}
    else:
        parent, kw = os.path.dirname(ref.url), {}
    try:
        grp = zarr.open_group(store=parent, mode="r", **kw)
    except Exception:  # noqa: BLE001 - no parent group: no coordinates
        return {}
    out = {}
    for dim, size in zip(view.dims, view.nd_shape):
        if "/" in dim or dim not in grp or size > _MAX_COORD:
            continue
        if not ref.remote and ref.guard.violation(
                os.path.realpath(posixpath.join(parent, dim))) is not None:
            continue
        arr = grp[dim]
        if not isinstance(arr, zarr.Array) or tuple(arr.shape) != (size,):
            continue
        attrs = {k: v for k, v in dict(arr.attrs).items() if k in _ATTRS}
        out[dim] = (np.asarray(arr[...]), attrs)
    return out
