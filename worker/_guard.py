"""The read-time sandbox: where a read of a pinned source may land.

:class:`Guard` holds the allowed roots and the forbidden paths (real paths,
symlinks resolved). Every local file a worker reads is opened here
(:func:`open_guarded`): the file actually held open (``/proc/self/fd``) must
pass the guard, else the read fails before a byte is read. Object storage is
reached through :func:`remote_fs`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from ._errors import SourceAccessError, SourceChangedError

__all__ = ["Guard", "open_guarded", "read_fd", "remote_fs"]


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


@dataclass(frozen=True)
class Guard:
    """Where reads may land: inside ``roots`` (if any), never inside ``forbidden``.

    Paths are real paths (symlinks resolved). An empty ``roots`` allows any
    local path (the core used as a library).
    """

    roots: tuple = ()
    forbidden: tuple = ()

    def violation(self, real: str) -> str | None:
        """Why ``real`` may not be read, or None."""
        if self.roots and not any(_within(real, r) for r in self.roots):
            return f"resolves to {real!r}, outside the data roots"
        for bad in self.forbidden:
            if _within(real, bad) or _within(bad, real):
                return f"resolves to {real!r}, inside the service's own database or results"
        return None


def _fd_path(fd, path):
    """The real path of an open file (Linux: exact; elsewhere: realpath of ``path``)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return os.path.realpath(path)


def open_guarded(ref, path, what, *, at_pin):
    """Open ``path`` read-only; the file actually opened must pass the guard."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        real = _fd_path(fd, path)
        why = ref.guard.violation(real)
        if why is not None:
            if at_pin:
                raise SourceAccessError(f"{what} of {ref.name} {why}; sources must lie inside "
                                        "the data roots.", field="source.url")
            raise SourceChangedError(f"{ref.name} changed since the job was submitted: {what} "
                                     f"{why}. It was not read.")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_fd(fd, size, offset=0):
    """Up to ``size`` bytes of an open file from ``offset`` (fewer only at its end)."""
    parts, got = [], 0
    while got < size:
        chunk = os.pread(fd, size - got, offset + got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def remote_fs(ref):
    """The fsspec filesystem of a remote pinned array and the array's path on it."""
    import fsspec

    options = json.loads(ref.options_key)
    fs, path = fsspec.core.url_to_fs(ref.url, **options)
    return fs, path.rstrip("/")

