"""The client subcommands of the ``svdserve`` command line.

``svdserve serve`` (the service) is dispatched by :mod:`svdserve._cli` before
this parser runs; everything else is here.

Exit codes: 0 ok; 1 the job failed or was cancelled, a wait timed out, or the
service/storage failed; 2 usage error (bad arguments, a request the service
rejected as invalid, unknown or ambiguous job id, missing or unreadable input file, bad
credentials). Errors are printed once, as one line on stderr, with the service's parameter
names turned into this command line's flags (:func:`flag_text`). A closed stdout
(``svdserve jobs | head -n 1``) ends the command quietly with 0, as a Unix filter.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from ._errors import (
    Conflict,
    Forbidden,
    InputFileError,
    InvalidRequest,
    NotFound,
    SVDServeError,
    Unauthorized,
)
from ._literals import METHODS, STATES, TERMINAL_STATES

__all__ = ["main", "build_parser", "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

PROG = "svdserve"


class UsageError(Exception):
    """A command-line mistake found after parsing (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2), pointing at --help."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


#: The flag that sets each API parameter, for messages written with the API's names
#: (``body.rank``, ``missing='mask'``, `` `array` ``, ``sample_dims``).
FLAGS = {
    "rank": "--rank", "energy": "--energy", "max_rank": "--max-rank", "array": "--array",
    "method": "--method", "n_oversamples": "--n-oversamples", "n_iter": "--n-iter",
    "center": "--center", "random_state": "--seed", "compute_u": "--no-u",
    "allow_missing_chunks": "--allow-missing-chunks", "missing_chunks": "--missing-chunks",
    "sample_dims": "--sample-dims", "missing": "--missing",
    "weights": "--weights", "standardize": "--standardize",
    "idempotency_key": "--idempotency-key",
    "source": "SOURCE", "source.url": "SOURCE", "source.array": "--array",
    "source.sample_dims": "--sample-dims", "idempotency-key": "--idempotency-key",
    "job_id": "JOB",
}
#: Flags whose presence means the opposite of the parameter's True.
_INVERTED = {"compute_u"}
_NAMES = "|".join(sorted((k for k in FLAGS if re.fullmatch(r"[a-z_]+", k)), key=len,
                         reverse=True))
_FIELD_RE = re.compile(r"\b(?:body|path|header)\.([A-Za-z_.-]+[A-Za-z_])")
_ASSIGN_RE = re.compile(rf"\b({_NAMES})=('[^']*'|\"[^\"]*\"|\[[^\]]*\]|True|False|None|"
                        rf"-?[0-9][0-9.e+-]*|(?:{'|'.join(METHODS)})\b)")
_TICK_RE = re.compile(rf"`({_NAMES})`")
_BARE_RE = re.compile(r"(?<![\w./-])(" + "|".join(k for k in FLAGS if "_" in k and "." not in k)
                      + r")(?![\w=])")


def _assignment(match: re.Match) -> str:
    """``missing='mask'`` -> ``--missing mask``; ``center=True`` -> ``--center``."""
    name, value = match.group(1), match.group(2)
    flag = FLAGS[name]
    if value in ("True", "False", "None"):
        on = (value == "True") != (name in _INVERTED)
        return flag if on else f"no {flag}"
    if value.startswith("["):
        items = [v.strip().strip("'\"") for v in value[1:-1].split(",") if v.strip()]
        return " ".join([flag, *items])
    return f"{flag} {value.strip(chr(39) + chr(34))}"


def flag_text(text: str) -> str:
    """A service message in the command line's words: API names become the flags.

    ``body.rank`` -> ``--rank``, ``missing='mask'`` -> ``--missing mask``,
    ``sample_dims=['time']`` -> ``--sample-dims time``, `` `array` `` -> ``--array``,
    ``n_oversamples`` -> ``--n-oversamples``.
    """
    text = _FIELD_RE.sub(lambda m: FLAGS.get(m.group(1), m.group(0)), str(text))
    text = _ASSIGN_RE.sub(_assignment, text)
    text = _TICK_RE.sub(lambda m: FLAGS[m.group(1)], text)
    return _BARE_RE.sub(lambda m: FLAGS[m.group(1)], text)


