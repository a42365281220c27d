"""The energy report of a job, as a read-only mapping with a text table and a plot.

The JSON layout is the one of ``docs/contracts.md`` section 3; every key is
available with ``report[key]``, and the common ones as NumPy-typed properties.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from ._eof import NorthErrors, north_errors

__all__ = ["EnergyReport"]

#: Energy fractions whose ranks are drawn on the plot.
PLOT_FRACTIONS = (0.90, 0.95, 0.99)


def _num(value: Any, spec: str, missing: str = "-") -> str:
    """Format a number of the JSON (None for ±inf / undefined) without failing."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "inf" if value is None and missing == "inf" else missing
    return format(value, spec)


class EnergyReport(Mapping):
    """Energy report of a truncated SVD (read-only, dict-like over the service's JSON).

    Parameters
    ----------
    data : dict
        The report JSON (``GET /v1/jobs/{id}/report`` or the ``report``
        attribute of the result group).

    Examples
    --------
    >>> rep = job.report()                   # doctest: +SKIP
    >>> rep.rank_for(0.95)                   # doctest: +SKIP
    12
    >>> print(rep.table())                   # doctest: +SKIP
    >>> rep.plot("energy.png")               # doctest: +SKIP
    """

    def __init__(self, data: Mapping[str, Any]):
        self._data = dict(data)

    # -- Mapping -------------------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        shape = "x".join(str(d) for d in self.shape)
        return (
            f"<EnergyReport {shape} {self.get('method', '?')} rank={self.rank} "
            f"captured={self.captured_fraction:.4g}>"
        )

    def to_dict(self) -> dict[str, Any]:
        """A copy of the JSON."""
        return dict(self._data)

    # -- typed views -----------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(int(d) for d in self._data["shape"])  # type: ignore[return-value]

    @property
    def rank(self) -> int:
        return int(self._data["rank"])

    @property
    def singular_values(self) -> np.ndarray:
        """ndarray of shape (k,): σ_1 ≥ … ≥ σ_k."""
        return np.asarray(self._data["singular_values"], dtype=np.float64)

    @property
    def singular_values_all(self) -> np.ndarray | None:
        """ndarray of shape (min(m, n),) for the exact method, else None."""
        s = self._data.get("singular_values_all")
        return None if s is None else np.asarray(s, dtype=np.float64)

    @property
    def frobenius_norm(self) -> float:
        """‖A‖_F (or ‖A − 1μᵀ‖_F when centred), measured in pass 1; finite for any finite input."""
        return float(self._data["frobenius_norm"])

    @property
    def total_energy(self) -> float:
        """‖A‖_F² (or ‖A − 1μᵀ‖_F² when centred), measured exactly in pass 1.

        The report stores null where the square is not representable in float64
        (entries near 1e±170); this is then ``frobenius_norm ** 2`` (inf or 0).
        """
        value = self._data["total_energy"]
        return float(value) if value is not None else self.frobenius_norm**2

    @property
    def captured_fraction(self) -> float:
        """Σ_{i≤k} σ_i² / total (1.0 for an all-zero matrix)."""
        if self.frobenius_norm == 0:
            return 1.0
        return float(self.cumulative_fraction[-1]) if self.rank else 0.0

    @property
    def energy_fraction(self) -> np.ndarray:
        """ndarray of shape (k,): σ_r² / total for r = 1..k."""
        return np.array([c["energy_fraction"] for c in self._data["components"]], dtype=float)

    @property
    def cumulative_fraction(self) -> np.ndarray:
        """ndarray of shape (k,): Σ_{i≤r} σ_i² / total."""
        return np.array([c["cumulative_fraction"] for c in self._data["components"]], dtype=float)

    @property
    def residuals(self) -> np.ndarray:
        """ndarray of shape (k,): Frobenius residual ‖A − A_r‖_F of each rank r = 1..k."""
        return np.array([c["residual"] for c in self._data["components"]], dtype=float)

    @property
    def explained_variance_ratio(self) -> np.ndarray | None:
        r = self._data.get("explained_variance_ratio")
        return None if r is None else np.asarray(r, dtype=float)

    @property
    def error_estimate(self) -> dict[str, Any] | None:
        """``{"spectral", "source", "probability", "probes", "probe_bound", ...}``: a
        bound on ‖A − U S Vᵀ‖₂, or None in older reports.

        ``source`` says what bounds it: ``"exact"`` (σ_{k+1} itself, exact method),
        ``"frobenius"`` (the exact ‖A − U S Vᵀ‖_F of randomized factors, smaller
        than the probe bound) or ``"probe"`` (Gaussian probes, HMT 2011 eq. 4.3;
        the only bound a one-pass sketch has). ``exceeds_sigma_k`` is true when
        the bound is above σ_k; for a sketch ``warning`` then says the result is
        not worth using (see :attr:`flat_spectrum_warning`).
        """
        return self._data.get("error_estimate")

    @property
    def flat_spectrum_warning(self) -> str | None:
        """The warning of a sketch whose error bound exceeds σ_k, or None."""
        return (self.error_estimate or {}).get("warning")

    @property
    def notes(self) -> list[str]:
        """What the job says a user should know about this result (also the job's notes)."""
        return list(self._data.get("notes") or [])

    @property
    def denoise_rank(self) -> int | None:
        """Gavish–Donoho hard-threshold rank (``suggested_rank["denoise"]["rank"]``)."""
        entry = (self._data.get("suggested_rank") or {}).get("denoise")
        return None if entry is None else int(entry["rank"])

    @property
    def known_singular_values(self) -> np.ndarray:
        """ndarray of shape (q,): every σ the job knows: the whole spectrum (q = min(m, n),
        exact method) or σ_1..σ_k."""
        s_all = self.singular_values_all
        return self.singular_values if s_all is None else s_all

    @property
    def cumulative_fraction_all(self) -> np.ndarray:
        """ndarray of shape (q,): Σ_{i≤r} σ_i² / total for every known σ (see
        :attr:`known_singular_values`); :attr:`cumulative_fraction` when only σ_1..σ_k are."""
        s_all = self.singular_values_all
        if s_all is None:
            return self.cumulative_fraction
        norm = self.frobenius_norm
        if norm == 0:
            return np.zeros(s_all.size)
        return np.minimum(np.cumsum((s_all / norm) ** 2), 1.0)  # σ/‖A‖_F: no overflow

    def north_errors(self, n_modes: int | None = None, *,
                     n_eff: int | float | None = None) -> NorthErrors:
        """Eigenvalue sampling errors λ_i·√(2/N) (North et al. 1982) and degenerate pairs.

        See :func:`svdserve.client.north_errors`; ``n_eff="lag1"`` needs the PCs,
        so it is offered by :meth:`StoredResult.north_errors`, not here.
        """
        return north_errors(self, n_modes, n_eff=n_eff)

    @property
    def north(self) -> dict:
        """North's rule of thumb for the k eigenvalues, N = the number of samples.

        The report's ``north`` section (``n_samples``, ``relative_error`` √(2/N),
        ``eigenvalues``, ``errors``, ``degenerate``, ``degenerate_pairs``); for a
        report written before it existed, the same computed here from σ and m.
        """
        section = self._data.get("north")
        if section is not None:
            return dict(section)
        ne = north_errors(self)
        m = self.shape[0]
        # the worker's convention: σ²/(m − 1) centred, σ²/m (second moments) otherwise
        dof = 1.0 if self.get("center", False) else (m - 1) / m
        return {"n_samples": m, "n_eff": "samples", "relative_error": math.sqrt(2 / m),
                "eigenvalues": (ne.eigenvalues * dof).tolist(),
                "errors": (ne.errors * dof).tolist(),
                "degenerate": ne.degenerate.tolist(),
                "degenerate_pairs": [list(p) for p in ne.degenerate_pairs]}

    def rank_for(self, fraction: float) -> int | None:
        """Smallest rank r with cumulative energy ≥ ``fraction``, or None if unknown.

        The exact method knows every σ, so the answer may exceed k; the others
        know σ_1..σ_k and answer None when more than k components are needed.
        """
        s_all = self.singular_values_all
        for entry in self._data.get("energy_ranks") or []:
            if math.isclose(float(entry["fraction"]), fraction):
                if entry.get("rank") is not None:
                    return int(entry["rank"])
                if s_all is None:
                    return None
                break  # a report of before the whole spectrum was used: count it here
        cum = self.cumulative_fraction_all
        # the report's tolerance: the fractions of the whole spectrum sum to 1 within rounding
        idx = np.flatnonzero(cum >= fraction * (1 - 1e-12))
        return int(idx[0]) + 1 if idx.size else None

    def residual(self, rank: int) -> float:
        """Frobenius residual ‖A − A_r‖_F of the rank-``rank`` truncation.

        From the report (see its ``residual_kind``); ranks above k need the
        whole spectrum (``method="exact"``) and are the tail norm of the
        singular values beyond ``rank``, never ``sqrt(total − Σσ²)``.
        """
        rank = int(rank)
        if rank < 0:
            raise ValueError(f"rank must be >= 0, got {rank!r}")
        if rank == 0:
            return self.frobenius_norm
        if rank <= self.rank:
            return float(self._data["components"][rank - 1]["residual"])
        s_all = self.singular_values_all
        if s_all is None:
            raise ValueError(
                f"the residual of rank {rank} needs singular values beyond the {self.rank} "
                "computed; submit with a larger rank or method='exact'"
            )
        if rank > s_all.size:
            raise ValueError(f"rank {rank} exceeds min(m, n) = {s_all.size}")
        tail = s_all[rank:]
        top = float(np.max(tail)) if tail.size else 0.0
        return top * math.sqrt(float(np.sum((tail / top) ** 2))) if top > 0 else 0.0

    # -- presentation ----------------------------------------------------------------------

    def table(self, max_rows: int = 20) -> str:
        """Plain-text summary: header, energy ranks, then one line per component.

        Parameters
        ----------
        max_rows : int, default=20
            Components listed (the first ``max_rows``; the rest elided).
        """
        return "\n".join([*self._summary_lines(), "", *self._energy_rank_lines(), "",
                          *self._component_lines(max_rows)])

    def _summary_lines(self) -> list[str]:
        d = self._data
        m, n = self.shape
        kind = "total variance" if d.get("energy_kind") == "total_variance" else "‖A‖_F²"
        lines = [
            f"shape {m} x {n}   method {d.get('method', '?')}   rank {self.rank}   "
            f"passes {d.get('passes', '?')}   center {bool(d.get('center', False))}",
            f"{kind} {self.total_energy:.6g} (‖·‖_F {self.frobenius_norm:.6g})   "
            f"captured {100 * self.captured_fraction:.4f} %",
        ]
        cond = d.get("condition_number")
        line = f"numerical rank {d.get('numerical_rank', '?')}"
        line += f"   σ1/σk {_num(d.get('condition_estimate'), '.4g', 'inf')}"
        if cond is not None:
            line += f"   κ2 {_num(cond, '.4g')}"
        lines.append(line)
        # The optional sections: one line each when the report has it.
        sections = (
            (d.get("spectral_gaps"), _gaps_line),
            (d.get("error_estimate"), _error_estimate_line),
            ((d.get("suggested_rank") or {}).get("denoise"), _denoise_line),
            (d.get("energy_target"), lambda tgt: _energy_target_line(tgt, self.rank)),
        )
        lines += [line_of(section) for section, line_of in sections if section]
        if self.rank:
            lines.append(_north_line(self.north))
        total_time = (d.get("timings") or {}).get("total")
        if isinstance(total_time, (int, float)):
            lines.append(f"time {total_time:.3f} s")
        notes = list(d.get("notes") or [])
        warning = (d.get("error_estimate") or {}).get("warning")
        if warning and warning not in notes:  # a report of before "notes"
            notes.append(warning)
        lines += [f"note: {note}" for note in notes]
        return lines

    def _energy_rank_lines(self) -> list[str]:
        lines = ["energy    rank     storage ratio"]
        m, n = self.shape
        for e in self._data.get("energy_ranks") or []:
            frac = float(e["fraction"])
            rank = self.rank_for(frac)
            if rank is None:
                lines.append(f"{100 * frac:5.1f} %   > {self.rank:<6d} -")
                continue
            ratio_s = _num(rank * (m + n + 1) / (m * n), ".4g")
            beyond = f"   (beyond k = {self.rank}: from the whole spectrum)" if rank > self.rank else ""
            lines.append(f"{100 * frac:5.1f} %   {rank:<8d} {ratio_s}{beyond}")
        return lines

    def _component_lines(self, max_rows: int) -> list[str]:
        lines = [f"{'r':>5} {'sigma':>13} {'energy %':>10} {'cumul. %':>10} "
                 f"{'residual':>12} {'rel. resid.':>11}"]
        comps = self._data.get("components") or []
        for c in comps[:max_rows]:
            ef, cf = c.get("energy_fraction"), c.get("cumulative_fraction")
            lines.append(
                f"{c.get('rank', '?'):>5} {_num(c.get('sigma'), '>13.6g'):>13} "
                f"{_num(None if ef is None else 100 * ef, '>10.4f'):>10} "
                f"{_num(None if cf is None else 100 * cf, '>10.4f'):>10} "
                f"{_num(c.get('residual'), '>12.6g'):>12} "
                f"{_num(c.get('relative_residual'), '>11.4g'):>11}"
            )
        if len(comps) > max_rows:
            lines.append(f"  ... {len(comps) - max_rows} more components")
        return lines

    def __str__(self) -> str:
        return self.table()

    def plot(self, path: str | os.PathLike, *, dpi: int = 100) -> str:
        """Write a PNG of :meth:`figure`: the scree plot and the cumulative energy.

        Returns
        -------
        path : str
            Where the PNG was written.
        """
        path = os.fspath(path)
        self.figure().savefig(path, format="png", dpi=dpi)
        return path

    def figure(self) -> "matplotlib.figure.Figure":  # noqa: F821 - matplotlib is optional
        """The scree plot (σ_r, log scale) and the cumulative energy, on an Agg canvas.

        The k kept σ carry North's error bars (λ ± λ·√(2/N), drawn on σ as
        σ·√(1 ± √(2/N)), N = the number of samples; the legend names the pairs
        of modes whose bars overlap). Every known σ is drawn (the whole spectrum
        for the exact method, with k marked), on integer rank ticks. The 90 / 95 / 99 % levels are always in the
        legend: with the rank reaching each, or "not reached within k".
        """
        # The object-oriented API with the Agg canvas: no global pyplot state,
        # no display needed.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(10, 4), layout="constrained")
        FigureCanvasAgg(fig)
        ax1, ax2 = fig.subplots(1, 2)
        self._draw_spectrum(ax1, ax2)
        colors = ("tab:green", "tab:orange", "tab:red")
        for frac, color in zip(PLOT_FRACTIONS, colors):
            rk = self.rank_for(frac)
            if rk is None:
                ax2.axhline(100 * frac, color=color, lw=0.8, ls=":",
                            label=f"{100 * frac:g} %: not reached within k={self.rank}")
                continue
            ax2.axhline(100 * frac, color=color, lw=0.8, ls=":")
            label = f"{100 * frac:g} %: r={rk}" + (" (> k)" if rk > self.rank else "")
            ax2.axvline(rk, color=color, lw=1, ls="--", label=label)
            ax1.axvline(rk, color=color, lw=1, ls="--", label=label)
        ax2.legend(loc="lower right", fontsize="small")
        ax1.legend(loc="upper right", fontsize="small")
        m, n = self.shape
        fig.suptitle(f"{m} x {n}, {self.get('method', '?')}, k={self.rank}")
        return fig

    def _draw_spectrum(self, ax1, ax2) -> None:
        """σ and the cumulative energy on integer rank axes; the part beyond k in grey."""
        from matplotlib.ticker import MaxNLocator

        k = self.rank
        s = self.known_singular_values
        r = np.arange(1, s.size + 1)
        cum = 100 * self.cumulative_fraction_all
        beyond = s.size > k  # the whole spectrum is known (exact method)
        if beyond:
            ax1.semilogy(r[s > 0], s[s > 0], ".-", color="0.6", ms=3, lw=0.8,
                         label=f"σ_{k + 1}..σ_{s.size} (not kept)")
            ax2.plot(r, cum, ".-", color="0.6", ms=3, lw=0.8)
        top = s[:k] > 0
        ax1.semilogy(r[:k][top], s[:k][top], "o-", ms=3, color="tab:blue", label=f"σ_1..σ_{k}")
        if k:
            self._draw_north(ax1, r[:k][top], s[:k][top])
        ax2.plot(r[:k], cum[:k], "o-", ms=3, color="tab:blue")
        for ax, what in ((ax1, "singular value σ_r"), (ax2, "cumulative energy (%)")):
            # min_n_ticks=1: one integer in view (k = 1) is enough; else it falls back to 0.1 steps
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
            ax.set_xlim(0.5, max(s.size, 1) + 0.5)  # every rank, none fractional
            ax.set_xlabel("rank r")
            ax.set_ylabel(what)
            if beyond:
                ax.axvline(k, color="black", lw=0.8, label=f"k = {k} (computed rank)")
        ax1.set_title("Scree plot")
        ax2.set_title("Cumulative energy")
        ax2.set_ylim(min(0.0, float(cum.min(initial=0.0))), 101)


    def _draw_north(self, ax, r, s) -> None:
        """North's error bars on σ: λ ± δλ is σ·√(1 ± √(2/N)) (lower end clipped at 0)."""
        north = self.north
        rel = float(north["relative_error"])
        lower = s * (1 - math.sqrt(max(1 - rel, 0.0)))
        upper = s * (math.sqrt(1 + rel) - 1)
        pairs = north.get("degenerate_pairs") or []
        label = f"North's error bars (N = {north['n_samples']})"
        if pairs:
            label += "; overlapping: " + ", ".join(f"{a}-{b}" for a, b in pairs[:6]) + (
                " ..." if len(pairs) > 6 else "")
        ax.errorbar(r, s, yerr=np.vstack([lower, upper]), fmt="none", ecolor="tab:blue",
                    elinewidth=0.8, capsize=2, label=label)


