"""Column scalings applied inside the passes: weights and standardisation (pure NumPy).

EOF analysis decomposes the field ``(A − 1μᵀ)·D`` with ``D = diag(d)`` a
scaling of the features (the columns of the matrix view), as eofs and xeofs
do (xeofs ``Scaler``: centre, divide by the standard deviation, multiply by
the weights):

- ``weights``: ``d_j = w_j``, with ``"coslat"`` = √cos φ_j (xeofs
  ``use_coslat=True``: ``sqrt(clip(cos(deg2rad(lat)), 0, 1))``; eofs
  ``weights="coslat"``), ``"area"`` = √(a_j / Σ a) with a_j the cell area
  from bounds guessed half-way between the coordinates (eofs ``"area"``: iris
  ``area_weights(normalize=True)``), or any non-negative array broadcast to
  the feature shape;
- ``standardize``: ``d_j = w_j / max(σ_j, ε₃₂)`` with σ_j the population
  standard deviation (ddof = 0) of feature j, clipped below at float32's ε
  exactly as xeofs 3.0.6 (``X.std(sample_dims).clip(min=finfo(float32).eps)``):
  a constant feature becomes zero, never NaN.

D is never applied to the stored data: each panel is multiplied by it as the
kernels receive it (in place when the panel buffer is the task's own; the
pivot shift of a centred run happens first). The standard deviations of a
tall matrix (features across panels) come from pass 1's per-column sums of
squares (:func:`column_sumsq`, scaled like LAPACK's ``dlassq`` so they cannot
overflow) and are applied after it: the TSQR R of A·D is R·D (still
triangular); the first power product scales as D·(AᵀA G). A wide matrix
holds each feature as one row of a panel, so its standard deviation is local
(:meth:`PanelScale.apply`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._errors import InvalidInputError
from ._sumsq import sumsq

__all__ = ["WEIGHT_KINDS", "LATITUDE_NAMES", "LONGITUDE_NAMES", "check_weights",
           "feature_weights", "PanelScale", "column_sumsq", "merge_column_sumsq",
           "std_scale", "scaled_total", "scaling_report", "STD_FLOOR"]

#: Named weightings of ``weights=``.
WEIGHT_KINDS = ("coslat", "area")

#: Coordinate names taken as latitude / longitude (xeofs' ``VALID_LATITUDE_NAMES``).
LATITUDE_NAMES = ("latitude", "lats", "lat", "Latitude", "Lats", "Lat", "LATITUDE", "LATS",
                  "LAT")
LONGITUDE_NAMES = ("longitude", "longitudes", "lon", "lons", "Longitude", "Lon", "LON")

#: Smallest standard deviation divided by (xeofs: ``finfo(float32).eps``).
STD_FLOOR = float(np.finfo(np.float32).eps)


def check_weights(weights):
    """Validate ``weights=``: None, ``"coslat"``, ``"area"`` or non-negative finite numbers.

    Returns
    -------
    None, str or tuple of float
        An array-like is flattened to a tuple (its shape is checked against the
        features by :func:`feature_weights`), kept with its shape as
        ``(shape, values)``.

    Raises
    ------
    InvalidInputError
        ``field="weights"``.
    """
    if weights is None:
        return None
    if isinstance(weights, str):
        if weights not in WEIGHT_KINDS:
            raise InvalidInputError(
                f"weights must be one of {', '.join(map(repr, WEIGHT_KINDS))} or an array of "
                f"non-negative numbers over the features; got {weights!r}.", field="weights")
        return weights
    try:
        arr = np.asarray(weights, dtype=float)
    except (TypeError, ValueError):
        raise InvalidInputError(f"weights must be numbers; got {_short(weights)}.",
                                field="weights") from None
    if arr.ndim == 0 or arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise InvalidInputError(
            "weights must be a non-empty array of finite numbers >= 0 over the features; got "
            f"{_short(weights)}.", field="weights")
    return (tuple(int(s) for s in arr.shape), tuple(float(x) for x in arr.ravel()))


def _short(x):
    text = repr(x)
    return text if len(text) <= 80 else text[:77] + "..."


def feature_weights(weights, n, labels):
    """The weight of every feature (column of the matrix view), shape (n,), or None.

    Parameters
    ----------
    weights : None, str or (shape, values)
        As :func:`check_weights` returns it.
    n : int
        Number of features.
    labels : dict or None
        :func:`~._labels.read_labels` of the source (dims, coordinates).

    Raises
    ------
    InvalidInputError
        ``field="weights"``: a shape that does not broadcast to the features,
        or a named weighting without the latitude coordinate.
    """
    if weights is None:
        return None
    fshape = _feature_shape(labels, n)
    if isinstance(weights, str):
        lat, lon = _lat_lon(weights, labels)
        w = _coslat(lat) if weights == "coslat" else _area(lat, lon)
        return _over_features(w, labels, fshape)
    shape, values = weights
    arr = np.asarray(values, dtype=float).reshape(shape)
    if arr.size == n and arr.ndim == 1:
        return arr
    try:
        return np.broadcast_to(arr, fshape).reshape(-1).copy()
    except ValueError:
        raise InvalidInputError(
            f"weights of shape {tuple(shape)} do not broadcast to the features of shape "
            f"{tuple(fshape)} ({n} columns); give one weight per feature (shape ({n},) or "
            f"{tuple(fshape)}).", field="weights") from None


def _feature_shape(labels, n):
    if labels is None:
        return (n,)
    dims, shape = labels["dims"], labels["shape"]
    return tuple(shape[dims.index(d)] for d in labels["feature_dims"])


def _lat_lon(kind, labels):
    """The latitude (and longitude) coordinate of the features: ``((dim, values), ...)``."""
    fdims = labels["feature_dims"] if labels else []
    coords = labels["coords"] if labels else {}
    lat = [d for d in fdims if d in LATITUDE_NAMES and d in coords]
    if len(lat) != 1:
        found = [d for d in fdims if d in coords]
        raise InvalidInputError(
            f"weights={kind!r} needs one latitude coordinate among the feature dimensions "
            f"(named one of {', '.join(LATITUDE_NAMES[:3])}, written next to the variable as "
            f"xarray.to_zarr does); the features have dimensions {fdims} with coordinates "
            f"{found}. Give weights as an array instead.", field="weights")
    lon = [d for d in fdims if d in LONGITUDE_NAMES and d in coords]
    lat_c = (lat[0], np.asarray(coords[lat[0]][0], dtype=float))
    return lat_c, ((lon[0], np.asarray(coords[lon[0]][0], dtype=float)) if lon else None)


def _coslat(lat):
    dim, phi = lat
    return {dim: np.sqrt(np.clip(np.cos(np.deg2rad(phi)), 0.0, 1.0))}


def _bounds(x, lo=-np.inf, hi=np.inf):
    """Cell bounds half-way between the coordinates, the ends extended by half a step
    (iris ``guess_bounds``), clipped to ``[lo, hi]``."""
    if x.size == 1:
        return np.array([x[0] - 0.5, x[0] + 0.5])
    mid = (x[1:] + x[:-1]) / 2
    edges = np.concatenate([[x[0] - (mid[0] - x[0])], mid, [x[-1] + (x[-1] - mid[-1])]])
    return np.clip(edges, lo, hi)


def _area(lat, lon):
    """√(normalised cell area) as eofs' ``"area"`` (iris ``area_weights(normalize=True)``)."""
    (ldim, phi), out = lat, {}
    b = np.deg2rad(_bounds(phi, -90.0, 90.0))
    band = np.abs(np.sin(b[1:]) - np.sin(b[:-1]))
    total = band.sum()
    if lon is not None:
        odim, lam = lon
        width = np.abs(np.diff(np.deg2rad(_bounds(lam))))
        total *= width.sum()
        out[odim] = np.sqrt(width)
    out[ldim] = np.sqrt(band / total)
    return out


