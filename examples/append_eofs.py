"""Keep the EOFs of a growing field current: one update job per appended day.

A (time, space) field -- two travelling modes plus noise, 4 samples a day --
is stored as a 2-D Zarr array and decomposed once (``method="exact"``,
centred, σ and V only). Then a day at a time the array grows
(``zarr.Array.resize`` plus the new rows, as a producer appends them) and an
update job (``Client.submit(source, update=previous_job)``) merges the new
rows into the previous result, reading only them. For comparison a full job
recomputes from scratch each day; their singular values agree to rounding and
the plot shows what each one read and how long it took.

Run a service first (``svdserve serve`` with ``SVDSERVE_DATA_ROOTS`` including
``--data-dir``), then::

    python examples/append_eofs.py --days 10 --out append_eofs.png
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

STEPS_PER_DAY = 4


def field(days, npoints, *, seed=0):
    """``days * STEPS_PER_DAY`` samples of a field of ``npoints`` points, shape (time, space)."""
    rng = np.random.default_rng(seed)
    t = np.arange(days * STEPS_PER_DAY)[:, None] / STEPS_PER_DAY
    x = np.linspace(0, 2 * np.pi, npoints, endpoint=False)[None, :]
    wave = 3.0 * np.sin(x - 2 * np.pi * t / 9.0) + 1.5 * np.cos(2 * x + 2 * np.pi * t / 4.0)
    return 15.0 + wave + 0.3 * rng.standard_normal((t.size, npoints))


def plot_costs(costs, out):
    """Rows read and seconds per day: update against full recompute (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    days = [c["day"] for c in costs]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    ax1.plot(days, [c["full_rows"] for c in costs], "o-", label="full recompute")
    ax1.plot(days, [c["update_rows"] for c in costs], "s-", label="update")
    ax1.set(xlabel="day appended", ylabel="rows read", title="reads")
    ax2.plot(days, [c["full_s"] for c in costs], "o-", label="full recompute")
    ax2.plot(days, [c["update_s"] for c in costs], "s-", label="update")
    ax2.set(xlabel="day appended", ylabel="seconds (job total)", title="wall time")
    ax1.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=80)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=None, help="service URL (default: $SVDSERVE_URL)")
    parser.add_argument("--token", default=None, help="bearer token (default: $SVDSERVE_TOKEN)")
    parser.add_argument("--data-dir", default="data",
                        help="a directory inside the service's data root (default: ./data)")
    parser.add_argument("--start-days", type=int, default=60, help="days stored at first")
    parser.add_argument("--days", type=int, default=10, help="days appended, one at a time")
    parser.add_argument("--points", type=int, default=128,
                        help="grid points (columns; at most 4 × --start-days: an update needs "
                             "a tall first matrix)")
    parser.add_argument("--out", default="append_eofs.png", help="PNG of the costs")
    args = parser.parse_args(argv)

    import zarr

    from svdserve.client import Client

    data = field(args.start_days + args.days, args.points)
    rows0 = args.start_days * STEPS_PER_DAY
    os.makedirs(args.data_dir, exist_ok=True)
    store = os.path.abspath(os.path.join(args.data_dir, "growing.zarr"))
    # chunks of 3 days: most appended days land inside the last, partial chunk
    z = zarr.create_array(store, shape=(rows0, args.points), dtype="f8",
                          chunks=(3 * STEPS_PER_DAY, args.points), overwrite=True)
    z[...] = data[:rows0]
    opts = {"method": "exact", "center": True, "compute_u": False}
    costs, worst = [], 0.0
    with Client(args.url, args.token) as client:
        job = client.submit(store, 3, **opts).wait()
        for day in range(1, args.days + 1):
            m = z.shape[0]
            z.resize((m + STEPS_PER_DAY, args.points))
            z[m:] = data[m:m + STEPS_PER_DAY]
            job = client.submit(store, update=job, compute_u=False).wait()
            full = client.submit(store, 3, **opts).wait()
            upd, ref = job.report(), full.report()
            s_up, s_full = np.asarray(upd["singular_values"]), np.asarray(ref["singular_values"])
            worst = max(worst, float(np.max(np.abs(s_up - s_full)) / s_full[0]))
            costs.append({"day": day, "update_rows": upd["update"]["rows_read"],
                          "full_rows": z.shape[0], "update_s": upd["timings"]["total"],
                          "full_s": ref["timings"]["total"]})
            print(f"day {day}: update read {upd['update']['rows_read']} of "
                  f"{upd['update']['rows_total']} rows ({upd['timings']['total']:.3f} s), "
                  f"full recompute {z.shape[0]} rows ({ref['timings']['total']:.3f} s); "
                  f"EOF 1 explains {100 * upd.energy_fraction[0]:.1f} %")
        chain = client.jobs(lineage=job)
    print(f"lineage: {len(chain)} jobs, the first {chain[0].id[:8]}, the last {chain[-1].id[:8]}")
    print(f"largest |σ_update − σ_full| / σ₁ = {worst:.1e}")
    plot_costs(costs, args.out)
    print(f"wrote {args.out}")
    # 10·√n·ε: the two σ are those of two backward-stable TSQRs of the same matrix
    return 0 if worst <= 10 * np.sqrt(args.points) * np.finfo(float).eps else 1


if __name__ == "__main__":
    sys.exit(main())