def _storage_options(pairs: Sequence[str] | None) -> dict[str, Any] | None:
    """``-o key=value`` pairs; values are JSON when they parse as JSON, else strings."""
    if not pairs:
        return None
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--storage-option expects KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def _make_client(args: argparse.Namespace):
    from ._client import Client

    return Client(
        args.url,
        args.token,
        timeout=args.request_timeout,
        storage_options=_storage_options(getattr(args, "storage_option", None)),
    )


def _progress_text(job) -> str:
    from ._job import Progress

    prog = Progress.from_json(job.get("progress"))
    if prog is None:
        return ""
    done, total = prog.overall()
    return f"{prog.label}: {done}/{total} panels of the job ({100 * done // max(total, 1)} %)"


def _shape_of(job) -> list[int] | None:
    """The matrix shape: known from submit (``shape``), else from the result."""
    return job.get("shape") or (job.get("result") or {}).get("shape")


def _method_of(job) -> str:
    """The method that runs (``auto`` resolved at submit), else the one requested."""
    return (job.get("result") or {}).get("method") or job.get("method") or (
        (job.get("request") or {}).get("method", "?"))


#: Columns of ``svdserve jobs``: (header, width); the last, NOTE, is free text.
JOB_COLUMNS = (("ID", 32), ("STATE", 10), ("K", 6), ("METHOD", 10), ("SHAPE", 12),
               ("CREATED", 29), ("SOURCE", 0))


def _job_header() -> str:
    return _columns([name for name, _ in JOB_COLUMNS]) + "  NOTE"


def _columns(values: Sequence[str]) -> str:
    return " ".join(f"{v:<{w}}" if w else v for v, (_, w) in zip(values, JOB_COLUMNS))


def _job_line(job) -> str:
    req = job.get("request") or {}
    shape = _shape_of(job)
    src = (req.get("source") or {}).get("url", "-")
    arr = (req.get("source") or {}).get("array")
    if arr:
        src += f"[{arr}]"
    extra = _progress_text(job) if job.get("state") in ("running", "cancelling") else ""
    err = job.get("error")
    if err:
        extra = flag_text(f"{err.get('type')}: {err.get('message')}")
    want = req.get("rank")
    if want is None:
        want = f"e{req['energy']:g}" if req.get("energy") is not None else "?"
    shape_s = "x".join(str(d) for d in shape) if shape else "-"
    line = _columns([str(job.get("id")), str(job.get("state", "?")), str(want), _method_of(job),
                     shape_s, str(job.get("created_at", "")), src])
    return line + (f"  {extra}" if extra else "")


def _finish(job, args: argparse.Namespace) -> int:
    """Print a finished job's outcome; exit code 0 succeeded, 1 failed/cancelled."""
    if getattr(args, "json", False):
        _print_json(job.data)
    err = job._job_error()
    if err is not None:
        print(f"{PROG}: error: {_one_line(flag_text(str(err)))}", file=sys.stderr)
        return EXIT_FAILED
    if not getattr(args, "json", False):
        res = job.get("result") or {}
        shape = "x".join(str(d) for d in res.get("shape") or [])
        print(f"{job.id} succeeded: {shape} rank {res.get('rank')} ({res.get('method')}) "
              f"-> {res.get('url')}")
    return EXIT_OK


def _wait(job, args: argparse.Namespace):
    progress = not args.no_progress
    return job.wait(args.timeout, progress=progress)


# -- subcommands --------------------------------------------------------------------------------


def _check_source(source: str) -> None:
    """Refuse a local file given where a Zarr store is expected, saying what to run."""
    from ._formats import describe

    kind = describe(source)
    if kind is None or os.path.isdir(source):
        return
    stem = os.path.splitext(os.path.basename(source))[0]
    dest = os.path.join(os.path.dirname(source) or "data", f"{stem}.zarr")
    raise UsageError(
        f"{source!r} is {kind}, not a Zarr array or group; the service reads Zarr. Convert it "
        f"first, to a path inside a data root of the service: `{PROG} upload {source} {dest}`, "
        f"then `{PROG} submit {dest} ...` (`{PROG} upload --help` lists the formats)")