# -- the optional lines of EnergyReport.table ----------------------------------------------

def _gaps_line(gaps: list) -> str:
    # 4 digits, as the job page: on a flat spectrum the largest gaps are 1.00x, and 3 digits
    # printed them as "1", which reads as no gap at all
    return "largest spectral gaps: " + ", ".join(
        f"r={g.get('rank')} (σr/σr+1 {_num(g.get('ratio'), '.4g', 'inf')})" for g in gaps)


def _error_estimate_line(est: dict) -> str:
    bound = f"error estimate ‖A − USVᵀ‖₂ ≤ {_num(est.get('spectral'), '.4g')}"
    source = est.get("source")
    if source == "exact":
        return f"{bound} (σ_k+1, exact)"
    if source == "frobenius":
        return (f"{bound} (the exact ‖A − USVᵀ‖_F; the bound of {est.get('probes', '?')} "
                f"probes is {_num(est.get('probe_bound'), '.4g')})")
    line = (f"{bound} (probability {_num(est.get('probability'), '.10g')}, "
            f"{est.get('probes', '?')} probes)")
    if est.get("exceeds_sigma_k") and source == "probe":
        line += " -- above σ_k: see the warning below"
    return line


def _north_line(north: dict) -> str:
    pairs = north.get("degenerate_pairs") or []
    head = (f"North's errors (N = {north.get('n_samples')}): each eigenvalue ± "
            f"{100 * float(north.get('relative_error', math.nan)):.3g} %; ")
    if not pairs:
        return head + "no neighbouring modes overlap"
    shown = ", ".join(f"{a}-{b}" for a, b in pairs[:8]) + (" ..." if len(pairs) > 8 else "")
    return head + f"degenerate (do not interpret separately): modes {shown}"


def _denoise_line(den: dict) -> str:
    more = " (more than k: the computed rank is below it)" if den.get("more_than_k") else ""
    return (f"denoising rank {den.get('rank')}{more}: threshold "
            f"{_num(den.get('threshold'), '.4g')}, noise σ ≈ "
            f"{_num(den.get('noise_sigma'), '.4g')} ({den.get('noise_estimator')})")


def _energy_target_line(tgt: dict, rank: int) -> str:
    return (f"energy target {100 * float(tgt.get('energy', 0)):.4g} %: rank {rank}"
            f"{'' if tgt.get('reached', True) else ' (max_rank reached first)'}, "
            f"{tgt.get('blocks', 0)} blocks, {tgt.get('passes', '?')} passes")
