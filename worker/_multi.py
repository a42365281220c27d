"""Several variables sharing the sample dimensions, decomposed as one matrix (multivariate EOF).

``svd(group_url, array=["sst", "slp"], sample_dims=("time",))`` (arrays of one
Zarr group, e.g. a Dataset written by ``xarray.to_zarr``) or
``svd([a1, a2], sample_dims=...)`` (in memory: NumPy/dask matrices, or
xarray DataArrays): each variable is viewed as its samples × features matrix
(:mod:`._view`) and the matrices are concatenated along the features
**lazily**: a dask array whose panels read each variable's columns side by
side, so nothing is copied (the stored arrays are read only panel by panel).

Normalisation: as xeofs 3.0.6 does for a list of DataArrays
(``xeofs.preprocessing.Preprocessor``: one ``Scaler`` per variable, then the
``Concatenator``), each variable is centred, standardised and weighted **feature by
feature** (``center``, ``standardize``, ``weights`` apply to every variable,
``"coslat"`` from each variable's own latitude) and no variable is rescaled as a
whole: a variable with larger total variance weighs more. To give each the same
weight, pass ``weights`` as an array holding 1/√(its total variance) on its columns.
``report["variables"]`` gives each variable's column range, dimensions,
feature coordinates and the share of each mode's variance it holds.

Zarr variables are pinned (metadata digest and chunk stamps) and re-listed
after the run like any source; they are read through zarr (absent chunks are
the fill value).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from ._errors import InvalidInputError
from ._labels import read_labels
from ._pin import SourcePin, pin_source
from ._source import Source, open_source

__all__ = ["is_multivariate", "open_variables", "variables_report", "MultiSource"]


def is_multivariate(source, array):
    """Whether ``svd`` got several variables (a list of arrays, or of array names), or an
    in-memory xarray DataArray (read as a list of one, with its coordinates)."""
    return isinstance(array, (list, tuple)) or (isinstance(source, (list, tuple))
                                                and len(source) > 0) or _is_dataarray(source)


def _is_dataarray(x):
    return hasattr(x, "dims") and hasattr(x, "coords") and hasattr(x, "data")


@dataclass
class MultiSource(Source):
    """A lazy concatenation of several variables (a ``"dask"`` :class:`Source`) and their pins."""

    pins: list = field(default_factory=list)

    def verify(self):
        for pin in self.pins:
            pin.verify()


def open_variables(source, array, *, sample_dims, storage_options=None,
                   missing_chunks="fill", panel_bytes=None):
    """The concatenated source and each variable's description.

    Returns
    -------
    src : MultiSource
    variables : list of dict
        ``name``, ``columns`` ([start, stop) of the matrix), ``labels``
        (:func:`~._labels.read_labels`-style, or None).

    Raises
    ------
    InvalidInputError
        ``field="array"``: fewer than one variable, names repeated, or
        sample counts that differ.
    """
    import dask.array as da

    if isinstance(array, (list, tuple)):
        if not isinstance(source, str) and not hasattr(source, "__fspath__"):
            raise InvalidInputError("array as a list names variables of one Zarr group: give "
                                    f"the group's path or URL as source; got "
                                    f"{type(source).__name__}.", field="array")
        parts = [_stored(str(source), name, sample_dims, storage_options, missing_chunks,
                         panel_bytes) for name in _names(array)]
    else:
        source = [source] if _is_dataarray(source) else source
        parts = [_pinned(x, storage_options) if isinstance(x, SourcePin)
                 else _in_memory(x, i, sample_dims) for i, x in enumerate(source)]
    rows = {p[1].shape[0] for p in parts}
    if len(rows) != 1:
        raise InvalidInputError(
            "the variables must share the sample dimensions; got sample counts "
            f"{[int(p[1].shape[0]) for p in parts]} for {[p[0] for p in parts]}.",
            field="array")
    mats = [p[1].astype(np.float64) for p in parts]
    x = da.concatenate(mats, axis=1)
    base = open_source(x)
    variables, start = [], 0
    for name, mat, labels, _pin in parts:
        variables.append({"name": name, "columns": [start, start + int(mat.shape[1])],
                          "labels": labels})
        start += int(mat.shape[1])
    src = MultiSource(base.info, base.kind, base.obj, pins=[p[3] for p in parts if p[3]])
    return src, variables


def _names(array):
    names = [str(a) for a in array]
    if not names or len(set(names)) != len(names):
        raise InvalidInputError(f"array must list distinct variable names; got {array!r}.",
                                field="array")
    return names


def _stored(url, name, sample_dims, storage_options, missing_chunks, panel_bytes):
    """``(name, lazy matrix, labels, pin)`` of one array of a Zarr group."""
    return _pinned(pin_source(url, name, storage_options=storage_options,
                              missing_chunks=missing_chunks, panel_bytes=panel_bytes,
                              sample_dims=sample_dims), storage_options, name)


def _pinned(pin, storage_options, name=None):
    """``(name, lazy matrix, labels, pin)`` of a pinned array (re-checked against storage)."""
    import dask.array as da

    src = open_source(pin)
    name = name or pin.ref.url.rstrip("/").rsplit("/", 1)[-1]
    view = src.matrix_view
    opts = json.loads(pin.ref.options_key) if pin.ref.remote else None
    x = da.from_zarr(pin.ref.url, storage_options=opts or storage_options or None)
    if view is not None:
        x = x.transpose(view.sample_axes + view.feature_axes).reshape(view.shape)
    return name, x, read_labels(src), pin


def _in_memory(x, i, sample_dims):
    """``(name, lazy matrix, labels, None)`` of an in-memory variable (array or DataArray)."""
    import dask.array as da

    if _is_dataarray(x):  # an xarray DataArray (duck-typed: the worker does not need xarray)
        sdims = list(sample_dims or x.dims[:1])
        fdims = [d for d in x.dims if d not in sdims]
        data = x.data if isinstance(x.data, da.Array) else da.from_array(np.asarray(x.data))
        axes = [list(x.dims).index(d) for d in sdims + fdims]
        m = int(np.prod([x.sizes[d] for d in sdims]))
        mat = data.transpose(axes).reshape(m, -1)
        labels = {"dims": list(x.dims), "shape": [int(s) for s in x.shape],
                  "sample_dims": sdims, "feature_dims": fdims,
                  "coords": {d: (np.asarray(x.coords[d].values), {}) for d in x.dims
                             if d in x.coords}}
        return str(x.name if x.name is not None else f"var{i}"), mat, labels, None
    data = x if isinstance(x, da.Array) else da.from_array(np.asarray(x))
    if data.ndim != 2:
        raise InvalidInputError(
            f"variable {i} has shape {tuple(data.shape)}; give 2-D (samples × features) "
            "matrices, or xarray DataArrays with sample_dims.", field="source")
    return f"var{i}", data, None, None


def variables_report(variables, vt, sigma):
    """``report["variables"]``: each variable's columns, dimensions, feature coordinates,
    the share of each mode's squared loading (of the unit-norm component) it holds
    (``mode_fraction``) and its share of the energy the k modes capture
    (``energy_fraction`` = Σ σ_i²·f_i / Σ σ_i²)."""
    out = []
    vt = np.asarray(vt)
    s2 = np.asarray(sigma, dtype=float) ** 2
    for v in variables:
        a, b = v["columns"]
        frac = np.sum(vt[:, a:b] ** 2, axis=1)
        entry = {"name": v["name"], "columns": [a, b], "mode_fraction": frac.round(15).tolist(),
                 "energy_fraction": float(s2 @ frac / s2.sum()) if s2.sum() > 0 else 0.0}
        labels = v["labels"]
        if labels is not None:
            entry.update({key: labels[key] for key in ("dims", "shape", "sample_dims",
                                                        "feature_dims")})
            entry["coords"] = {d: _jsonable(vals) for d, (vals, _attrs)
                               in labels["coords"].items() if d in labels["feature_dims"]}
        out.append(entry)
    return out


def _jsonable(values):
    values = np.asarray(values)
    return values.tolist() if values.dtype.kind in "biuf" else values.astype(str).tolist()
