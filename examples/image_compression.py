"""Image compression with a truncated SVD computed by the svdserve service.

A real photograph (scikit-learn's sample image "china.jpg", shipped with the
package) is turned into a grey-level matrix, uploaded as Zarr, and decomposed
once at the largest rank wanted. Each rank-k reconstruction is then read
lazily from the stored factors; for each k we print the storage ratio
k(m+n+1)/(mn), the exact Frobenius error from the energy report (no pass over
the image needed), the PSNR, and write a PNG grid of the reconstructions.

Run a service first (``svdserve serve`` with ``SVDSERVE_DATA_ROOTS`` including
``--data-dir``), then::

    python examples/image_compression.py --ranks 5,20,50 --out china_svd.png
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np


def load_grey_image(downsample: int = 1) -> np.ndarray:
    """scikit-learn's china.jpg as float64 luminance in [0, 255] (ITU-R BT.601 weights)."""
    from sklearn.datasets import load_sample_image

    rgb = load_sample_image("china.jpg").astype(np.float64)
    grey = rgb @ np.array([0.299, 0.587, 0.114])
    return grey[::downsample, ::downsample].copy()


def psnr(original: np.ndarray, approx: np.ndarray, peak: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB."""
    mse = float(np.mean((original - approx) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(peak**2 / mse)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=None, help="service URL (default: $SVDSERVE_URL)")
    parser.add_argument("--token", default=None, help="bearer token (default: $SVDSERVE_TOKEN)")
    parser.add_argument("--data-dir", default="data",
                        help="a directory inside the service's data root (default: ./data)")
    parser.add_argument("--ranks", default="5,10,20,50,100", help="comma-separated ranks")
    parser.add_argument("--downsample", type=int, default=1, help="keep every n-th pixel")
    parser.add_argument("--out", default="image_compression.png", help="PNG grid to write")
    args = parser.parse_args(argv)

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from svdserve.client import Client

    ranks = sorted({int(r) for r in args.ranks.split(",")})
    image = load_grey_image(args.downsample)
    m, n = image.shape
    os.makedirs(args.data_dir, exist_ok=True)
    with Client(args.url, args.token) as client:
        url = client.upload(image, os.path.join(args.data_dir, "china_grey.zarr"),
                            chunks=64, overwrite=True)
        job = client.submit(url, max(ranks), method="exact")
        print(f"image {m}x{n}, job {job.id}", file=sys.stderr)
        res = job.result(progress=sys.stderr.isatty())

    print(f"{'rank':>5} {'storage':>8} {'rel. error':>11} {'PSNR dB':>8}")
    rows = []
    for k in ranks:
        approx = np.asarray(res.reconstruct(k).compute())
        measured = float(np.linalg.norm(image - approx))
        predicted = res.error(k)  # exact, from the report
        if not math.isclose(measured, predicted, rel_tol=1e-6):
            print(f"error mismatch at rank {k}: {measured} vs {predicted}", file=sys.stderr)
            return 1
        value = psnr(image, np.clip(approx, 0, 255))
        rows.append((k, approx, value))
        print(f"{k:>5d} {res.storage_ratio(k):>8.3f} {res.error(k, relative=True):>11.4f} "
              f"{value:>8.2f}")

    cols = len(rows) + 1
    fig = Figure(figsize=(3 * cols, 3 * m / n + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, cols)
    axes[0].imshow(image, cmap="gray", vmin=0, vmax=255)
    axes[0].set_title(f"original {m}x{n}")
    for ax, (k, approx, value) in zip(axes[1:], rows):
        ax.imshow(np.clip(approx, 0, 255), cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"k={k}: {100 * res.storage_ratio(k):.1f} %, {value:.1f} dB")
    for ax in axes:
        ax.set_axis_off()
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