def _where_relative(source: str, exc: SVDServeError) -> UsageError:
    """A 404/403 for a relative SOURCE, saying where it was taken from."""
    return UsageError(
        f"{flag_text(str(exc))}; you gave {source!r}, a relative path, which is taken from the "
        f"current directory ({os.getcwd()!r}) and sent as {os.path.abspath(source)!r}; to "
        "name a path on the service's machine, give it absolute")


def cmd_submit(args: argparse.Namespace) -> int:
    _check_source(args.source)
    try:
        return _submit(args)
    except (NotFound, Forbidden) as exc:
        source_fault = any(str(e.get("field", "")).startswith("body.source")
                           for e in exc.errors)
        if source_fault and not (os.path.isabs(args.source) or "://" in args.source):
            raise _where_relative(args.source, exc) from exc
        raise


def _submit(args: argparse.Namespace) -> int:
    with _make_client(args) as client:
        job = client.submit(
            args.source,
            args.rank,
            energy=args.energy,
            max_rank=args.max_rank,
            array=args.array[0] if args.array and len(args.array) == 1 else args.array,
            method=args.method,
            n_oversamples=args.n_oversamples,
            n_iter=args.n_iter,
            center=args.center,
            random_state=args.seed,
            compute_u=not args.no_u,
            missing_chunks=args.missing_chunks or ("fill" if args.allow_missing_chunks else None),
            idempotency_key=args.idempotency_key,
            sample_dims=args.sample_dims,
            missing=args.missing,
            weights=args.weights,
            standardize=args.standardize,
        )
        if not args.wait:
            if args.json:
                _print_json(job.data)
            else:
                print(job.id)
            return EXIT_OK
        print(f"submitted {job.id}", file=sys.stderr)
        _wait(job, args)
        return _finish(job, args)


def cmd_status(args: argparse.Namespace) -> int:
    with _make_client(args) as client:
        job = client.get(args.job_id)
        if args.json:
            _print_json(job.data)
            return EXIT_OK
        print(f"id        {job.id}")
        print(f"state     {job.state}")
        for key in ("created_at", "started_at", "finished_at"):
            if job.get(key):
                print(f"{key.split('_')[0]:<9} {job.get(key)}")
        req = job.get("request") or {}
        src = req.get("source") or {}
        print(f"source    {src.get('url')}" + (f" [{src.get('array')}]" if src.get("array") else ""))
        target = (f"energy={req.get('energy')}" if req.get("energy") is not None
                  else f"rank={req.get('rank')}")
        print(f"request   {target} method={req.get('method')} "
              f"center={req.get('center')} n_iter={req.get('n_iter')}")
        shape = _shape_of(job)
        print(f"method    {_method_of(job)}" + (f" on {'x'.join(map(str, shape))}" if shape
                                                 else ""))
        if job.get("progress") and job.state not in TERMINAL_STATES:
            print(f"progress  {_progress_text(job)}")
        if job.error:
            print(f"error     {flag_text(job.error.get('type'))}: "
                  f"{flag_text(job.error.get('message'))}")
        if job.get("result"):
            res = job["result"]
            print(f"result    {res.get('url')} ({'x'.join(map(str, res.get('shape') or []))}, "
                  f"rank {res.get('rank')}, {res.get('method')})")
        for note in job.notes:
            print(f"note      {flag_text(note)}")
        return EXIT_OK


def cmd_wait(args: argparse.Namespace) -> int:
    with _make_client(args) as client:
        job = client.get(args.job_id)
        _wait(job, args)
        return _finish(job, args)


