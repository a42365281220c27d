"""The ``svdserve`` console script.

``svdserve serve ...`` runs the service (:func:`svdserve.service._cli.serve_main`,
imported only then, so the client commands work without the service's
dependencies being imported); every other subcommand is a client command
(:mod:`svdserve.client._cli`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``svdserve``; returns the exit code (0 ok, 1 failed, 2 usage)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "serve":
        from svdserve.service._cli import serve_main

        code = serve_main(argv[1:])
        return int(code or 0)
    from svdserve.client._cli import main as client_main

    return client_main(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