def _over_features(factors, labels, fshape):
    """The product of 1-D factors along their feature dimensions, flattened in C order."""
    fdims = labels["feature_dims"]
    w = np.ones(fshape)
    for dim, f in factors.items():
        shape = [1] * len(fdims)
        shape[fdims.index(dim)] = f.size
        w = w * f.reshape(shape)
    return w.reshape(-1)


@dataclass(frozen=True)
class PanelScale:
    """How one panel is scaled before the kernels see it (pure data, sent to workers).

    Attributes
    ----------
    columns : ndarray of shape (n,) or None
        Multiply column j by ``columns[j]`` (features along the columns: tall view).
    rows : ndarray of shape (rows_i,) or None
        Multiply row i by ``rows[i]`` (a wide matrix: features along the rows).
    standardize_rows : bool
        Divide each row by its own standard deviation first (wide; the rows are
        centred already).
    """

    columns: np.ndarray | None = None
    rows: np.ndarray | None = None
    standardize_rows: bool = False

    def row_factors(self, block):
        """The factor of each row of ``block`` (shape (rows_i,)), or None for none."""
        d = self.rows
        if self.standardize_rows:
            d = row_std_scale(block) if d is None else d * row_std_scale(block)
        return d

    def apply(self, block, owned, rows=None):
        """``block`` scaled (in place when ``owned``), ``rows`` from :meth:`row_factors`."""
        out = block if owned else None
        if self.columns is not None:
            block = np.multiply(block, self.columns, out=out)
            out = block
        if rows is not None:
            block = np.multiply(block, rows[:, None], out=out)
        return block