def cmd_report(args: argparse.Namespace) -> int:
    with _make_client(args) as client:
        report = client.report(args.job_id)
        if args.json:
            _print_json(report.to_dict())
        else:
            print(flag_text(report.table(max_rows=args.rows)))  # notes in the CLI's words
        if args.plot:
            path = report.plot(args.plot)
            print(f"wrote {path}", file=sys.stderr)
        return EXIT_OK


def cmd_jobs(args: argparse.Namespace) -> int:
    with _make_client(args) as client:
        jobs = client.jobs(state=args.state, limit=args.limit)
        if args.json:
            _print_json([j.data for j in jobs])
            return EXIT_OK
        if jobs:
            print(_job_header())
        for job in jobs:
            print(_job_line(job))
        if not jobs:
            print("no jobs" + (f" in state {args.state!r}" if args.state else ""), file=sys.stderr)
        return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    with _make_client(args) as client:
        job = client.cancel(args.job_id)
        print(f"{job.id} {job.state}")
        return EXIT_OK


def cmd_delete(args: argparse.Namespace) -> int:
    with _make_client(args) as client:
        client.delete(args.job_id)
        print(f"{args.job_id} deleted")
        return EXIT_OK


def cmd_upload(args: argparse.Namespace) -> int:
    from ._formats import read_matrix
    from ._storage import is_remote

    src = args.source
    so = _storage_options(args.storage_option)
    data = read_matrix(src, array=args.array, chunks=args.chunks,
                       storage_options=so if is_remote(src) else None)
    with _make_client(args) as client:
        try:
            url = client.upload(
                data, args.dest, storage_options=so, chunks=args.chunks,
                array=args.dest_array, overwrite=args.overwrite,
                via="http" if args.http else "auto",
            )
        except Conflict as exc:  # the name is taken among this tenant's uploads
            print(f"{PROG}: error: {_one_line(flag_text(str(exc)))}; or replace it: "
                  f"{PROG} upload {src} {args.dest} --overwrite", file=sys.stderr)
            return EXIT_FAILED
    m, n = data.shape
    print(url)
    print(f"wrote {m}x{n} {data.dtype} to {url}" + (f" [{args.dest_array}]" if args.dest_array
                                                      else ""), file=sys.stderr)
    return EXIT_OK


def cmd_serve_misplaced(args: argparse.Namespace) -> int:
    raise UsageError("'serve' must be the first argument: svdserve serve [options]")


# -- parser -------------------------------------------------------------------------------------


