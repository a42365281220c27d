"""Result store: a Zarr group with the factors, the report and a manifest.

Layout of ``{out}``::

    zarr.json        group metadata; attributes ``svdserve`` (provenance) and ``report``
    U/               m×k, row chunks like the input
    S/               k
    Vt/              k×n
    mean/            n (only when centred)
    mask/            n bool, True for features masked as missing everywhere (``missing="mask"``)
    coords/<dim>     1-D coordinates of an N-D variable's dimensions, as stored (CF-encoded,
                     with their ``units``/``calendar``); group attribute ``labels``
                     = {dims, shape, sample_dims, feature_dims} (``sample_dims`` only)
    manifest.json    written last: arrays, shapes, dtypes (format: :mod:`svdserve._manifest`)

A reader (:func:`load`) refuses a group without ``manifest.json``, so a
result that was interrupted half-way is never mistaken for a finished one.
Writing over an existing result deletes its manifest first.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field

import numpy as np

from svdserve import _manifest

from ._errors import StorageError

__all__ = ["SVDResult", "ResultWriter", "load", "write_tall_block"]


@dataclass
class SVDResult:
    """A truncated SVD ``A ≈ U diag(S) Vt`` (of ``A − 1 meanᵀ`` when centred).

    Attributes
    ----------
    U : ndarray or zarr.Array of shape (m, k)
    S : ndarray of shape (k,)
    Vt : ndarray or zarr.Array of shape (k, n)
    mean : ndarray of shape (n,) or None
        Column means subtracted before the decomposition (``center=True``).
    report : dict
        The energy report (``docs/contracts.md`` section 3).
    passes : int
        Passes over A made, counted by the panel reader.
    method : str
        ``"exact"`` or ``"randomized"``.
    url : str or None
        Where the result is stored, if it was written.
    provenance : dict
        Input, shape, parameters, seed, versions and timings.
    events : list of str
        What happened to the cluster during the run (workers lost and
        recomputed from lineage).
    reads : float
        Of those passes, how many came from storage (the rest from the
        panel cache), in passes' worth of rows.
    mask : ndarray of shape (n,), bool, or None
        ``missing="mask"``: features missing in every sample (their columns
        of ``Vt`` carry no information).
    labels : dict or None
        ``sample_dims`` runs: ``dims``, ``shape``, ``sample_dims``,
        ``feature_dims`` and ``coords`` (``{dim: (values, attrs)}``).
    scale : ndarray of shape (n,) or None
        ``weights``/``standardize``: the feature scale D; ``U S Vt`` then
        approximates ``(A − 1 meanᵀ)·D`` (``Vt / scale`` unweights the components).
    """

    U: object
    S: np.ndarray
    Vt: object
    mean: np.ndarray | None
    report: dict
    passes: int
    method: str
    url: str | None = None
    provenance: dict = field(default_factory=dict)
    events: list = field(default_factory=list)
    reads: float = 0.0
    mask: np.ndarray | None = None
    labels: dict | None = None
    scale: np.ndarray | None = None

    @property
    def rank(self):
        return int(self.S.size)


def _fs(url, storage_options):
    from fsspec.core import url_to_fs

    return url_to_fs(str(url), **(storage_options or {}))


def _open_group(url, storage_options, mode):
    import zarr

    kw = {"mode": mode}
    if storage_options and "://" in str(url):
        kw["storage_options"] = storage_options
    return zarr.open_group(store=str(url), **kw)


@functools.lru_cache(maxsize=16)
def _cached_array(url, options_key, name):
    return _open_group(url, json.loads(options_key), "r+")[name]


def write_tall_block(block, url, options_key, name, start, stop, transpose):
    """Write one panel of the tall factor (runs on a worker).

    Parameters
    ----------
    block : ndarray of shape (stop - start, k)
    transpose : bool
        Wide input: the tall factor is Vtᵀ, so write ``block.T`` into columns.

    Returns
    -------
    int : rows written
    """
    arr = _cached_array(url, options_key, name)
    try:
        if transpose:
            arr[:, start:stop] = block.T
        else:
            arr[start:stop, :] = block
    except OSError as exc:
        raise StorageError(f"writing {name}[{start}:{stop}] to {url!r} failed: {exc}") from exc
    return stop - start


class ResultWriter:
    """Create a result group and finish it with a manifest.

    Parameters
    ----------
    url : str
        Path or fsspec URL of the group to create.
    storage_options : dict or None
    shape : (m, n)
        Shape of the input as stored.
    k : int
    tall_chunk : int
        Chunk length of the input along its long side.
    wide : bool
    center : bool
    with_tall : bool, default=True
        Create the tall factor (U, or Vt for wide input); False for a
        ``compute_u=False`` result, which then has no ``U``.
    """

    def __init__(self, url, storage_options, shape, k, tall_chunk, wide, center,
                 with_tall=True):
        self.url, self.storage_options = str(url).rstrip("/"), storage_options
        self.options_key = json.dumps(storage_options or {}, sort_keys=True, default=str)
        m, n = shape
        self.tall_name = "Vt" if wide else "U"
        try:
            _manifest.remove(*_fs(self.url, storage_options))
            grp = _open_group(self.url, storage_options, "w")
            if wide:
                grp.create_array("U", shape=(m, k), chunks=(m, k), dtype="f8")
                grp.create_array("Vt", shape=(k, n), chunks=(k, tall_chunk), dtype="f8")
            else:
                if with_tall:
                    grp.create_array("U", shape=(m, k), chunks=(tall_chunk, k), dtype="f8")
                grp.create_array("Vt", shape=(k, n), chunks=(k, n), dtype="f8")
            grp.create_array("S", shape=(k,), chunks=(k,), dtype="f8")
            if center:
                grp.create_array("mean", shape=(n,), chunks=(n,), dtype="f8")
        except OSError as exc:
            raise StorageError(f"could not create the result group {self.url!r}: {exc}") from exc
        self.group = grp
        _cached_array.cache_clear()

    def finish(self, *, S, small, mean, attrs, mask=None, labels=None, scale=None):
        """Write the small factor, S, mean, mask, labels, attributes, then the manifest.

        Parameters
        ----------
        small : ndarray
            ``U`` of shape (m, k) for wide input, else ``Vt`` of shape (k, n).
        mask : ndarray of shape (n,), bool, optional
        labels : dict, optional
            :func:`~._labels.read_labels` of the source.
        """
        grp = self.group
        try:
            grp["S"][:] = S
            grp["Vt" if self.tall_name == "U" else "U"][:] = small
            if mean is not None:
                grp["mean"][:] = mean
            if mask is not None:
                grp.create_array("mask", shape=mask.shape, chunks=mask.shape or (1,),
                                 dtype="bool")[...] = mask
            if scale is not None:
                grp.create_array("scale", shape=scale.shape, chunks=scale.shape or (1,),
                                 dtype="float64")[...] = scale
            attrs = dict(attrs)
            if labels is not None:
                attrs["labels"] = _write_coords(grp, labels)
            grp.attrs.update(attrs)
            _manifest.write(*_fs(self.url, self.storage_options), grp)
        except OSError as exc:
            raise StorageError(f"could not finish the result group {self.url!r}: {exc}") from exc


def _write_coords(grp, labels):
    """Write ``coords/<dim>``; the JSON part of ``labels`` (coordinate attrs inline)."""
    out = {key: labels[key] for key in ("dims", "shape", "sample_dims", "feature_dims")}
    out["coords"] = {}
    if labels["coords"]:
        sub = grp.create_group("coords")
        for dim, (values, attrs) in labels["coords"].items():
            values = np.asarray(values)
            if values.dtype.kind not in "biufcmM":
                values = values.astype(str).astype(object)
                arr = sub.create_array(dim, shape=values.shape, dtype=str)
            else:
                arr = sub.create_array(dim, shape=values.shape, dtype=values.dtype)
            arr[...] = values
            out["coords"][dim] = attrs
    return out


def load(url, storage_options=None):
    """Open a finished result group.

    Parameters
    ----------
    url : str
        Path or fsspec URL of the group written by ``svd(..., out=url)``.
    storage_options : dict, optional

    Returns
    -------
    SVDResult
        ``U`` and ``Vt`` are lazy ``zarr.Array``; ``S``, ``mean`` are read.

    Raises
    ------
    StorageError
        No group there, or no manifest (the result is incomplete).
    """
    url = str(url).rstrip("/")
    try:
        fs, path = _fs(url, storage_options)
        manifest = _manifest.read(fs, path, url)
        grp = _open_group(url, storage_options, "r")
    except _manifest.ManifestError as exc:
        raise StorageError(str(exc)) from exc
    except OSError as exc:
        raise StorageError(f"could not open the result {url!r}: {exc}") from exc
    attrs = dict(grp.attrs)
    prov = attrs.get("svdserve", {})
    return SVDResult(
        U=grp["U"] if "U" in manifest["arrays"] else None, S=np.asarray(grp["S"][:]),
        Vt=grp["Vt"],
        mean=np.asarray(grp["mean"][:]) if "mean" in manifest["arrays"] else None,
        report=attrs.get("report", {}), passes=int(prov.get("passes", 0)),
        method=prov.get("method", ""), url=url, provenance=prov,
        events=list(prov.get("events", [])), reads=float(prov.get("reads", 0.0)),
        mask=np.asarray(grp["mask"][...]) if "mask" in manifest["arrays"] else None,
        labels=_manifest.read_labels(grp),
        scale=np.asarray(grp["scale"][...]) if "scale" in manifest["arrays"] else None)