def row_std_scale(block):
    """1 / max(σ_i, ε₃₂) of each (centred) row, σ with ddof = 0, without overflow."""
    amax = np.max(np.abs(block), axis=1) if block.shape[1] else np.zeros(block.shape[0])
    safe = np.where(amax > 0, amax, 1.0)
    std = np.sqrt(np.mean((block / safe[:, None]) ** 2, axis=1)) * safe
    return 1.0 / np.maximum(std, STD_FLOOR)


def _exponents(x):
    """Per column, the binary exponent of max|x| (0 for an all-zero column)."""
    amax = np.max(np.abs(x), axis=0) if x.shape[0] else np.zeros(x.shape[1])
    return np.frexp(amax)[1].astype(np.int64)


def column_sumsq(block, mean):
    """Σ(a − mean)² per column as ``(e, s)``: s·4**e, both of shape (n,); each column is
    scaled by its own power of two first, so no square over- or underflows."""
    x = block - mean
    e = _exponents(x)
    return (e, np.sum(np.square(np.ldexp(x, -e)), axis=0))


def merge_column_sumsq(stats, parts):
    """Per-column Σ(a − μ)² over every panel (Chan, Golub & LeVeque), as ``(e, s)``.

    Parameters
    ----------
    stats : list of dict
        Each panel's :func:`~._sumsq.panel_stats` (``count``, ``mean``).
    parts : list of (e, s)
        Each panel's :func:`column_sumsq`.
    """
    n_tot = sum(s["count"] for s in stats)
    mu = sum((s["count"] / n_tot) * s["mean"] for s in stats)  # no n·μ overflow
    deltas = [s["mean"] - mu for s in stats]
    e = np.max([p[0] for p in parts] + [_exponents(d[None, :]) for d in deltas], axis=0)
    total = np.zeros_like(mu, dtype=float)
    for s, p, d in zip(stats, parts, deltas):
        total += np.ldexp(p[1], 2 * (p[0] - e)) + s["count"] * np.square(np.ldexp(d, -e))
    return e, total


def std_scale(colss, count):
    """1 / max(σ_j, ε₃₂) from a per-column ``(e, s)`` sum of squares of ``count`` rows."""
    e, s = colss
    std = np.ldexp(np.sqrt(s / count), e)
    return 1.0 / np.maximum(std, STD_FLOOR)


def scaled_total(colss, count, d):
    """Σ_j d_j²·ss_j as a :func:`~._sumsq.sumsq` pair ``(e, s)`` (value s·4**e).

    ``d_j·√ss_j = d_j·√s_j·2**e_j``, formed per column: with ``d_j = w_j / σ_j``
    it is ``w_j·√count``, never near over- or underflow, and the sum of its
    squares is scaled (:func:`~._sumsq.sumsq`).
    """
    e, s = colss
    return sumsq(np.ldexp(d * np.sqrt(s), e))


def scaling_report(kind, weights, standardize, variables=None):
    """``report["scaling"]``: what scaled the features (eofs / xeofs conventions)."""
    out = {"weights": None if kind is None else ("array" if not isinstance(kind, str) else kind),
           "standardize": bool(standardize),
           "convention": "components and scores are those of the scaled field (A - mean)·D "
                         "(eofs, xeofs); divide a component by D (res.scale) for the "
                         "unweighted pattern"}
    if weights is not None:
        out["weights_range"] = [float(np.min(weights)), float(np.max(weights))]
    if standardize:
        out["std_floor"] = STD_FLOOR
    if variables is not None:
        out["variables"] = variables
    return out
