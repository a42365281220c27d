"""``python -m svdserve.service [--host --port]`` -- same as ``svdserve serve``."""

import sys

from svdserve.service._cli import serve_main

if __name__ == "__main__":
    sys.exit(serve_main())
