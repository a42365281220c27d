"""svdserve.service: the FastAPI job service over :mod:`svdserve.worker`.

>>> from svdserve.service import create_app, Settings        # doctest: +SKIP
>>> app = create_app(Settings(data_roots=["./data"]))          # doctest: +SKIP

Run it with ``svdserve serve`` (or ``python -m svdserve.service``).

Modules: :mod:`._settings` (one ``BaseSettings``), :mod:`._schemas`
(request/response models), :mod:`._store` (SQLite), :mod:`._runner`
(dispatcher, cancel, recovery), :mod:`._cluster` (embedded or remote Dask),
:mod:`._sandbox` (source path checks), :mod:`._auth` (bearer tokens),
:mod:`._routes` (HTTP API v1), :mod:`._pages` (web pages, offline ``/docs``), :mod:`._problems` (RFC 9457 errors),
:mod:`._app` (``create_app`` and the lifespan), :mod:`._cli` (``svdserve serve``),
:mod:`._demo` (``make demo``).
"""

from ._app import create_app
from ._settings import Settings

__all__ = ["create_app", "Settings"]
