"""Storage sandbox: which sources a job may read.

A source URL is checked *before anything is opened*:

- ``s3://bucket/key``: the bucket and a key prefix must be listed in the data
  roots; ``.``/``..``/empty key segments are refused.
- ``file:///abs/path`` and absolute paths: resolved with ``realpath`` (so
  ``..`` and symlinks are followed) and the result must lie inside a local
  data root.
- relative paths: taken relative to the first data root (the client and the
  CLI never send one: they resolve a relative path against their own current
  directory first). Errors quote what was sent and where it was looked for.
- any ``..`` segment is refused outright (403), even one that would stay
  inside the root: there is no honest reason to send one.
- the database file and the results root are never readable, even when they
  lie inside a data root.

This resolves the name once and walks nothing. What lies *inside* the
source is checked where it is read: :func:`svdserve.worker.pin_source`
(at submit, given :meth:`Sandbox.guard`) lists the chunk keys once and
refuses a symlink among them that leads out of the roots, and every read
on a worker checks the file it actually opened against the same roots.

:meth:`Sandbox.resolve` raises :class:`SandboxError` carrying the HTTP status
(403 outside the roots, 422 malformed, 404 missing) and the field at fault.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from ._errors import ServiceError

__all__ = ["Sandbox", "SandboxError", "ResolvedSource"]

URL_FIELD = "body.source.url"
ARRAY_FIELD = "body.source.array"
#: The setting that decides which sources are readable (named in every 403).
ROOTS_SETTING = "SVDSERVE_DATA_ROOTS"


def options_for(url: str, options: dict) -> dict | None:
    """The fsspec options a source is read with: ``options`` for ``s3://``, None for a
    local path. The one rule, for the submit route (:meth:`Sandbox.resolve`) and the runner."""
    return options if url.startswith("s3://") else None

class SandboxError(ServiceError):
    """A source refused by the sandbox.

    Attributes
    ----------
    status : int
        403 (outside the data roots), 404 (missing) or 422 (malformed).
    field : str
        ``"body.source.url"`` or ``"body.source.array"``.
    """

    def __init__(self, status: int, message: str, *, field: str = URL_FIELD):
        super().__init__(message)
        self.status, self.field = status, field


@dataclass(frozen=True)
class ResolvedSource:
    """A source that passed the sandbox.

    Attributes
    ----------
    url : str
        What the core opens: a resolved absolute path or ``s3://bucket/key``.
    array : str or None
        Path of the array inside a group.
    storage_options : dict or None
        fsspec options (object storage only).
    """

    url: str
    array: str | None
    storage_options: dict | None


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _check_text(value: str, field: str) -> None:
    if not value or not value.strip():
        raise SandboxError(422, "must not be empty", field=field)
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise SandboxError(422, "must not contain control characters", field=field)


_FILE_KINDS = {".npy": "a NumPy .npy file", ".npz": "a NumPy .npz archive",
               ".csv": "a CSV file", ".tsv": "a TSV file", ".txt": "a text file",
               ".h5": "an HDF5 file", ".hdf5": "an HDF5 file", ".nc": "a NetCDF file"}


def _not_zarr(where: str, path: str) -> str:
    """The message for the regular file ``path`` sent where a Zarr store is expected."""
    stem, suffix = os.path.splitext(path)
    kind = _FILE_KINDS.get(suffix.lower(), "a file")
    return (f"{where} is {kind}, not a Zarr array or group (a directory holding zarr.json or "
            f".zarray); convert it first with `svdserve upload {path} {stem}.zarr` (or "
            "svdserve.client.Client.upload) and submit the .zarr")


def _segments(path: str) -> list[str]:
    return [s for s in path.split("/")]


class Sandbox:
    """Checks source URLs against the data roots.

    Parameters
    ----------
    data_roots : list of str
        Normalised roots: absolute local paths or ``s3://bucket[/prefix]``.
    forbidden : list of str
        Local paths or ``s3://`` prefixes never readable as sources (the
        results root, the database and its ``-wal``/``-shm`` files).
    storage_options : dict
        fsspec options used for ``s3://`` sources.
    """

    def __init__(self, data_roots: list[str], *, forbidden: list[str] = (),
                 storage_options: dict | None = None):
        self.roots = list(data_roots)
        self.local_roots = [r for r in self.roots if not r.startswith("s3://")]
        self.s3_roots = [r for r in self.roots if r.startswith("s3://")]
        self.forbidden = [f if f.startswith("s3://") else os.path.realpath(f)
                          for f in forbidden]
        self.storage_options = storage_options or {}

    # ------------------------------------------------------------------ API
    def resolve(self, url: str, array: str | None = None, *, check_exists: bool = True
                ) -> ResolvedSource:
        """Resolve ``url`` (and ``array``) or raise :class:`SandboxError`."""
        _check_text(url, URL_FIELD)
        if array is not None:
            _check_text(array, ARRAY_FIELD)
            if array.startswith("/") or any(s in ("", ".", "..") for s in _segments(array)):
                raise SandboxError(
                    403 if ".." in _segments(array) else 422,
                    f"array must be a relative path inside the group without '.', '..' or "
                    f"empty segments; got {array!r}", field=ARRAY_FIELD)
        scheme = urlsplit(url).scheme.lower() if "://" in url else ""
        if scheme == "s3":
            return self._resolve_s3(url, array)
        if scheme == "file":
            parts = urlsplit(url)
            if parts.netloc not in ("", "localhost"):
                raise SandboxError(422, f"file:// URLs must name a local path; got host "
                                        f"{parts.netloc!r}")
            path = unquote(parts.path)
            if not path.startswith("/"):
                raise SandboxError(422, "a file:// URL must hold an absolute path")
            return self._resolve_local(path, array, check_exists)
        if scheme:
            raise SandboxError(
                422, f"unsupported URL scheme {scheme!r}; use a path inside a data root, a "
                     "file:// URL or s3://bucket/key")
        if not url.startswith("/"):
            first = self.roots[0]
            if ".." in _segments(url):
                raise SandboxError(403, f"'..' is not allowed in source paths; got {url!r}")
            if first.startswith("s3://"):
                return self._resolve_s3(f"{first}/{url.lstrip('/')}", array)
            return self._resolve_local(os.path.join(first, url), array, check_exists, sent=url)
        return self._resolve_local(url, array, check_exists)

    def _where(self, sent: str | None, path: str) -> str:
        """``'x' (looked for '/root/x': ...)`` -- what was sent and where it was looked for."""
        if sent is None or sent == path:
            return repr(path)
        return (f"{sent!r} (looked for {path!r}: a relative path is taken from the first data "
                f"root, {self.roots[0]!r})")

    # ------------------------------------------------------------------ local
    def _resolve_local(self, path: str, array: str | None, check_exists: bool,
                       sent: str | None = None) -> ResolvedSource:
        if ".." in _segments(path):
            raise SandboxError(403, f"'..' is not allowed in source paths; got {path!r}")
        if not self.local_roots:
            raise SandboxError(403, f"no local data root is configured ({ROOTS_SETTING}="
                                    f"{','.join(self.roots)}); local paths are refused")
        try:
            real = os.path.realpath(path)
            target = os.path.realpath(os.path.join(real, array)) if array else real
        except (OSError, ValueError) as exc:
            raise SandboxError(422, f"not a usable path: {exc}") from exc
        for candidate, field in ((real, URL_FIELD), (target, ARRAY_FIELD if array else URL_FIELD)):
            self._check_local(candidate, field, original=self._where(sent, path))
        if check_exists:
            if not os.path.exists(real):
                raise SandboxError(404, f"no such file or directory: {self._where(sent, path)}")
            if os.path.isfile(real) and not array:
                raise SandboxError(422, _not_zarr(self._where(sent, path), sent or path))
            if array and not os.path.exists(target):
                raise SandboxError(404, f"the group at {self._where(sent, path)} has no array "
                                        f"{array!r}", field=ARRAY_FIELD)
        return ResolvedSource(url=real, array=array,
                              storage_options=options_for(real, self.storage_options))

    def _check_local(self, real: str, field: str, *, original: str) -> None:
        """Refuse ``real`` outside the roots or overlapping the service's files;
        ``original`` is the quoted name the caller sent (for the message)."""
        if not any(_within(real, root) for root in self.local_roots):
            raise SandboxError(
                403, f"{original} resolves outside the data roots {self.roots} "
                     f"(the service's {ROOTS_SETTING} setting decides which sources are "
                     "readable); put the matrix inside one of them, or ask the operator to "
                     "add its directory", field=field)
        for bad in self.forbidden:
            if not bad.startswith("s3://") and (_within(real, bad) or _within(bad, real)):
                raise SandboxError(
                    403, f"{original} overlaps the service's own database or results; "
                         "they are not readable as sources", field=field)

    def guard(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """``(roots, forbidden)``: the local real paths reads must stay inside / out of.

        Passed to :func:`svdserve.worker.pin_source`, which checks them at
        submit and on every read.
        """
        return (tuple(self.local_roots),
                tuple(f for f in self.forbidden if not f.startswith("s3://")))

    # ------------------------------------------------------------------ s3
    def _resolve_s3(self, url: str, array: str | None) -> ResolvedSource:
        parts = urlsplit(url)
        bucket, key = parts.netloc, unquote(parts.path).lstrip("/")
        if parts.query or parts.fragment:
            raise SandboxError(422, "s3:// URLs must not carry a query or fragment")
        if not bucket:
            raise SandboxError(422, "an s3:// URL needs a bucket: s3://bucket/key")
        key = key.rstrip("/")
        if key and any(s in ("", ".", "..") for s in key.split("/")):
            raise SandboxError(403, f"'.', '..' and empty segments are not allowed in keys; "
                                    f"got {url!r}")
        full = f"s3://{bucket}/{key}".rstrip("/")
        inside = any(full == root or full.startswith(root + "/") for root in self.s3_roots)
        if not inside:
            raise SandboxError(
                403, f"{url!r} is not inside a configured data root (bucket and prefix); "
                     f"configured object-storage roots ({ROOTS_SETTING}): "
                     f"{self.s3_roots or 'none'}")
        target = posixpath.join(full, array) if array else full
        for bad in self.forbidden:
            if bad.startswith("s3://") and (target == bad or target.startswith(bad + "/")
                                            or bad.startswith(full + "/")):
                raise SandboxError(403, f"{url!r} overlaps the service's results; they are "
                                        "not readable as sources")
        return ResolvedSource(url=full, array=array,
                              storage_options=options_for(full, self.storage_options))
