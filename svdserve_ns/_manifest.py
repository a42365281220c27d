"""The result manifest: ``manifest.json``, the last file of a finished result group.

One module owns the format, and the worker (which writes it), the service
(which serves a result only when it is there) and the client (which reads a
result only when it is there) all import it as ``svdserve._manifest``. It lives
at the top of the distribution, not in :mod:`svdserve.worker`, because
importing anything under ``svdserve.worker`` runs that package's
``__init__`` (dask, distributed), which the client does not otherwise need;
it imports only the standard library.

The file::

    {"format": "svdserve-result/1",
     "arrays": {"U": {"shape": [m, k], "dtype": "float64"}, "S": ..., "Vt": ...,
                "mean": ..., "mask": ...},
     "complete": true}

``arrays`` lists those of :data:`ARRAYS` that the group holds. It is written
after everything else (:func:`write`) and removed first when a result is
written again (:func:`remove`), so its presence means the result is complete:
a reader that finds no manifest (:func:`read`) must not read the group.

Functions take an fsspec filesystem and a path in it (``fsspec.core.url_to_fs``)
and raise :class:`ManifestError`; each part turns that into its own
``StorageError``.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["NAME", "FORMAT", "ARRAYS", "ManifestError", "path_of", "build", "write", "remove",
           "exists", "read", "check", "read_labels"]

NAME = "manifest.json"
FORMAT = "svdserve-result/1"
#: The arrays a result group may hold, in the order the manifest lists them.
ARRAYS = ("U", "S", "Vt", "mean", "mask")


class ManifestError(Exception):
    """The manifest is missing, unreadable, or contradicts its group."""


def path_of(group_path: str) -> str:
    """Where the manifest of the group at ``group_path`` is."""
    return f"{str(group_path).rstrip('/')}/{NAME}"


def build(group) -> dict[str, Any]:
    """The manifest of a (zarr) group: the arrays of :data:`ARRAYS` it holds."""
    arrays = {name: {"shape": list(group[name].shape), "dtype": str(group[name].dtype)}
              for name in ARRAYS if name in group}
    return {"format": FORMAT, "arrays": arrays, "complete": True}


def write(fs, group_path: str, group) -> None:
    """Write the manifest of ``group``: call it last, when every array and attribute is written."""
    with fs.open(path_of(group_path), "w") as fh:
        json.dump(build(group), fh)


def remove(fs, group_path: str) -> None:
    """Remove the manifest (first, before a result is written again); missing is fine."""
    if fs.exists(path_of(group_path)):
        fs.rm(path_of(group_path))


def exists(fs, group_path: str) -> bool:
    """True when the group's manifest exists, i.e. the result is complete."""
    return bool(fs.exists(path_of(group_path)))


def read(fs, group_path: str, url: str | None = None) -> dict[str, Any]:
    """The manifest of the group at ``group_path`` (``url`` names it in messages).

    Raises
    ------
    ManifestError
        No manifest (the result is incomplete, or not a result), or one that
        cannot be read or is not a JSON object.
    """
    url = group_path if url is None else url
    try:
        with fs.open(path_of(group_path), "rb") as fh:
            raw = fh.read()
    except FileNotFoundError as exc:
        raise ManifestError(
            f"the result at {url!r} has no {NAME}: it is not a finished svdserve result (it "
            "may still be written, or it was interrupted) and will not be read") from exc
    except Exception as exc:  # OSError, aiohttp and botocore errors share no base class
        raise ManifestError(f"could not read the result at {url!r}: {exc}") from exc
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise ManifestError(f"the {NAME} of the result at {url!r} is not JSON: {exc}") from exc
    return manifest if isinstance(manifest, dict) else {"manifest": manifest}


def check(manifest: dict[str, Any], group, url: str) -> None:
    """Raise :class:`ManifestError` when an array of ``group`` has another shape than listed."""
    for name, meta in (manifest.get("arrays") or {}).items():
        if name in group and list(group[name].shape) != list(meta.get("shape", [])):
            raise ManifestError(
                f"the result at {url!r} does not match its manifest: {name} has shape "
                f"{group[name].shape}, the manifest says {meta.get('shape')}")


def read_labels(group) -> dict[str, Any] | None:
    """The labels of a ``sample_dims`` result, or None: the group's ``labels``
    attribute with each ``coords/<dim>`` array read next to its CF attributes.

    Returns
    -------
    dict or None
        As the attribute, with ``coords`` mapping each dimension to
        ``(values ndarray, attrs dict)``.
    """
    labels = group.attrs.get("labels")
    if not labels:
        return None
    coords = {dim: (group["coords"][dim][...], dict(attrs))  # zarr reads an ndarray
              for dim, attrs in (labels.get("coords") or {}).items()}
    return {**labels, "coords": coords}
