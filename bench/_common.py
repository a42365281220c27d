"""Shared pieces of the benchmarks: the generated matrix, the cluster, an RSS sampler.

Not a test: nothing here asserts on time.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np

RANK_TRUE = 50  # rank of the low-rank part of the generated matrix


def add_matrix_args(ap, *, rows, cols):
    """The generated matrix's flags, shared by every benchmark."""
    ap.add_argument("--rows", type=int, default=rows)
    ap.add_argument("--cols", type=int, default=cols)
    ap.add_argument("--rank", type=int, default=20)
    ap.add_argument("--chunk-rows", type=int, default=4096)
    ap.add_argument("--workdir", default=os.path.join(os.path.dirname(__file__), "data"))


def matrix_path(args, rows=None):
    """Where the generated ``rows × args.cols`` matrix lives (created on demand)."""
    os.makedirs(args.workdir, exist_ok=True)
    return os.path.join(args.workdir, f"A_{rows or args.rows}x{args.cols}.zarr")


def planted_block(block_id, rows, n, seed, noise):
    """Rows of the generated matrix: 50 components decaying by 0.85, plus Gaussian noise."""
    rng = np.random.default_rng([seed, block_id])
    vt = np.random.default_rng([seed, 10**9]).standard_normal((RANK_TRUE, n)) / np.sqrt(n)
    s = 100.0 * 0.85 ** np.arange(RANK_TRUE)
    return (rng.standard_normal((rows, RANK_TRUE)) * s) @ vt + noise * rng.standard_normal((rows, n))


def ensure_matrix(path, m, n, chunk_rows, client, *, seed=0, noise=0.05):
    """Write (once) an m×n float64 Zarr matrix: low rank plus Gaussian noise.

    The blocks are generated on the cluster and written chunk by chunk, so
    the driver never holds the matrix.
    """
    import zarr

    marker = os.path.join(path, ".complete")
    if os.path.exists(marker):
        z = zarr.open_array(path, mode="r")
        if z.shape == (m, n) and z.chunks[0] == chunk_rows:
            return path
    z = zarr.create_array(path, shape=(m, n), chunks=(chunk_rows, n), dtype="f8",
                          overwrite=True)
    starts = list(range(0, m, chunk_rows))

    def write(i, start):
        stop = min(start + chunk_rows, m)
        arr = zarr.open_array(path, mode="r+")
        arr[start:stop] = planted_block(i, stop - start, n, seed, noise)
        return stop - start

    futures = client.map(write, range(len(starts)), starts, pure=False)
    assert sum(client.gather(futures)) == m
    open(marker, "w").close()
    return path


class RSSSampler:
    """Samples each worker's resident set size every ``interval`` seconds."""

    def __init__(self, client, interval=0.2):
        self.client, self.interval = client, interval
        self.peak = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            try:
                rss = self.client.run(_rss)
            except Exception:  # noqa: BLE001 - a worker may be busy restarting
                rss = {}
            for w, v in rss.items():
                self.peak[w] = max(self.peak.get(w, 0), v)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def peak_mib(self):
        return max(self.peak.values()) / 2**20 if self.peak else float("nan")


def _rss():
    import psutil

    return psutil.Process().memory_info().rss


def bare_pass(client, path, panel_bytes=None, reader="direct"):
    """Σa² over the whole matrix through svdserve's reader (one pass, no cache).

    Panels as a run reads them (:func:`svdserve.worker.plan_layout`); for a
    layout that needs the one-time copy, the stored chunks one at a time,
    as the copy reads them.
    """
    from svdserve.worker import plan_layout
    from svdserve.worker._engine import DaskEngine, Phase
    from svdserve.worker._source import open_source
    from svdserve.worker._tasks import panel_task

    src = open_source(path)
    engine = DaskEngine(client)
    layout = plan_layout(src.info, panel_bytes=panel_bytes)
    if layout.kind == "rechunk":
        pin, (m, n), (cm, cn) = src.pin, src.shape, src.info.chunks
        cells = [(i, j) for i in range(-(-m // cm)) for j in range(-(-n // cn))]
        futures = [client.submit(_chunk_sum_squares, pin.ref,
                                 pin.box_expect((i * cm, min(m, i * cm + cm)),
                                                (j * cn, min(n, j * cn + cn))),
                                 (i, j), (cm, cn), pure=False) for i, j in cells]
        return sum(client.gather(futures))
    panels = src.panels(layout.bounds(), engine, sliced=layout.sliced,
                        direct=src.decodes_directly(reader))
    handles = engine.run_pass(Phase("bare", 1, 1), panels, _sum_squares, lambda i: (),
                              task=panel_task)
    return sum(engine.gather(handles))


def _sum_squares(block):
    return float(np.einsum("ij,ij->", block, block))


def _chunk_sum_squares(ref, expect, cell, chunks):
    from svdserve.worker._read import open_pinned, read_region

    (m, n), (cm, cn), (i, j) = ref.matrix_view.shape, chunks, cell
    exp = dict(expect)
    sel = (slice(i * cm, min(m, i * cm + cm)), slice(j * cn, min(n, j * cn + cn)))
    block = np.asarray(read_region(ref, exp, open_pinned(ref, exp), sel, "bare"), dtype="f8")
    return _sum_squares(block)


def decode_floor(client, path):
    """Decode every chunk file's bytes into one preallocated buffer, chunks split over workers."""
    import zarr

    z = zarr.open_array(path, mode="r")
    files = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(os.path.join(path, "c"))
                   for f in fs)
    workers = sorted(client.scheduler_info()["workers"])
    shares = [files[i::len(workers)] for i in range(len(workers))]
    chunk_bytes = int(np.prod(z.chunks)) * z.dtype.itemsize
    futs = [client.submit(_decode_files, share, chunk_bytes, workers=[w], pure=False)
            for w, share in zip(workers, shares)]
    return sum(client.gather(futs))


def _decode_files(files, chunk_bytes):
    from numcodecs import Zstd

    codec, out, total = Zstd(), bytearray(chunk_bytes), 0
    for name in files:
        with open(name, "rb") as fh:
            raw = fh.read()
        total += len(codec.decode(raw, out=out))
    return total


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def fmt_table(rows, headers):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    return "\n".join([line, sep, *body])
