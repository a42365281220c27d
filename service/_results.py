"""Where results live and how they are removed or served.

Layout: ``{results_root}/{tenant}/{job_id}/{attempt}/result.zarr``; the core
writes ``manifest.json`` last (:mod:`svdserve._manifest`), and nothing is
served or reported as a result before it exists.
"""

from __future__ import annotations

import logging
import os
import posixpath
import shutil
from collections.abc import Callable

import fsspec

from svdserve import _manifest

from ._store import ID_PATTERN

__all__ = ["Results"]

log = logging.getLogger("svdserve.service")



class Results:
    """The results root.

    Parameters
    ----------
    root : str
        Absolute local path or ``s3://bucket[/prefix]``.
    storage_options : dict
        fsspec options for object storage.
    """

    def __init__(self, root: str, storage_options: dict | None = None):
        self.root = root.rstrip("/")
        self.remote = root.startswith("s3://")
        self.storage_options = storage_options or {}

    @property
    def out_options(self) -> dict | None:
        return self.storage_options if self.remote else None

    def job_dir(self, tenant: str, job_id: str) -> str:
        return f"{self.root}/{tenant}/{job_id}"

    def url(self, tenant: str, job_id: str, attempt: int) -> str:
        return f"{self.job_dir(tenant, job_id)}/{attempt}/result.zarr"

    def _fs(self):
        return fsspec.core.url_to_fs(self.root, **self.storage_options)[0]

    def prepare(self, url: str) -> None:
        """Remove leftovers of an earlier try of the same attempt; create parents."""
        self.remove(url)
        if not self.remote:
            os.makedirs(os.path.dirname(url), exist_ok=True)

    def remove(self, url: str) -> None:
        """Delete a result (or a job's whole directory); missing is fine."""
        try:
            if self.remote:
                fs = self._fs()
                if fs.exists(url):
                    fs.rm(url, recursive=True)
            elif os.path.isdir(url):
                shutil.rmtree(url)
            elif os.path.exists(url):
                os.remove(url)
        except FileNotFoundError:
            pass
        except OSError:
            log.warning("could not remove %s", url, exc_info=True)

    def remove_attempt(self, tenant: str, job_id: str, attempt: int) -> None:
        self.remove(posixpath.dirname(self.url(tenant, job_id, attempt)))

    def sweep(self, active: Callable[[], set[tuple[str, str, int]]]) -> list[str]:
        """Remove every attempt directory without a manifest that is not ``active``.

        Such a directory is what a failed, cancelled or interrupted attempt
        left: files written after it was removed (a write task that was still
        running), or a removal that failed. Local results roots only (on
        object storage the core waits for its write tasks before a removal).

        Parameters
        ----------
        active : callable
            Returns the ``(tenant, job id, attempt)`` of running jobs
            (:meth:`JobStore.active_attempts`). Called *after* the directories
            are listed: a job claimed meanwhile is then in it, so the sweep
            never removes an attempt that started while it looked.

        Returns
        -------
        list of str
            The directories removed.
        """
        if self.remote or not os.path.isdir(self.root):
            return []
        candidates = [(key, path) for *key, path in _attempt_dirs(self.root)
                      if not self.complete(f"{path}/result.zarr")]
        if not candidates:
            return []
        running = active()
        removed = []
        for key, path in candidates:
            # Checked again: a job that finished meanwhile wrote its manifest before
            # it left the running state (so before ``active()`` looked).
            if tuple(key) in running or self.complete(f"{path}/result.zarr"):
                continue
            log.warning("removing %s: an attempt that left files but no result "
                        "(no manifest) and is not running", path)
            self.remove(path)
            removed.append(path)
        return removed

    def complete(self, url: str) -> bool:
        """True when the result group's manifest exists."""
        if self.remote:
            return _manifest.exists(self._fs(), url)
        return os.path.isfile(_manifest.path_of(url))

    def local_file(self, url: str, key: str) -> str | None:
        """Local path of ``key`` inside the result, or None (missing / remote)."""
        if self.remote:
            return None
        path = os.path.realpath(os.path.join(url, key))
        if not path.startswith(os.path.realpath(url) + os.sep) or not os.path.isfile(path):
            return None
        return path

    def read(self, url: str, key: str) -> bytes | None:
        """Bytes of ``key`` in a remote result, or None when missing."""
        try:
            return self._fs().cat_file(f"{url}/{key}")
        except FileNotFoundError:
            return None


def _attempt_dirs(root: str):
    """``(tenant, job id, attempt, path)`` of each ``{root}/{tenant}/{job}/{attempt}``."""
    for tenant in _subdirs(root):
        for job_id in _subdirs(f"{root}/{tenant}"):
            if not ID_PATTERN.match(job_id):  # not a job's directory: not ours to sweep
                continue
            for attempt in _subdirs(f"{root}/{tenant}/{job_id}"):
                if attempt.isdigit():
                    yield tenant, job_id, int(attempt), f"{root}/{tenant}/{job_id}/{attempt}"


def _subdirs(path: str) -> list[str]:
    try:
        with os.scandir(path) as it:
            return sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
    except (FileNotFoundError, NotADirectoryError):
        return []
