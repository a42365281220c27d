"""`make demo`: the service on the embedded default, one job on a generated matrix.

Starts ``svdserve serve`` (in-process LocalCluster + SQLite), writes a sample
matrix under a data root, submits a job over HTTP, shows progress and prints
the energy report. The work is in :mod:`svdserve.service._demo`.
"""

from svdserve.service._demo import main

if __name__ == "__main__":
    raise SystemExit(main())
