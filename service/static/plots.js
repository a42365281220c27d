/* svdserve: SVG plots of an energy report, drawn in the browser. No dependencies.
 *
 *   SvdPlots.render(container, report)  -> {charts, ms}
 *
 * One chart per question: the scree plot (log sigma, k marked, the whole
 * spectrum for exact, North's error bars, the denoising threshold and the error bound), the
 * cumulative energy (90/95/99/99.9 % ranks), the spectral gaps, the residual
 * against rank, the storage ratio against rank. Hovering a chart shows the
 * values at the nearest rank. A path holds one series, whatever its length,
 * so a 10,000-value spectrum is one element.
 */
(function () {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var W = 560, H = 300, M = {l: 64, r: 16, t: 28, b: 40};

  function el(name, attrs, parent, text) {
    var node = document.createElementNS(NS, name);
    for (var key in attrs) { if (attrs[key] !== undefined) node.setAttribute(key, attrs[key]); }
    if (text !== undefined) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  }

  function fmt(v) {
    if (v === null || v === undefined || !isFinite(v)) return "–";
    var a = Math.abs(v);
    if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(3);
    return String(+v.toPrecision(4));
  }

  /* Integer ticks for ranks (never 2.5), about n of them. */
  function rankTicks(lo, hi, n) {
    var span = Math.max(1, hi - lo), raw = span / n, p = Math.pow(10, Math.floor(Math.log10(raw)));
    var step = [1, 2, 5, 10].map(function (m) { return m * p; }).find(function (s) { return s >= raw; });
    step = Math.max(1, Math.round(step));
    var out = [], t = Math.ceil(lo / step) * step;
    for (; t <= hi; t += step) out.push(t);
    if (out.indexOf(lo) < 0 && lo % step !== 0 && out.length < n + 2) out.unshift(lo);
    return out;
  }

  function linTicks(lo, hi, n) {
    var raw = (hi - lo) / n || 1, p = Math.pow(10, Math.floor(Math.log10(raw)));
    var step = [1, 2, 5, 10].map(function (m) { return m * p; }).find(function (s) { return s >= raw; });
    var out = [];
    for (var t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(+t.toPrecision(12));
    return out;
  }

  /* Powers of ten; where fewer than three fall in [lo, hi], 1-2-5 multiples; where even
   * those give fewer than two (a range inside one decade), linear ticks. */
  function logTicks(lo, hi) {
    var a = Math.floor(Math.log10(lo)), b = Math.ceil(Math.log10(hi)), every = Math.max(1, Math.ceil((b - a) / 6));
    var inside = function (t) { return t >= lo * (1 - 1e-9) && t <= hi * (1 + 1e-9); };
    var out = [], e;
    for (e = a; e <= b; e += every) out.push(Math.pow(10, e));
    if (out.filter(inside).length >= 3) return out;
    var more = [];
    for (e = a; e <= b; e++) [1, 2, 5].forEach(function (m) { more.push(m * Math.pow(10, e)); });
    if (more.filter(inside).length >= 2) return more;
    return linTicks(lo, hi, 4).filter(function (t) { return t > 0; });
  }

  /* 1e+2 style for powers of ten and values far from 1, else the number itself (2, 50, 0.5). */
  function logLabel(t) {
    var e = Math.log10(t);
    if (Math.abs(e) >= 4 || Math.abs(e - Math.round(e)) < 1e-9 && Math.abs(e) >= 2) return t.toExponential(0);
    return String(+t.toPrecision(3));
  }

  /* A chart: {title, xlabel, ylabel, logy, ymin, ymax, series: [{name, y, x0, cls, dots, bars}],
   *           hlines: [{y, label, cls}], vlines: [{x, label, cls}]}; x of series i's j-th value is x0 + j. */
  function chart(container, spec) {
    var fig = document.createElement("figure");
    fig.className = "chart";
    fig.setAttribute("data-chart", spec.id);
    var svg = el("svg", {viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": spec.title}, fig);
    el("text", {x: M.l, y: 16, "class": "title"}, svg, spec.title);
    var xs = [], ys = [];
    spec.series.forEach(function (s) {
      xs.push(s.x0, s.x0 + s.y.length - 1);
      s.y.forEach(function (v) { if (isFinite(v) && (!spec.logy || v > 0)) ys.push(v); });
      if (s.err) s.err.hi.forEach(function (v) { if (isFinite(v) && v > 0) ys.push(v); });
    });
    (spec.hlines || []).forEach(function (h) { if (isFinite(h.y) && (!spec.logy || h.y > 0)) ys.push(h.y); });
    var xlo = Math.min.apply(null, xs), xhi = Math.max.apply(null, xs);
    if (xhi === xlo) { xlo -= 1; xhi += 1; }
    var ylo = spec.ymin !== undefined ? spec.ymin : ys.reduce(function (a, b) { return Math.min(a, b); }, Infinity);
    var yhi = spec.ymax !== undefined ? spec.ymax : ys.reduce(function (a, b) { return Math.max(a, b); }, -Infinity);
    if (!isFinite(ylo) || !isFinite(yhi)) { ylo = spec.logy ? 1e-16 : 0; yhi = 1; }
    if (spec.logy) { ylo = Math.max(ylo, yhi * 1e-17); if (yhi <= ylo) yhi = ylo * 10; }
    else if (yhi === ylo) { yhi = ylo + 1; }
    var pw = W - M.l - M.r, ph = H - M.t - M.b;
    var ly0 = spec.logy ? Math.log10(ylo) : ylo, ly1 = spec.logy ? Math.log10(yhi) : yhi;
    function X(x) { return M.l + (x - xlo) / (xhi - xlo) * pw; }
    function Y(y) {
      var v = spec.logy ? Math.log10(Math.max(y, ylo)) : y;
      return M.t + ph - (v - ly0) / (ly1 - ly0 || 1) * ph;
    }
    var axes = el("g", {"class": "axes"}, svg);
    el("rect", {x: M.l, y: M.t, width: pw, height: ph, "class": "frame"}, axes);
    rankTicks(Math.ceil(xlo), Math.floor(xhi), 8).forEach(function (t) {
      el("line", {x1: X(t), x2: X(t), y1: M.t + ph, y2: M.t + ph + 4}, axes);
      el("text", {x: X(t), y: M.t + ph + 16, "class": "xt"}, axes, String(t));
    });
    (spec.logy ? logTicks(ylo, yhi) : linTicks(ylo, yhi, 5)).forEach(function (t) {
      if (t < ylo * (1 - 1e-9) || t > yhi * (1 + 1e-9)) return;
      el("line", {x1: M.l, x2: M.l + pw, y1: Y(t), y2: Y(t), "class": "grid"}, axes);
      el("text", {x: M.l - 6, y: Y(t) + 4, "class": "yt"}, axes, spec.logy ? logLabel(t) : fmt(t));
    });
    el("text", {x: M.l + pw / 2, y: H - 6, "class": "xl"}, svg, spec.xlabel);
    el("text", {x: 14, y: M.t + ph / 2, "class": "yl", transform: "rotate(-90 14 " + (M.t + ph / 2) + ")"}, svg, spec.ylabel);
    var legend = document.createElement("ul");
    legend.className = "legend";
    function key(cls, label) {
      var li = document.createElement("li"), sw = document.createElement("span");
      sw.className = "swatch " + cls;
      li.appendChild(sw);
      li.appendChild(document.createTextNode(label));
      legend.appendChild(li);
    }
    spec.series.forEach(function (s) {
      var parts = [];
      for (var j = 0; j < s.y.length; j++) {
        var v = s.y[j];
        if (!isFinite(v) || (spec.logy && !(v > 0) && !s.floor)) continue;
        if (s.bars) parts.push("M" + X(s.x0 + j).toFixed(1) + " " + Y(spec.logy ? ylo : 0).toFixed(1) + "V" + Y(v).toFixed(1));
        else parts.push((parts.length ? "L" : "M") + X(s.x0 + j).toFixed(1) + " " + Y(v).toFixed(1));
      }
      el("path", {d: parts.join(""), "class": "series " + s.cls, "data-points": s.y.length}, svg);
      if (s.dots) {
        var g = el("g", {"class": "dots " + s.cls}, svg);
        s.y.forEach(function (v, j) { if (isFinite(v)) el("circle", {cx: X(s.x0 + j), cy: Y(v), r: 2.5}, g); });
      }
      key(s.cls, s.name);
      if (s.err) errorBars(svg, s, X, Y, key);
    });
    (spec.hlines || []).forEach(function (h) {
      if (!isFinite(h.y) || (spec.logy && !(h.y > 0))) return;
      var g = el("g", {"class": "marker " + h.cls}, svg);
      el("line", {x1: M.l, x2: M.l + pw, y1: Y(h.y), y2: Y(h.y)}, g);
      el("title", {}, g, h.label);
      key(h.cls, h.label);
    });
    (spec.vlines || []).forEach(function (v) {
      if (!isFinite(v.x)) return;
      var g = el("g", {"class": "marker " + v.cls, "data-x": v.x}, svg);
      el("line", {x1: X(v.x), x2: X(v.x), y1: M.t, y2: M.t + ph}, g);
      el("title", {}, g, v.label);
      if (!v.quiet) key(v.cls, v.label);
    });
    hover(svg, spec, X, Y, xlo, xhi, pw, ph);
    fig.appendChild(legend);
    container.appendChild(fig);
    return fig;
  }

  /* Error bars of a series, {lo, hi, label} beside its y: one path of vertical strokes with caps. */
  function errorBars(svg, s, X, Y, key) {
    var d = [];
    s.y.forEach(function (v, j) {
      var lo = s.err.lo[j], hi = s.err.hi[j], x = X(s.x0 + j);
      if (!isFinite(v) || !isFinite(hi)) return;
      var y0 = Y(lo > 0 ? lo : 0).toFixed(1), y1 = Y(hi).toFixed(1);
      d.push("M" + x.toFixed(1) + " " + y0 + "V" + y1 + "M" + (x - 3).toFixed(1) + " " + y1 + "h6M" + (x - 3).toFixed(1) + " " + y0 + "h6");
    });
    el("path", {d: d.join(""), "class": "errbar " + s.cls, "data-points": d.length}, svg);
    key(s.cls, s.err.label);
  }

  /* Hover: the values of every series at the nearest rank. */
  function hover(svg, spec, X, Y, xlo, xhi, pw, ph) {
    var tip = el("g", {"class": "tip", visibility: "hidden"}, svg);
    var rule = el("line", {y1: M.t, y2: M.t + ph}, tip);
    var box = el("rect", {rx: 3, height: 18 + 14 * spec.series.length}, tip);
    var lines = [el("text", {}, tip)].concat(spec.series.map(function () { return el("text", {}, tip); }));
    var zone = el("rect", {x: M.l, y: M.t, width: pw, height: ph, "class": "zone"}, svg);
    function show(evt) {
      var pt = svg.createSVGPoint();
      pt.x = evt.clientX; pt.y = evt.clientY;
      var p = pt.matrixTransform(svg.getScreenCTM().inverse());
      var x = Math.round(xlo + (p.x - M.l) / pw * (xhi - xlo));
      x = Math.max(Math.ceil(xlo), Math.min(Math.floor(xhi), x));
      var tx = X(x), left = tx > M.l + pw / 2;
      rule.setAttribute("x1", tx); rule.setAttribute("x2", tx);
      lines[0].textContent = (spec.xname || "rank") + " " + x;
      spec.series.forEach(function (s, i) {
        var v = s.y[x - s.x0];
        lines[i + 1].textContent = s.short + " = " + (v === undefined ? "–" : fmt(v));
      });
      var width = 12 + 7 * Math.max.apply(null, lines.map(function (t) { return t.textContent.length; }));
      var bx = left ? tx - width - 8 : tx + 8;
      box.setAttribute("x", bx); box.setAttribute("y", M.t + 4); box.setAttribute("width", width);
      lines.forEach(function (t, i) { t.setAttribute("x", bx + 6); t.setAttribute("y", M.t + 18 + 14 * i); });
      tip.setAttribute("visibility", "visible");
      svg.setAttribute("data-hover", lines.map(function (t) { return t.textContent; }).join("; "));
    }
    zone.addEventListener("mousemove", show);
    zone.addEventListener("mouseleave", function () { tip.setAttribute("visibility", "hidden"); });
  }

  /* What the report gives, with the whole spectrum where it exists. */
  function spectrum(report) {
    var s = report.singular_values || [], all = report.singular_values_all || null;
    var full = all && all.length > s.length ? all : s;
    var fro = report.frobenius_norm || 0;
    var cum = [], acc = 0;
    full.forEach(function (v) { var f = fro > 0 ? v / fro : 0; acc += f * f; cum.push(Math.min(acc, 1)); });
    var resid;
    if (all && all.length >= s.length) {  // optimal residuals: tail norms, summed from the smallest up
      resid = new Array(full.length);
      var tail = 0;
      for (var i = full.length - 1; i >= 0; i--) { resid[i] = fro > 0 ? Math.sqrt(tail) : 0; var f = fro > 0 ? full[i] / fro : 0; tail += f * f; }
    } else {
      resid = (report.components || []).map(function (c) { return c.relative_residual; });
    }
    return {k: s.length, s: s, full: full, cum: cum, resid: resid, exact: !!all};
  }

  /* The rank reaching each energy fraction: from the curve where it gets there, else the report. */
  function energyRanks(report, sp) {
    return [0.9, 0.95, 0.99, 0.999].map(function (f) {
      var r = null;
      for (var i = 0; i < sp.cum.length; i++) { if (sp.cum[i] >= f * (1 - 1e-12)) { r = i + 1; break; } }
      if (r === null) {
        var er = (report.energy_ranks || []).find(function (e) { return Math.abs(e.fraction - f) < 1e-9; });
        if (er && er.rank !== null && !er.more_than_k) r = er.rank;
      }
      return {fraction: f, rank: r};
    });
  }

  function pct(f) { return (f * 100).toFixed(f === 0.999 ? 1 : 0) + " %"; }

  /* North et al. (1982): λ ± λ·√(2/N) is σ·√(1 ± √(2/N)) on the σ axis; the overlapping pairs named. */
  function northBars(report, s) {
    var north = report.north;
    if (!north || !(north.relative_error >= 0)) return undefined;
    var r = north.relative_error, pairs = north.degenerate_pairs || [];
    var label = "North's error bars (N = " + north.n_samples + ")" + (pairs.length ? "; overlapping, do not interpret separately: " +
      pairs.slice(0, 6).map(function (p) { return p[0] + "-" + p[1]; }).join(", ") + (pairs.length > 6 ? " …" : "") : "");
    return {lo: s.map(function (v) { return v * Math.sqrt(Math.max(1 - r, 0)); }),
            hi: s.map(function (v) { return v * Math.sqrt(1 + r); }), label: label};
  }

  function screeSpec(report, sp) {
    var series = [];
    if (sp.exact && sp.full.length > sp.k) series.push({name: "σ, whole spectrum", short: "σ", y: sp.full, x0: 1, cls: "s-all"});
    series.push({name: "σ, the " + sp.k + " returned", short: "σ (k)", y: sp.s, x0: 1, cls: "s-k", dots: sp.k <= 200,
                 err: northBars(report, sp.s)});
    var hl = [], dn = (report.suggested_rank || {}).denoise, ee = report.error_estimate;
    if (dn && dn.threshold > 0) hl.push({y: dn.threshold, cls: "m-denoise", label: "denoising threshold " + fmt(dn.threshold) + " → rank " + dn.rank + (dn.more_than_k ? " (or more)" : "")});
    if (ee && ee.spectral > 0) hl.push({y: ee.spectral, cls: "m-error", label: (ee.probes ? "error bound ‖A − USVᵀ‖₂ ≤ " : "σ_{k+1} = ‖A − USVᵀ‖₂ = ") + fmt(ee.spectral)});
    return {id: "scree", title: "Scree plot", xlabel: "rank", ylabel: "singular value σ (log)", logy: true,
            series: series, hlines: hl, vlines: [{x: sp.k, cls: "m-k", label: "k = " + sp.k}]};
  }

  function energySpec(report, sp) {
    var ranks = energyRanks(report, sp), hl = [], vl = [];
    ranks.forEach(function (e, i) {
      var label = pct(e.fraction) + (e.rank === null ? " > k = " + sp.k : " at rank " + e.rank);
      hl.push({y: e.fraction, cls: "m-e" + i, label: label});
      if (e.rank !== null) vl.push({x: e.rank, cls: "m-e" + i + " v", label: pct(e.fraction) + ": rank " + e.rank, quiet: true});
    });
    return {id: "energy", title: "Cumulative energy", xlabel: "rank", ylabel: "fraction of ‖A‖²_F",
            ymin: 0, ymax: 1, series: [{name: "cumulative energy", short: "energy", y: sp.cum, x0: 1, cls: "s-k"}],
            hlines: hl, vlines: vl.length ? vl : [], ranks: ranks};
  }

  function gapSpec(report, sp) {
    var g = [];
    for (var i = 0; i + 1 < sp.full.length; i++) g.push(sp.full[i + 1] > 0 ? sp.full[i] / sp.full[i + 1] : NaN);
    var top = (report.spectral_gaps || []).slice(0, 3).map(function (gap, i) {
      return {x: gap.rank, cls: "m-gap" + (i ? " v" : ""), label: "gap at rank " + gap.rank + ": σ_r/σ_r+1 = " + fmt(gap.ratio)};
    });
    return {id: "gaps", title: "Spectral gaps", xlabel: "rank r", ylabel: "σ_r / σ_{r+1} (log)", logy: true,
            series: [{name: "σ_r / σ_{r+1}", short: "ratio", y: g, x0: 1, cls: "s-gap", bars: true}], vlines: top};
  }

  function residualSpec(report, sp) {
    return {id: "residual", title: "Residual against rank", xlabel: "rank r", ylabel: "‖A − A_r‖_F / ‖A‖_F (log)", logy: true,
            series: [{name: sp.exact ? "relative residual (optimal, from the whole spectrum)" : "relative residual of the returned factors",
                      short: "residual", y: sp.resid, x0: 1, cls: "s-k", floor: true}],
            vlines: [{x: sp.k, cls: "m-k", label: "k = " + sp.k}]};
  }

  function storageSpec(report, sp) {
    var m = report.shape[0], n = report.shape[1], y = [];
    for (var r = 1; r <= sp.full.length; r++) y.push(r * (m + n + 1) / (m * n));
    var vl = energyRanks(report, sp).filter(function (e) { return e.rank !== null; }).map(function (e, i) {
      return {x: e.rank, cls: "m-e" + i + " v", label: pct(e.fraction) + ": rank " + e.rank + ", ratio " + fmt(e.rank * (m + n + 1) / (m * n))};
    });
    return {id: "storage", title: "Storage ratio against rank", xlabel: "rank r", ylabel: "r(m+n+1) / mn",
            ymin: 0, series: [{name: "storage of U, S, V against A", short: "ratio", y: y, x0: 1, cls: "s-k"}],
            hlines: [{y: 1, cls: "m-one", label: "ratio 1: no saving"}], vlines: vl};
  }

  function render(container, report) {
    var t0 = performance.now();
    var sp = spectrum(report);
    while (container.firstChild) container.removeChild(container.firstChild);
    if (!sp.full.length) { container.textContent = "The report has no singular values."; return {charts: 0, ms: 0}; }
    var specs = [screeSpec(report, sp), energySpec(report, sp), gapSpec(report, sp), residualSpec(report, sp), storageSpec(report, sp)];
    specs.forEach(function (s) { if (s.series.some(function (x) { return x.y.length; })) chart(container, s); });
    var ms = performance.now() - t0;
    container.setAttribute("data-render-ms", ms.toFixed(1));
    return {charts: specs.length, ms: ms, ranks: specs[1].ranks};
  }

  window.SvdPlots = {render: render, spectrum: spectrum, energyRanks: energyRanks, fmt: fmt, rankTicks: rankTicks};
})();
