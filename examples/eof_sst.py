"""EOF analysis of a synthetic sea-surface temperature field through the svdserve service.

A (time, lat, lon) field is built from a seasonal cycle, two known spatial
modes with their own time series, and noise; land points are NaN in every
time step. It is written with xarray to Zarr together with its monthly
anomalies (the seasonal cycle removed, as EOF analysis usually starts), and
analysed with :class:`svdserve.EOF` on the service (the store is read by the
service's workers panel by panel, never loaded here):

- area weighting by √cos(latitude) (``use_coslat=True``: the job's
  ``weights="coslat"``), the EOF maps on (lat, lon) with NaN over land,
  compared with the known modes (weighted the same way) and plotted to PNG;
- North's rule of thumb: each eigenvalue's sampling error λ·√(2/N), the pairs
  of modes whose error bars overlap (degenerate: not to be interpreted
  separately), and the scree plot with those error bars (a second PNG);
- a varimax-rotated pair of the two leading modes.

Run a service first (``svdserve serve`` with ``SVDSERVE_DATA_ROOTS`` including
``--data-dir``), then::

    python examples/eof_sst.py --out eof_sst.png --scree eof_sst_scree.png
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np


def synthetic_sst(ntime=240, nlat=36, nlon=72, *, seed=0):
    """The field, its land mask and the two known modes.

    Returns
    -------
    ds : xarray.Dataset
        ``sst`` (time, lat, lon) in °C, NaN over land.
    modes : ndarray of shape (2, nlat, nlon)
        The two spatial patterns, unit norm over the ocean, orthogonal.
    """
    import pandas as pd
    import xarray as xr

    rng = np.random.default_rng(seed)
    time = pd.date_range("1990-01-01", periods=ntime, freq="MS")
    lat = np.linspace(-60, 60, nlat)
    lon = np.linspace(0, 360, nlon, endpoint=False)
    la, lo = np.meshgrid(np.deg2rad(lat), np.deg2rad(lon), indexing="ij")
    land = (np.abs(lat[:, None] - 10) < 25) & (np.abs(lon[None, :] - 60) < 30)  # a continent
    land |= (lat[:, None] > 45) & (lon[None, :] > 250)                          # and another
    ocean = ~land
    # Mode 1: an ENSO-like warm tongue in the east; mode 2: a north-south dipole.
    p1 = np.exp(-((la / 0.3) ** 2) - ((lo - np.deg2rad(240)) / 0.8) ** 2)
    p2 = np.sin(2 * la) * np.cos(lo - np.deg2rad(180))
    modes = np.stack([p1, p2])
    modes[:, land] = 0.0
    q, _ = np.linalg.qr(modes[:, ocean].T)  # orthonormal over the ocean, signs as built
    q *= np.sign(np.sum(q * modes[:, ocean].T, axis=0))
    modes[:, ocean] = q.T
    t = np.arange(ntime)
    pc1 = 3.0 * np.sin(2 * np.pi * t / 43.0) + rng.standard_normal(ntime)  # slow + weather
    pc2 = 1.5 * rng.standard_normal(ntime)
    # Make the two PCs' monthly anomalies uncorrelated, so that the EOFs of the
    # anomalies are the two patterns themselves (not a rotation of them).
    a1, a2 = _monthly_anomaly(pc1, t), _monthly_anomaly(pc2, t)
    pc2 = pc2 - (a1 @ a2) / (a1 @ a1) * a1
    seasonal = 4.0 * np.cos(2 * np.pi * (t[:, None, None] % 12) / 12) * np.cos(la)
    mean = 28.0 - 20.0 * np.sin(la) ** 2
    sst = (mean + seasonal + 30.0 * pc1[:, None, None] * modes[0]
           + 30.0 * pc2[:, None, None] * modes[1] + 0.2 * rng.standard_normal((ntime, nlat, nlon)))
    sst[:, land] = np.nan
    ds = xr.Dataset({"sst": (("time", "lat", "lon"), sst, {"units": "degC"})},
                    coords={"time": time, "lat": ("lat", lat, {"units": "degrees_north"}),
                            "lon": ("lon", lon, {"units": "degrees_east"})})
    return ds, modes


def _monthly_anomaly(x, t):
    out = x.astype(float).copy()
    for month in range(12):
        out[t % 12 == month] -= x[t % 12 == month].mean()
    return out


#: The colour of land (NaN) on the EOF maps: grey, so that it differs from a zero
#: anomaly, which the diverging colormap draws white.
LAND_COLOR = "0.6"


def plot_eofs(eofs, path):
    """The first two EOF maps side by side, land grey, written to ``path``.

    Returns
    -------
    matplotlib.figure.Figure
        The figure (Agg canvas, no pyplot state).
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad=LAND_COLOR)  # NaN = land
    fig = Figure(figsize=(11, 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for ax, mode in zip(axes, (1, 2)):
        comp = eofs["components"].sel(mode=mode)
        lim = float(np.nanmax(np.abs(comp.values)))
        mesh = ax.pcolormesh(comp["lon"], comp["lat"], np.ma.masked_invalid(comp.values),
                             cmap=cmap, vmin=-lim, vmax=lim, shading="auto")
        ratio = float(eofs["explained_variance_ratio"].sel(mode=mode))
        ax.set_title(f"EOF {mode} ({100 * ratio:.1f} % of the variance)")
        ax.set_xlabel("longitude")
        ax.set_ylabel("latitude")
        fig.colorbar(mesh, ax=ax, shrink=0.9, label="land: grey")
    fig.savefig(path, dpi=80)
    return fig


def weighted_modes(modes, lat):
    """The known modes as the weighted analysis sees them: × √cos φ, unit norm over the ocean."""
    w = np.sqrt(np.clip(np.cos(np.deg2rad(lat)), 0, 1))[:, None]
    out = modes * w
    return out / np.sqrt(np.sum(out**2, axis=(1, 2)))[:, None, None]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=None, help="service URL (default: $SVDSERVE_URL)")
    parser.add_argument("--token", default=None, help="bearer token (default: $SVDSERVE_TOKEN)")
    parser.add_argument("--data-dir", default="data",
                        help="a directory inside the service's data root (default: ./data)")
    parser.add_argument("--ntime", type=int, default=240, help="months (default: 240)")
    parser.add_argument("--nlat", type=int, default=36)
    parser.add_argument("--nlon", type=int, default=72)
    parser.add_argument("--modes", type=int, default=8, help="EOFs computed (default: 8)")
    parser.add_argument("--out", default="eof_sst.png", help="PNG of the first two EOF maps")
    parser.add_argument("--scree", default="eof_sst_scree.png",
                        help="PNG of the scree plot with North's error bars")
    args = parser.parse_args(argv)

    import xarray as xr

    import svdserve
    from svdserve.client import Client

    ds, modes = synthetic_sst(args.ntime, args.nlat, args.nlon)
    # Monthly anomalies: EOF analysis is of the departures from the seasonal cycle.
    ds["sst_anom"] = ds["sst"].groupby("time.month") - ds["sst"].groupby("time.month").mean()
    ds = ds.drop_vars("month")
    os.makedirs(args.data_dir, exist_ok=True)
    store = os.path.abspath(os.path.join(args.data_dir, "sst.zarr"))
    ds.chunk({"time": 12}).to_zarr(store, mode="w", consolidated=False)

    with Client(args.url, args.token) as client:
        # √cos φ weights, NaN (land) points dropped and restored, on the service
        model = svdserve.EOF(n_modes=args.modes, use_coslat=True, solver="exact", client=client,
                             array="sst_anom").fit(store, dim="time")
        rotated = svdserve.EOF(n_modes=2, use_coslat=True, solver="exact", rotation="varimax",
                               client=client, array="sst_anom").fit(store, dim="time")
    comps = model.components()
    land = int(np.isnan(comps.sel(mode=1)).sum())
    print(f"sst_anom {dict(ds['sst_anom'].sizes)}: {land} land points masked, "
          f"{comps.sel(mode=1).size - land} ocean points analysed (weights √cos(lat))")
    ok = _report_modes(model, weighted_modes(modes, ds["lat"].values))
    pcs = model.scores()
    print(f"PC time axis {str(pcs['time'].values[0])[:10]} .. {str(pcs['time'].values[-1])[:10]}")
    _report_north(model, args.scree)
    ratio = rotated.explained_variance_ratio().values
    print(f"varimax-rotated pair: {100 * ratio[0]:.1f} % and {100 * ratio[1]:.1f} % of the "
          f"variance (together {100 * ratio.sum():.1f} %, as the unrotated pair: "
          f"{100 * model.explained_variance_ratio().values[:2].sum():.1f} %)")
    eofs = xr.Dataset({"components": comps,
                       "explained_variance_ratio": model.explained_variance_ratio()})
    plot_eofs(eofs, args.out)
    print(f"wrote {args.out}")
    if not ok:
        print("the known modes were not recovered", file=sys.stderr)
        return 1
    return 0


def _report_modes(model, known) -> bool:
    """Print each of the first two EOFs' correlation with its known (weighted) mode."""
    ok = True
    comps, ratio = model.components(), model.explained_variance_ratio()
    for mode in (1, 2):
        comp = comps.sel(mode=mode).values
        ocean = ~np.isnan(comp)
        corr = abs(float(np.sum(comp[ocean] * known[mode - 1][ocean])))  # both unit norm
        print(f"EOF {mode}: {100 * float(ratio.sel(mode=mode)):5.1f} % of the variance, "
              f"|correlation with mode {mode}| = {corr:.4f}")
        ok &= corr > 0.99
    return ok


def _report_north(model, path) -> None:
    """North's errors of the eigenvalues, the degenerate pairs, the scree plot with bars."""
    north = model.north_errors()
    print("mode  eigenvalue   North error")
    for mode in north["mode"].values:
        row = north.sel(mode=mode)
        flag = "  (overlaps the next: degenerate)" if bool(row["degenerate"]) else ""
        print(f"{int(mode):>4}  {float(row['eigenvalue']):<11.5g}  "
              f"{float(row['error']):<11.4g}{flag}".rstrip())
    pairs = north.attrs["degenerate_pairs"]
    print("degenerate pairs (do not interpret separately): "
          + (", ".join(f"{a}-{b}" for a, b in pairs) if pairs else "none"))
    model.report_.plot(path)  # the scree plot carries North's error bars
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
