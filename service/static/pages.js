/* svdserve pages: the job list (/) and one job (/jobs/{id}). No dependencies.
 *
 * Both read the API v1 JSON endpoints with the page session's cookie
 * (same origin); state-changing calls send X-Svdserve-Page: 1. The list polls
 * GET /v1/jobs (every second while a job is live, every 5 s otherwise); the
 * job page long-polls GET /v1/jobs/{id}?wait=20 and, once the job has
 * succeeded, draws its report with SvdPlots (plots.js).
 */
(function () {
  "use strict";
  var body = document.body, TERMINAL = ["succeeded", "failed", "cancelled"];
  var clockSkew = 0;  // server time - browser time, from the Date header (ms)

  function $(id) { return document.getElementById(id); }
  function make(tag, cls, text, parent) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  }

  function api(method, path) {
    var headers = {Accept: "application/json"};
    if (method !== "GET") headers["X-Svdserve-Page"] = "1";
    return fetch(path, {method: method, headers: headers, credentials: "same-origin", cache: "no-store"})
      .then(function (r) {
        var date = r.headers.get("Date");
        if (date) clockSkew = Date.parse(date) - Date.now();
        if (r.status === 401) { location.assign("/login?next=" + encodeURIComponent(location.pathname)); throw new Error("log in first"); }
        if (r.status === 204) return null;
        return r.json().then(function (data) {
          if (!r.ok) { var e = new Error(data.detail || r.statusText); e.status = r.status; throw e; }
          return data;
        });
      });
  }

  function seconds(s) {
    if (s === null || s === undefined || !isFinite(s)) return "–";
    s = Math.max(0, Math.round(s));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor(s % 3600 / 60) + " min";
  }
  function when(iso) { return iso ? Date.parse(iso) : null; }
  function ago(iso) { var t = when(iso); return t ? seconds((Date.now() + clockSkew - t) / 1000) + " ago" : "–"; }
  function elapsed(job) {
    var a = when(job.started_at);
    if (!a) return null;
    var b = when(job.finished_at) || (Date.now() + clockSkew);
    return (b - a) / 1000;
  }

  /* Fraction of the whole job done, over every pass, and the ETA at the last update. */
  /* Steps that read no panel: they count as the end of their pass. */
  var NO_READ = ["factor", "write"];

  /* The fraction of the whole job done, counted as the CLI counts it (client/_job.py,
   * Progress.overall): passes × the plan's panels, plus one round for the copy of a
   * "rechunk" layout (pass 0); a pass beyond "passes" (an energy target) grows the total. */
  function overall(job) {
    var p = job.progress;
    if (job.state === "succeeded") return {f: 1, eta: null};
    if (!p || !p.passes) return {f: 0, eta: null};
    var plan = p.plan || job.plan || {};
    var panels = plan.panels || p.total || 1, copy = plan.kind === "rechunk" ? 1 : 0;
    var passNo = p.pass || 0, total = (Math.max(p.passes, passNo) + copy) * panels;
    var step = p.total ? Math.min(p.done, p.total) / p.total : 0;
    var done = passNo === 0 ? step * panels
      : (passNo - 1 + copy) * panels + (NO_READ.indexOf(p.phase) >= 0 ? panels : step * panels);
    var f = Math.min(1, Math.max(0, done / total));
    var spent = (when(job.updated_at) - when(job.started_at)) / 1000;
    var eta = f > 0 && spent > 0 && TERMINAL.indexOf(job.state) < 0 ? spent * (1 - f) / f : null;
    return {f: f, eta: eta};
  }

  function progressText(job) {
    var p = job.progress;
    if (!p) return job.state === "queued" ? "waiting in the queue" : "";
    var o = overall(job), parts = ["pass " + p.pass + " of " + p.passes, p.phase, p.done + "/" + p.total + " panels"];
    if (o.eta !== null) parts.push("ETA " + seconds(o.eta));
    return parts.join(" · ");
  }

  function bar(parent, f, cls) {
    var outer = make("div", "bar " + (cls || ""), null, parent), inner = make("div", "fill", null, outer);
    inner.style.width = (f * 100).toFixed(1) + "%";
    outer.setAttribute("data-fraction", f.toFixed(4));
    outer.setAttribute("role", "progressbar");
    outer.setAttribute("aria-valuenow", Math.round(f * 100));
    return outer;
  }

  function shapeOf(job) {
    var s = job.shape || (job.result && job.result.shape);
    return s ? s[0] + " × " + s[1] : "–";
  }
  function rankOf(job) {
    if (job.result) return String(job.result.rank);
    var r = job.request || {};
    return r.energy ? "energy " + r.energy : (r.rank !== undefined && r.rank !== null ? String(r.rank) : "–");
  }
  function methodOf(job) { return job.method || (job.request || {}).method || "–"; }

  /* ------------------------------------------------------------------ the list */
  function listPage() {
    var state = "", cursors = [null], timer = null;
    var limit = Math.min(100, Math.max(1, parseInt(new URLSearchParams(location.search).get("limit"), 10) || 20));
    var tbody = $("jobs-body"), status = $("status");
    function load() {
      clearTimeout(timer);
      var q = "?limit=" + limit + (state ? "&state=" + state : "") + (cursors[cursors.length - 1] ? "&cursor=" + cursors[cursors.length - 1] : "");
      api("GET", "/v1/jobs" + q).then(function (page) {
        draw(page);
        var live = page.items.some(function (j) { return TERMINAL.indexOf(j.state) < 0; });
        status.textContent = "updated " + new Date().toLocaleTimeString() + (live ? " · live" : "");
        timer = setTimeout(load, live ? 1000 : 5000);
      }).catch(function (e) { status.textContent = "could not load the jobs: " + e.message; timer = setTimeout(load, 5000); });
    }
    function draw(page) {
      while (tbody.firstChild) tbody.removeChild(tbody.firstChild);
      if (!page.items.length) {
        var td = make("td", "empty", state ? "No " + state + " jobs." : "No jobs yet: submit one with `svdserve submit` or POST /v1/jobs.", make("tr", null, null, tbody));
        td.colSpan = 8;
      }
      page.items.forEach(function (job) {
        var tr = make("tr", "job " + job.state, null, tbody);
        tr.setAttribute("data-job", job.id);
        var a = make("a", "mono", job.id.slice(0, 8), make("td", null, null, tr));
        a.href = "/jobs/" + job.id;
        a.title = job.id;
        make("span", "state " + job.state, job.state, make("td", null, null, tr));
        var cell = make("td", "progress", null, tr);
        bar(cell, overall(job).f, job.state);
        make("div", "small", job.error ? job.error.type : progressText(job), cell);
        make("td", null, methodOf(job), tr);
        make("td", "num", shapeOf(job), tr);
        make("td", "num", rankOf(job), tr);
        make("td", null, ago(job.created_at), tr).title = job.created_at;
        make("td", "num", seconds(elapsed(job)), tr);
      });
      $("older").disabled = !page.next_cursor;
      $("newer").disabled = cursors.length < 2;
      $("older").onclick = function () { cursors.push(page.next_cursor); load(); };
    }
    $("newer").onclick = function () { cursors.pop(); load(); };
    Array.prototype.forEach.call(document.querySelectorAll("#filters button"), function (b) {
      b.onclick = function () {
        state = b.getAttribute("data-state");
        cursors = [null];
        Array.prototype.forEach.call(document.querySelectorAll("#filters button"), function (o) { o.setAttribute("aria-pressed", String(o === b)); });
        load();
      };
    });
    load();
  }

  /* ------------------------------------------------------------------ one job */
  var ERROR_WORDS = {
    invalid_input: "The input could not be used as it is.",
    non_finite_values: "The matrix holds NaN or infinite values.",
    storage_error: "Reading the source or writing the result failed.",
    worker_lost: "The Dask workers running it were lost.",
    cancelled: "The job was cancelled.",
    internal: "The service failed unexpectedly (a bug: please report it with the job id)."
  };

  function dl(parent, pairs) {
    var d = make("dl", "facts", null, parent);
    pairs.forEach(function (p) {
      if (p[1] === null || p[1] === undefined || p[1] === "") return;
      make("dt", null, p[0], d);
      var dd = make("dd", null, null, d);
      if (p[1] instanceof Node) dd.appendChild(p[1]); else dd.textContent = String(p[1]);
    });
    return d;
  }
  function bytes(n) {
    if (n === null || n === undefined) return "–";
    var u = ["B", "KiB", "MiB", "GiB", "TiB"], i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : n) + " " + u[i];
  }
  function link(href, text) { var a = make("a", null, text); a.href = href; return a; }

  function drawJob(job) {
    var id = job.id;
    $("state").textContent = job.state;
    $("state").className = "state " + job.state;
    var summary = $("summary");
    while (summary.firstChild) summary.removeChild(summary.firstChild);
    dl(summary, [["method", methodOf(job)], ["shape", shapeOf(job)], ["rank", rankOf(job)],
                 ["source", (job.request.source || {}).url + ((job.request.source || {}).array ? " [" + job.request.source.array + "]" : "")],
                 ["submitted", job.created_at], ["started", job.started_at], ["finished", job.finished_at],
                 ["elapsed", seconds(elapsed(job))], ["attempt", job.attempt]]);
    var prog = $("progress");
    while (prog.firstChild) prog.removeChild(prog.firstChild);
    var o = overall(job), p = job.progress;
    bar(prog, o.f, job.state).id = "overall";
    make("p", "small", progressText(job) || job.state, prog);
    if (p && p.passes) {
      var passes = make("ol", "passes", null, prog);
      for (var i = 1; i <= p.passes; i++) {
        var f = job.state === "succeeded" || i < p.pass ? 1 : i === p.pass && p.total ? p.done / p.total : 0;
        var li = make("li", null, null, passes);
        make("span", "small", "pass " + i + (i === p.pass && job.state !== "succeeded" ? " (" + p.phase + ")" : ""), li);
        bar(li, f, job.state);
      }
    }
    var plan = job.plan, planBox = $("plan");
    while (planBox.firstChild) planBox.removeChild(planBox.firstChild);
    if (plan) {
      dl(planBox, [["layout", plan.kind], ["panels", plan.panels], ["panel shape", plan.panel_shape.join(" × ")],
                   ["chunks (tall view)", plan.tall_chunks.join(" × ")], ["peak memory per worker", bytes(plan.peak_bytes_per_worker)],
                   ["why", plan.reason]]);
    } else make("p", "small", "no plan yet", planBox);
    var err = $("error");
    while (err.firstChild) err.removeChild(err.firstChild);
    err.hidden = !job.error;
    if (job.error) {
      make("h2", null, "What went wrong", err);
      make("p", "words", ERROR_WORDS[job.error.type] || job.error.type, err);
      make("p", "message", job.error.message, err);
      make("p", "small mono", "error type: " + job.error.type, err);
    }
    var notes = $("notes");
    while (notes.firstChild) notes.removeChild(notes.firstChild);
    (job.notes || []).forEach(function (n) { make("li", null, n, notes); });
    $("notes-box").hidden = !(job.notes || []).length;
    $("request").textContent = JSON.stringify(job.request, null, 2);
    var links = $("links");
    while (links.firstChild) links.removeChild(links.firstChild);
    links.appendChild(link("/v1/jobs/" + id, "job JSON"));
    if (job.state === "succeeded") {
      links.appendChild(link("/v1/jobs/" + id + "/report", "energy report (JSON)"));
      links.appendChild(link("/v1/jobs/" + id + "/result/zarr.json", "result store (read-only Zarr)"));
      if (job.result) make("code", "small", job.result.url, links);
    }
    $("cancel").hidden = ["queued", "running"].indexOf(job.state) < 0;
    $("delete").hidden = TERMINAL.indexOf(job.state) < 0;
  }

  /* The error estimate in words: which bound it is (exact σ_{k+1}, the exact Frobenius
   * residual, or the probes' probabilistic bound) and the warning of a too-flat sketch. */
  function errorEstimate(ee) {
    if (!ee || ee.spectral === null || ee.spectral === undefined) return "–";
    var v = SvdPlots.fmt(ee.spectral), text;
    if (ee.source === "exact" || (!ee.source && !ee.probes)) text = "‖A − USVᵀ‖₂ = σ_{k+1} = " + v;
    else if (ee.source === "frobenius") text = "‖A − USVᵀ‖₂ ≤ ‖A − USVᵀ‖_F = " + v + " (exact residual, below the probes' bound)";
    else text = "‖A − USVᵀ‖₂ ≤ " + v + " with probability " + ee.probability + " (" + ee.probes + " probes)";
    return ee.warning ? text + " — " + ee.warning : text;
  }

  function drawReport(report) {
    var box = $("plots");
    var out = SvdPlots.render(box, report);
    var facts = $("report-facts"), ee = report.error_estimate, dn = (report.suggested_rank || {}).denoise;
    while (facts.firstChild) facts.removeChild(facts.firstChild);
    dl(facts, [
      ["passes over A", report.passes], ["‖A‖_F", SvdPlots.fmt(report.frobenius_norm)],
      ["energy captured by k", report.components && report.components.length ? (report.components[report.components.length - 1].cumulative_fraction * 100).toPrecision(6) + " %" : null],
      ["error estimate", errorEstimate(ee)],
      ["denoising rank", dn ? dn.rank + (dn.more_than_k ? " or more" : "") + " (threshold " + SvdPlots.fmt(dn.threshold) + ", noise σ " + SvdPlots.fmt(dn.noise_sigma) + ")" : "–"],
      ["energy ranks", out.ranks.map(function (e) { return (e.fraction * 100) + " %: " + (e.rank === null ? "> k" : e.rank); }).join(", ")],
      ["numerical rank", report.numerical_rank], ["σ₁/σ_k", SvdPlots.fmt(report.condition_estimate)],
      ["κ₂", report.condition_number ? SvdPlots.fmt(report.condition_number) : null],
      ["residuals", report.residual_kind], ["time", report.timings ? seconds(report.timings.total) : null]]);
    $("report-box").hidden = false;
  }

  function jobPage() {
    var id = body.getAttribute("data-job"), drawn = false, status = $("status");
    function follow(wait) {
      api("GET", "/v1/jobs/" + id + (wait ? "?wait=20" : "")).then(function (job) {
        drawJob(job);
        status.textContent = "updated " + new Date().toLocaleTimeString();
        if (job.state === "succeeded" && !drawn) {
          drawn = true;
          api("GET", "/v1/jobs/" + id + "/report").then(drawReport).catch(function (e) { status.textContent = "no report: " + e.message; });
        }
        if (TERMINAL.indexOf(job.state) < 0) follow(true);
      }).catch(function (e) {
        status.textContent = e.status === 404 ? "This job no longer exists." : "could not load the job: " + e.message;
        if (e.status !== 404) setTimeout(function () { follow(false); }, 3000);
      });
    }
    $("cancel").onclick = function () {
      $("cancel").disabled = true;
      api("POST", "/v1/jobs/" + id + "/cancel").then(function (job) { drawJob(job); })
        .catch(function (e) { status.textContent = "cancel failed: " + e.message; })
        .then(function () { $("cancel").disabled = false; });
    };
    $("delete").onclick = function () {
      if (!window.confirm("Delete job " + id.slice(0, 8) + " and its result?")) return;
      api("DELETE", "/v1/jobs/" + id).then(function () { location.assign("/"); })
        .catch(function (e) { status.textContent = "delete failed: " + e.message; });
    };
    follow(false);
  }

  window.SvdPages = {overall: overall};  // what the browser tests compare with the CLI's count
  if (body.getAttribute("data-page") === "jobs") listPage();
  if (body.getAttribute("data-page") === "job") jobPage();
})();