def _int_at_least(low: int):
    """argparse type: an integer >= ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            what = "a positive integer" if low == 1 else f"an integer >= {low}"
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1)
_nonneg_int = _int_at_least(0)


def _weights(text: str) -> str | list[float]:
    """``--weights``: ``coslat``, ``area``, comma-separated numbers or a ``.npy`` file."""
    if text in ("coslat", "area"):
        return text
    if text.endswith(".npy"):
        import numpy as np

        try:
            return np.load(text).astype(float).tolist()
        except (OSError, ValueError) as exc:
            raise argparse.ArgumentTypeError(f"could not read weights from {text!r}: {exc}")
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected coslat, area, numbers such as 1,0.5,2 or a .npy file; got {text!r}")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction such as 0.99, got {text!r}")
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected 0 < F < 1, got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``svdserve`` argument parser (client subcommands, plus a stub for ``serve``)."""
    # Connection options are accepted before or after the subcommand: the copy on each
    # subparser defaults to SUPPRESS so it does not overwrite a value given earlier.
    def add_conn(p: argparse.ArgumentParser, top: bool) -> None:
        d = (lambda v: v) if top else (lambda v: argparse.SUPPRESS)
        p.add_argument("--url", default=d(None), metavar="URL",
                       help="service URL (default: $SVDSERVE_URL or http://localhost:8000)")
        p.add_argument("--token", default=d(None), metavar="TOKEN",
                       help="bearer token (default: $SVDSERVE_TOKEN)")
        p.add_argument("--request-timeout", type=_seconds, default=d(30.0), metavar="S",
                       help="seconds per HTTP request (default: 30)")

    from svdserve import __version__

    from ._formats import formats_text

    parser = _Parser(
        prog=PROG,
        description="Distributed, out-of-core truncated SVD: submit jobs, follow them, "
        "read energy reports, upload matrices. `svdserve serve` runs the service.",
        epilog="exit codes: 0 ok, 1 job failed/cancelled/timed out or service error, "
        "2 usage error",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_conn(parser, True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help_: str, func) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        add_conn(p, False)
        p.set_defaults(func=func)
        return p

    def add_job_id(p: argparse.ArgumentParser) -> None:
        p.add_argument("job_id", metavar="JOB",
                       help="job id, or a unique prefix of at least 6 characters (as printed: "
                            "job 18ff257d)")

    def add_wait_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument("--timeout", type=_seconds, default=None, metavar="S",
                       help="give up waiting after S seconds (exit 1; the job keeps running)")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = add("submit", "submit a truncated-SVD job; prints its id", cmd_submit)
    p.add_argument("source", help="Zarr array/group: path in a data root, file:// or s3:// URL")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("-k", "--rank", type=_positive_int, help="components k")
    which.add_argument("--energy", type=_fraction, metavar="F",
                       help="instead of -k: the smallest rank capturing F (0 < F < 1) of "
                            "the energy (of the variance with --center)")
    p.add_argument("--max-rank", type=_positive_int, metavar="K", help="cap of --energy")
    p.add_argument("--array", action="append", metavar="NAME",
                   help="array inside the group at SOURCE; repeat it for several variables "
                        "decomposed together (multivariate EOF: --array sst --array slp)")
    p.add_argument("--method", choices=METHODS,
                   default="auto", help="auto (default) lets the service pick exact or "
                                        "randomized; sketch: one pass over A (Tropp et al. "
                                        "2019)")
    p.add_argument("--n-oversamples", type=_nonneg_int, default=10, metavar="P",
                   help="extra random directions beyond k (randomized, sketch; default 10); "
                        "clipped to min(m, n) - k with a note")
    p.add_argument("--n-iter", type=_nonneg_int, default=2, metavar="Q",
                   help="power iterations (randomized; default 2)")
    p.add_argument("--center", action="store_true", help="remove column means (PCA)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the random directions (default 0): same seed and plan, "
                        "same factors")
    p.add_argument("--no-u", action="store_true",
                   help="σ and V only (compute_u=false): one pass for the exact method")
    p.add_argument("--missing-chunks", choices=("fill", "error"), default=None,
                   help="a chunk absent from the store: fill (the default) reads it as the "
                        "fill value, as Zarr does (zarr does not write chunks equal to it; "
                        "the job's notes give the count); error fails the job, to catch "
                        "half-finished uploads")
    p.add_argument("--allow-missing-chunks", action="store_true",
                   help="deprecated: the same as --missing-chunks fill")
    p.add_argument("--sample-dims", nargs="+", metavar="DIM",
                   help="decompose an N-D variable: these dimensions are the samples (rows), "
                        "the others are flattened into features, e.g. --sample-dims time")
    p.add_argument("--missing", choices=("error", "mask"), default="error",
                   help="mask: drop features missing (NaN/_FillValue) in every sample, "
                        "such as land in an ocean field")
    p.add_argument("--weights", type=_weights, metavar="W",
                   help="feature weights applied inside the passes: coslat (sqrt cos "
                        "latitude), area (sqrt normalised cell area), numbers 1,0.5,... or a "
                        ".npy file, one per feature")
    p.add_argument("--standardize", action="store_true",
                   help="divide each feature by its standard deviation (with --center)")
    p.add_argument("--idempotency-key", metavar="KEY", help="make resubmitting this safe")
    p.add_argument("--wait", action="store_true", help="wait for the job (exit 1 if it fails)")
    p.add_argument("--json", action="store_true", help="print the job JSON")
    add_wait_opts(p)

    p = add("status", "show a job's state, progress, error and result", cmd_status)
    add_job_id(p)
    p.add_argument("--json", action="store_true", help="print the job JSON")

    p = add("wait", "wait for a job with a progress bar (exit 1 if it fails)", cmd_wait)
    add_job_id(p)
    p.add_argument("--json", action="store_true", help="print the final job JSON")
    add_wait_opts(p)

    p = add("report", "print a job's energy report", cmd_report)
    add_job_id(p)
    p.add_argument("--plot", metavar="PNG", help="also write the scree/cumulative-energy plot")
    p.add_argument("--rows", type=_positive_int, default=20, help="components listed (20)")
    p.add_argument("--json", action="store_true", help="print the report JSON")

    p = add("jobs", "list jobs, newest first, under a header line", cmd_jobs)
    p.add_argument("--state", choices=STATES, help="only jobs in this state")
    p.add_argument("--limit", type=_positive_int, default=None, metavar="N",
                   help="at most N jobs (default: all)")
    p.add_argument("--json", action="store_true", help="print the jobs' JSON (a list)")

    p = add("cancel", "cancel a job", cmd_cancel)
    add_job_id(p)

    p = add("delete", "delete a finished job and its result", cmd_delete)
    add_job_id(p)

    p = add("upload", "write a matrix file or a Zarr array as row-chunked Zarr v3 for the "
            "service; prints the URL", cmd_upload)
    p.epilog = f"accepted SOURCE formats: {formats_text()}"
    p.add_argument("source", help="matrix file (.npy .npz .csv .tsv .txt .h5 .nc) or Zarr "
                                  "array/group (path or URL)")
    p.add_argument("dest", help="destination path (in a data root) or s3:// URL; a bare NAME "
                   "(no '/') is sent over HTTP to the service's upload API")
    p.add_argument("--http", action="store_true",
                   help="send DEST over HTTP (POST /v1/uploads) even if it looks like a path")
    p.add_argument("--array", "--variable", dest="array", metavar="NAME",
                   help="the array of an .npz archive or a Zarr group, or the variable of an "
                        "HDF5/NetCDF file (needed when it holds several)")
    p.add_argument("--dest-array", metavar="NAME", help="write into a group at DEST as NAME")
    p.add_argument("--chunks", type=_positive_int, metavar="ROWS", help="rows per chunk")
    p.add_argument("--overwrite", action="store_true", help="replace an existing array")
    p.add_argument("-o", "--storage-option", action="append", metavar="KEY=VALUE",
                   help="fsspec option for s3:// (JSON values allowed); repeatable")

    p = sub.add_parser("serve", help="run the service (svdserve serve --help)", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER, help="the service's own options")
    p.set_defaults(func=cmd_serve_misplaced)
    return parser


def _closed_pipe() -> int:
    """Whoever read stdout has gone (``svdserve jobs | head -n 1``): stop quietly with 0,
    as a Unix filter does. What is still buffered goes to /dev/null, so that Python's
    flush at exit does not raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real file descriptor behind stdout
        pass
    return EXIT_OK


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _exit_code_for(exc: BaseException) -> int:
    if isinstance(exc, (UsageError, InvalidRequest, NotFound, Forbidden, Unauthorized,
                        InputFileError)):
        return EXIT_USAGE
    return EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """Run a client subcommand; return the exit code (0 ok, 1 failed, 2 usage)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help / --version (0) or a usage error (2)
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # here, so that a closed pipe is caught below
        return code
    except BrokenPipeError:
        return _closed_pipe()
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted (the job keeps running on the service)", file=sys.stderr)
        return 130
    except (UsageError, SVDServeError) as exc:
        text = flag_text(str(exc)) if isinstance(exc, SVDServeError) else str(exc)
        print(f"{PROG}: error: {_one_line(text)}", file=sys.stderr)
        return _exit_code_for(exc)
    except (ValueError, OSError) as exc:  # local problems: bad file, bad array, ...
        print(f"{PROG}: error: {_one_line(f'{type(exc).__name__}: {exc}')}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, (ValueError, FileNotFoundError)) else EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
