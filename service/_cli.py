"""``svdserve serve [--host HOST] [--port PORT]``: run the job service with uvicorn.

The port is bound before anything else starts: a busy port exits with
status 2 at once, naming it, before a Dask cluster is started. Once the
service is ready it prints the address of its pages (``/``) and API docs.

Everything else comes from ``SVDSERVE_*`` variables (see
:class:`svdserve.service.Settings`). With no ``SVDSERVE_SCHEDULER`` an
embedded ``LocalCluster`` is started with the service; its worker processes
are spawned, so this module only starts serving under
``if __name__ == "__main__"`` or when called as a console script.
"""

from __future__ import annotations

import argparse
import errno
import socket
import sys

__all__ = ["serve_main", "build_parser", "bind_listener", "page_address"]


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
    try:
        sock = bind_listener(settings.host, settings.port)
    except OSError as exc:
        print(f"svdserve serve: cannot listen on {settings.host!r} port {settings.port}: "
              f"{exc.strerror or exc}. "
              + ("Another process (a second `svdserve serve`?) holds the port: stop it, or "
                 "choose another with --port or SVDSERVE_PORT (0 = any free port)."
                 if exc.errno == errno.EADDRINUSE else
                 "Check --host/SVDSERVE_HOST and --port/SVDSERVE_PORT."), file=sys.stderr)
        return 2
    port = sock.getsockname()[1]
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings)
    url = page_address(settings.host, port)
    app.state.announce = (f"svdserve: pages at {url} (API docs at {url}docs); "
                          "stop with Ctrl-C")
    # JSON: uvicorn's own loggers propagate to the root's JSON handler.
    extra = {"log_config": None} if settings.log_format == "json" else {}
    config = uvicorn.Config(app, host=settings.host, port=port, log_level=settings.log_level,
                            timeout_graceful_shutdown=5, lifespan="on", **extra)
    server = uvicorn.Server(config)
    try:  # as uvicorn.run: Ctrl-C is a clean stop, a failed start-up exits 3
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    return 0 if server.started else 3


def bind_listener(host: str, port: int) -> socket.socket:
    """A socket listening on ``(host, port)`` (port 0: any free one).

    Raises
    ------
    OSError
        The port is in use (``errno.EADDRINUSE``), not allowed, or the host
        does not resolve to a local address.
    """
    family, kind, proto, _, addr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        # SO_REUSEADDR as uvicorn sets it: a port in TIME_WAIT is free, a
        # listening one is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def page_address(host: str, port: int) -> str:
    """The pages' URL for a browser on this machine (``0.0.0.0``/``::`` -> 127.0.0.1)."""
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/"


if __name__ == "__main__":
    sys.exit(serve_main())
