"""``svdserve serve [--host HOST] [--port PORT]``: run the job service with uvicorn.

Everything else comes from ``SVDSERVE_*`` variables (see
:class:`svdserve.service.Settings`). With no ``SVDSERVE_SCHEDULER`` an
embedded ``LocalCluster`` is started with the service; its worker processes
are spawned, so this module only starts serving under
``if __name__ == "__main__"`` or when called as a console script.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["serve_main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="svdserve serve",
        description="Run the svdserve job service (HTTP API v1, OpenAPI at /docs). "
                    "Configuration: SVDSERVE_* environment variables.")
    parser.add_argument("--host", default=None,
                        help="interface to listen on (default: SVDSERVE_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None,
                        help="port to listen on (default: SVDSERVE_PORT or 8000; 0 = any free)")
    parser.add_argument("--log-level", default=None,
                        choices=["critical", "error", "warning", "info", "debug"],
                        help="log level (default: SVDSERVE_LOG_LEVEL or info)")
    return parser


def serve_main(argv: list[str] | None = None) -> int:
    """Entry point of ``svdserve serve``; returns the exit status."""
    args = build_parser().parse_args(argv)
    import uvicorn
    from pydantic import ValidationError

    from ._app import create_app
    from ._logs import configure_logging
    from ._settings import Settings

    try:
        settings = Settings()
    except (ValidationError, ValueError, OSError) as exc:
        print(f"svdserve serve: invalid configuration: {exc}", file=sys.stderr)
        return 2
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port),
                                   ("log_level", args.log_level)) if v is not None}
    if overrides:
        settings = settings.model_copy(update=overrides)
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings)
    # JSON: uvicorn's own loggers propagate to the root's JSON handler.
    extra = {"log_config": None} if settings.log_format == "json" else {}
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                timeout_graceful_shutdown=5, lifespan="on", **extra)
    return 0


if __name__ == "__main__":
    sys.exit(serve_main())
