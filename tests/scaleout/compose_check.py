#!/usr/bin/env python3
"""``make compose-check``: docker-compose.yml run for real on a Docker engine.

Ten steps, each printed with its wall time::

     1 build the image (Dockerfile, host network so pip reaches this machine's index)
     2 up: scheduler, 1 worker, API; the worker's Dask memory limit against its cgroup
     3 upload a matrix into the `data` volume (`docker-compose run ... svdserve upload`)
     4 submit a job from the host with svdserve.client
     5 scale to 3 workers while the job runs; /v1/ready counts them
     6 `docker kill` one worker mid-job
     7 scale down to 1 worker
     8 the job succeeds; its factors, read over HTTP and from the `results`
       volume, agree with numpy.linalg.svd
     9 a worker whose main process crashes (SIGKILL from inside the container)
       comes back by itself (`restart: unless-stopped`)
    10 the API's health check turns healthy (after a restart of the API)

The compose project is unique to this run and is taken down with its volumes
(`down -v`) at the end, also when a step fails. Needs a Docker engine, the
base image (``PYTHON_IMAGE``, default python:3.11-slim) and docker-compose
(1.29; ``DOCKER_COMPOSE="docker compose"`` for the v2 plugin).

    python -m tests.scaleout.compose_check [--measure-scaling] [--keep]   # from the repository root

Environment: DOCKER (default /usr/bin/docker, the engine's own client),
DOCKER_COMPOSE, PYTHON_IMAGE, and PIP_INDEX_URL / PIP_EXTRA_INDEX_URL /
PIP_TRUSTED_HOST, passed to the build as build args when set.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from svdserve.client import Client, SVDServeError

from tests._server import free_port

from ._helpers import COMPOSE_FILE, REPO, make_matrix

#: Build args passed through from the environment when set (and not empty).
BUILD_ARGS = ("PYTHON_IMAGE", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST")
#: The Dask memory limit of a worker as a fraction of its container's memory
#: (`--memory-limit 0.9` in docker-compose.yml).
WORKER_MEMORY_FRACTION = 0.9
TERMINAL = ("succeeded", "failed", "cancelled")


def docker_binary() -> str:
    if os.environ.get("DOCKER"):
        return os.environ["DOCKER"]
    # /usr/bin/docker is the engine's own client (BuildKit built in); another
    # `docker` earlier on PATH may lack the buildx plugin.
    return "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else (shutil.which("docker") or "docker")


def compose_command() -> list[str]:
    if os.environ.get("DOCKER_COMPOSE"):
        return shlex.split(os.environ["DOCKER_COMPOSE"])
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return [docker_binary(), "compose"]


class CheckFailed(AssertionError):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def wait_until(what: str, predicate, timeout: float, interval: float = 0.5):
    """Poll ``predicate()`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            value = predicate()
            if value:
                return value
            last = value
        except Exception as exc:  # noqa: BLE001 - reported on time-out
            last = repr(exc)
        if time.monotonic() > deadline:
            raise CheckFailed(f"timed out after {timeout:.0f} s waiting for {what} (last: {last})")
        time.sleep(interval)


class Run:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.docker = docker_binary()
        self.compose_cmd = compose_command()
        self.project = f"svdservecheck{os.getpid()}"
        self.api_port = free_port()
        self.dashboard_port = free_port()
        version = os.environ.get("SVDSERVE_VERSION") or "0.1.0"
        self.image = f"svdserve:{version}"
        self.panel_bytes = args.chunk_rows * args.cols * 8  # one chunk per panel
        self.env = dict(os.environ)
        for key in [k for k in self.env if k.startswith("SVDSERVE_")]:
            del self.env[key]  # only what this run sets reaches the compose file
        self.env.update({
            "SVDSERVE_VERSION": version,
            "SVDSERVE_API_PORT": str(self.api_port),
            "SVDSERVE_DASHBOARD_PORT": str(self.dashboard_port),
            "SVDSERVE_PANEL_BYTES": str(self.panel_bytes),
            "SVDSERVE_WORKER_MEMORY": args.worker_memory,
            "SVDSERVE_NO_WORKERS_TIMEOUT": "60",
        })
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.tmp = Path(tempfile.mkdtemp(prefix="svdserve-compose-check-"))
        # An empty env file: a .env next to docker-compose.yml (tokens, ports...)
        # does not reach this run.
        self.env_file = self.tmp / "empty.env"
        self.env_file.touch()
        self.t0 = time.monotonic()
        self.step_no = 0
        self.timings: list[tuple[str, float]] = []

    # ------------------------------------------------------------------ plumbing

    def log(self, text: str) -> None:
        print(f"[compose-check {time.monotonic() - self.t0:6.1f}s] {text}", flush=True)

    def step(self, title: str):
        run = self

        class _Step:
            def __enter__(self):
                run.step_no += 1
                self.no = run.step_no
                self.t = time.monotonic()
                run.log(f"step {self.no}/10 {title} ...")
                return self

            def __exit__(self, exc_type, exc, tb):
                dt = time.monotonic() - self.t
                status = "ok" if exc_type is None else f"FAILED ({exc_type.__name__})"
                run.timings.append((f"{self.no:>2} {title}", dt))
                run.log(f"step {self.no}/10 {title}: {status} in {dt:.1f} s")
                return False

        return _Step()

    def sh(self, cmd: list[str], *, check_rc: bool = True, timeout: float = 600,
           quiet: bool = False) -> subprocess.CompletedProcess:
        if not quiet:
            shown = [c if "\n" not in c else "'<script>'" for c in cmd]
            self.log("$ " + " ".join(c if c == "'<script>'" else shlex.quote(c) for c in shown))
        proc = subprocess.run(cmd, cwd=REPO, env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        if check_rc and proc.returncode != 0:
            raise CheckFailed(f"command failed ({proc.returncode}): {' '.join(cmd)}\n"
                              f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
        return proc

    def compose(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.sh([*self.compose_cmd, "-f", str(COMPOSE_FILE), "-p", self.project,
                        "--env-file", str(self.env_file), *args], **kw)

    def containers(self, service: str, *, all_: bool = False) -> list[dict]:
        """This project's containers of ``service`` (running ones unless ``all_``), by number."""
        cmd = [self.docker, "ps", "-q", "--filter", f"label=com.docker.compose.project={self.project}",
               "--filter", f"label=com.docker.compose.service={service}"]
        if all_:
            cmd.append("-a")
        ids = self.sh(cmd, quiet=True).stdout.split()
        if not ids:
            return []
        info = json.loads(self.sh([self.docker, "inspect", *ids], quiet=True).stdout)
        return sorted(info, key=lambda c: int(c["Config"]["Labels"].get(
            "com.docker.compose.container-number", 0)))

    def container(self, service: str) -> dict:
        found = self.containers(service)
        check(len(found) == 1, f"expected 1 running {service} container, found {len(found)}")
        return found[0]

    def inspect(self, cid: str) -> dict:
        return json.loads(self.sh([self.docker, "inspect", cid], quiet=True).stdout)[0]

    def ready_workers(self) -> int | None:
        """Workers counted by ``/v1/ready`` (None when it does not answer 200)."""
        try:
            with Client(self.url, timeout=10, max_retries=0) as c:
                return c.ready()["workers"]
        except (SVDServeError, KeyError):
            return None

    def wait_workers(self, n: int, timeout: float = 120) -> None:
        wait_until(f"/v1/ready to count {n} workers", lambda: self.ready_workers() == n, timeout)

    def scheduler_workers(self) -> dict[str, dict]:
        """The scheduler's view of its workers (address -> memory limit, name), from inside."""
        code = ("import json; from distributed import Client\n"
                "with Client('tcp://127.0.0.1:8786', timeout=20) as c:\n"
                "    w = c.scheduler_info(n_workers=-1)['workers']\n"
                "print(json.dumps({a: {'memory_limit': v['memory_limit'], 'host': v['host']}"
                " for a, v in w.items()}))")
        cid = self.container("scheduler")["Id"]
        out = self.sh([self.docker, "exec", cid, "python", "-c", code], quiet=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    def job_line(self, job) -> str:
        p = job.get("progress") or {}
        return (f"job {job.id[:8]} {job.state}, {p.get('phase')} pass {p.get('pass')}/"
                f"{p.get('passes')}: {p.get('done')}/{p.get('total')} panels")

    def require_running(self, job, step: str) -> None:
        job.refresh()
        self.log(f"  {self.job_line(job)}")
        check(job.state in ("queued", "running"),
              f"the job was already {job.state} at the end of step {step}: make it longer "
              "(--rows, --chunk-rows) so that scaling and the kill happen mid-job")

    # ------------------------------------------------------------------ the steps

    def build(self) -> None:
        cmd = [self.docker, "build", "--network", "host", "-t", self.image]
        if self.args.no_cache:
            cmd.append("--no-cache")
        for key in BUILD_ARGS:
            if os.environ.get(key):
                cmd += ["--build-arg", f"{key}={os.environ[key]}"]
        self.env.setdefault("DOCKER_BUILDKIT", "1")
        proc = self.sh([*cmd, str(REPO)], timeout=1800)
        tail = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()][-2:]
        self.log("  " + " | ".join(tail))
        size = self.sh([self.docker, "image", "inspect", "-f", "{{.Size}}", self.image],
                       quiet=True).stdout.strip()
        self.log(f"  image {self.image}: {int(size) / 2**20:.0f} MiB")

    def up_one_worker(self) -> None:
        self.compose("up", "-d", "--no-build", "--scale", "worker=1", timeout=300)
        self.wait_workers(1)
        worker = self.container("worker")
        cgroup = worker["HostConfig"]["Memory"]
        check(cgroup > 0, "the worker container has no memory limit (mem_limit)")
        workers = self.scheduler_workers()
        check(len(workers) == 1, f"scheduler sees {workers}")
        (addr, info), = workers.items()
        expected = int(WORKER_MEMORY_FRACTION * cgroup)
        check(abs(info["memory_limit"] - expected) <= 2**20,
              f"worker {addr}: Dask memory limit {info['memory_limit']} is not "
              f"{WORKER_MEMORY_FRACTION} x its container's {cgroup}")
        self.log(f"  worker {addr}: container memory {cgroup / 2**30:.2f} GiB, "
                 f"Dask memory limit {info['memory_limit'] / 2**30:.2f} GiB")
        # The dashboard extra (bokeh) is installed: the scheduler serves /status.
        import httpx

        r = httpx.get(f"http://127.0.0.1:{self.dashboard_port}/status", timeout=30)
        check(r.status_code == 200 and "bokeh" in r.text.lower(),
              f"dashboard /status answered {r.status_code}")
        self.log(f"  dashboard http://127.0.0.1:{self.dashboard_port}/status: 200 (bokeh)")

    def upload(self, A: np.ndarray) -> None:
        indir = self.tmp / "in"
        indir.mkdir()
        np.save(indir / "A.npy", A)
        # The containers run as uid 10001: let them read what this user wrote.
        os.chmod(self.tmp, 0o755)
        os.chmod(indir, 0o755)
        os.chmod(indir / "A.npy", 0o644)
        proc = self.compose("run", "--rm", "--no-deps", "-T", "-v", f"{indir}:/in:ro", "api",
                            "svdserve", "upload", "/in/A.npy", "/data/A.zarr",
                            "--chunks", str(self.args.chunk_rows), timeout=600)
        self.log(f"  {proc.stdout.strip().splitlines()[-1]}")
        api = self.container("api")["Id"]
        owners = self.sh([self.docker, "exec", api, "find", "/data/A.zarr", "-not", "-user",
                          "10001"], quiet=True).stdout.split()
        check(not owners, f"files in the data volume not owned by uid 10001: {owners[:5]}")

    def submit(self, client: Client):
        job = client.submit("/data/A.zarr", rank=self.args.rank, method="exact")
        wait_until("the job to report progress",
                   lambda: job.refresh(wait=1).get("progress") or job.state in TERMINAL, 120)
        self.log(f"  submitted from the host: {self.job_line(job)}")
        return job

    def scale_up(self, job) -> None:
        self.compose("up", "-d", "--no-build", "--scale", "worker=3", timeout=300)
        self.wait_workers(3)
        self.log(f"  /v1/ready: 3 workers; containers "
                 f"{[c['Name'].lstrip('/') for c in self.containers('worker')]}")
        self.require_running(job, "5 (scale to 3)")

    def kill_worker(self, job) -> str:
        # Let the newcomers take work first: the job advances by a few panels on 3 workers.
        done0 = (job.refresh().get("progress") or {}).get("done", 0)
        phase0 = (job.get("progress") or {}).get("phase")
        wait_until("the job to advance on 3 workers",
                   lambda: (job.refresh(wait=1).get("progress") or {}).get("phase") != phase0
                   or (job.get("progress") or {}).get("done", 0) >= done0 + 10
                   or job.state in TERMINAL, 60)
        victim = self.containers("worker")[1]  # the second replica, which joined mid-job
        ip = next(iter(victim["NetworkSettings"]["Networks"].values()))["IPAddress"]
        self.sh([self.docker, "kill", victim["Id"]])
        self.log(f"  killed {victim['Name'].lstrip('/')} ({ip}) at: {self.job_line(job)}")
        self.wait_workers(2)
        self.require_running(job, "6 (docker kill)")
        return ip

    def scale_down(self, job) -> None:
        self.compose("up", "-d", "--no-build", "--scale", "worker=1", timeout=300)
        self.wait_workers(1)
        running = self.containers("worker")
        check(len(running) == 1, f"{len(running)} worker containers run after scaling to 1")
        job.refresh()
        self.log(f"  /v1/ready: 1 worker; {self.job_line(job)}")

    def check_result(self, client: Client, job, A: np.ndarray, victim_ip: str) -> None:
        job.wait(timeout=self.args.job_timeout)
        self.log(f"  job {job.id[:8]} {job.state}")
        for note in job.notes:
            self.log(f"  note: {note}")
        check(job.state == "succeeded", f"job ended {job.state}: {job.error}")
        check(any(f"worker tcp://{victim_ip}:" in n and "left the cluster" in n for n in job.notes),
              f"no note names the killed worker at {victim_ip}: {job.notes}")

        k = self.args.rank
        t = time.monotonic()
        u_ref, s_ref, vt_ref = np.linalg.svd(A, full_matrices=False)
        self.log(f"  numpy.linalg.svd of {A.shape[0]}x{A.shape[1]}: {time.monotonic() - t:.1f} s")

        # Over HTTP: the factors as the service serves them.
        with Client(self.url, result_access="http", timeout=60) as http_client:
            res = http_client.get(job.id).result()
            via_http = (np.asarray(res.S), np.asarray(res.U), np.asarray(res.Vt))
        # From the results volume: the job's result group copied out of the
        # volume (through the API container's mount; works wherever the engine runs).
        url = job.data["result"]["url"]
        check(url.startswith("/results/"), f"result url {url!r} is not in the results volume")
        api = self.container("api")["Id"]
        owners = self.sh([self.docker, "exec", api, "find", url, "-not", "-user", "10001"],
                         quiet=True).stdout.split()
        check(not owners, f"result files not owned by uid 10001: {owners[:5]}")
        local = self.tmp / "result.zarr"
        self.sh([self.docker, "cp", f"{api}:{url}", str(local)])
        vol = client.open_result(str(local))
        via_volume = (np.asarray(vol.S), np.asarray(vol.U), np.asarray(vol.Vt))
        for name, x, y in zip(("S", "U", "Vt"), via_http, via_volume):
            check(np.array_equal(x, y), f"{name} read over HTTP differs from the volume's")

        S, U, Vt = via_http
        m, n = A.shape
        check(U.shape == (m, k) and S.shape == (k,) and Vt.shape == (k, n),
              f"shapes {U.shape} {S.shape} {Vt.shape}")
        # Tolerances, relative to machine epsilon. Both sides are backward
        # stable: each is the exact SVD of A + E with ||E||_2 <= c(m, n) eps ||A||_2
        # (the service: TSQR, Householder QR of panels and of stacked R
        # factors; NumPy: LAPACK's gesdd). Weyl's inequality then bounds
        # |sigma_i - sigma_i_numpy| by (c + c_numpy) eps sigma_1. The worst-case
        # c is a low-degree polynomial in m and n; rounding errors of sums of m
        # terms add up like a random walk, so in practice c stays below
        # sqrt(m n): we allow 4 sqrt(m n) eps sigma_1 (3.1e-12 sigma_1 for
        # 300,000 x 40; the measured error, printed below, is a few eps sigma_1).
        # Singular vectors move by at most ||E|| / gap (Wedin's sin-theta
        # theorem), gap the smallest distance of sigma_1..sigma_k to a
        # neighbour (here ~0.15 sigma_k): that bound applies to every entry of U
        # and Vt. A lost or twice-counted panel would be off by ~1e-3 sigma_1.
        eps = np.finfo(np.float64).eps
        tol_s = 4 * np.sqrt(m * n) * eps * s_ref[0]
        gaps = np.minimum(-np.diff(s_ref[:k + 1]), np.r_[np.inf, -np.diff(s_ref[:k])])
        tol_v = tol_s / gaps.min()
        err_s = np.max(np.abs(S - s_ref[:k]))
        # Signs: the service makes the largest-magnitude entry of each row of Vt positive.
        big = np.argmax(np.abs(vt_ref[:k]), axis=1)
        signs = np.sign(vt_ref[np.arange(k), big])
        err_vt = np.max(np.abs(Vt - vt_ref[:k] * signs[:, None]))
        err_u = np.max(np.abs(U - u_ref[:, :k] * signs))
        self.log(f"  |S - S_numpy| = {err_s / (eps * s_ref[0]):.0f} eps sigma_1 "
                 f"(bound {tol_s / (eps * s_ref[0]):.0f}); |Vt - Vt_numpy| = {err_vt / eps:.0f} eps, "
                 f"|U - U_numpy| = {err_u / eps:.0f} eps (bound {tol_v / eps:.0f} eps)")
        check(err_s <= tol_s, f"sigma differs from numpy by {err_s:.3g} > {tol_s:.3g}")
        check(err_vt <= tol_v, f"Vt differs from numpy by {err_vt:.3g} > {tol_v:.3g}")
        check(err_u <= tol_v, f"U differs from numpy by {err_u:.3g} > {tol_v:.3g}")
        self.log(f"  S, U, Vt over HTTP and from the results volume: identical, and equal to "
                 f"numpy's within the bounds; sigma_1..3 = {np.round(S[:3], 6).tolist()}")

    def measure_scaling(self, client: Client) -> None:
        """Wall time of the same job on 1 and on 3 worker containers (nothing else changing)."""
        walls: dict[int, list[float]] = {1: [], 3: []}
        for _ in range(self.args.scaling_repeats):
            for n in (1, 3):
                self.compose("up", "-d", "--no-build", "--scale", f"worker={n}", timeout=300)
                self.wait_workers(n)
                t = time.monotonic()
                job = client.submit("/data/A.zarr", rank=self.args.rank, method="exact")
                job.wait(timeout=self.args.job_timeout)
                walls[n].append(time.monotonic() - t)
                check(job.state == "succeeded", f"job on {n} workers: {job.state} {job.error}")
                self.log(f"  measured: one job on {n} worker container(s): {walls[n][-1]:.1f} s wall")
        best = {n: min(w) for n, w in walls.items()}
        self.log(f"  measured (best of {self.args.scaling_repeats}): 1 worker {best[1]:.1f} s, "
                 f"3 workers {best[3]:.1f} s, speed-up {best[1] / best[3]:.2f}x "
                 f"on {os.cpu_count()} cores (load average now "
                 f"{', '.join(f'{x:.1f}' for x in os.getloadavg())})")
        self.compose("up", "-d", "--no-build", "--scale", "worker=1", timeout=300)
        self.wait_workers(1)

    def crash_and_restart(self) -> None:
        worker = self.container("worker")
        before = self.scheduler_workers()
        restarts = worker["RestartCount"]
        policy = worker["HostConfig"]["RestartPolicy"]["Name"]
        check(policy == "unless-stopped", f"worker restart policy is {policy!r}")
        # The container's main process: the child of its init (docker-init, PID 1),
        # i.e. the Dask nanny. SIGKILL from inside, as a crash would: not `docker kill`,
        # which counts as a deliberate stop and is never restarted.
        code = ("import os, signal\n"
                "kids = [int(p) for p in os.listdir('/proc') if p.isdigit()\n"
                "        and open(f'/proc/{p}/stat').read().rsplit(')', 1)[1].split()[1] == '1']\n"
                "main = [p for p in kids if b'dask' in open(f'/proc/{p}/cmdline', 'rb').read()]\n"
                "print(main[0], open(f'/proc/{main[0]}/cmdline', 'rb').read().replace(b'\\0', b' ')"
                ".decode()[:60], flush=True)\n"
                "os.kill(main[0], signal.SIGKILL)\n")
        out = self.sh([self.docker, "exec", worker["Id"], "python", "-c", code]).stdout.strip()
        self.log(f"  SIGKILL from inside {worker['Name'].lstrip('/')} to PID {out}")
        wait_until("the worker container to restart",
                   lambda: (lambda c: c["RestartCount"] > restarts and c["State"]["Running"])(
                       self.inspect(worker["Id"])), 60)
        state = self.inspect(worker["Id"])
        self.log(f"  restarted by Docker: RestartCount {restarts} -> {state['RestartCount']}, "
                 f"running since {state['State']['StartedAt']}")
        after = wait_until("a new worker to register with the scheduler",
                           lambda: (lambda w: w if len(w) == 1 and set(w) != set(before) else None)(
                               self.scheduler_workers()), 90, interval=1)
        self.wait_workers(1)
        self.log(f"  worker {next(iter(before))} -> {next(iter(after))}; /v1/ready: 1 worker")

    def api_health(self, client: Client, job_id: str) -> None:
        self.compose("restart", "api", timeout=120)
        api = self.container("api")["Id"]
        seen = []

        def healthy():
            status = self.inspect(api)["State"].get("Health", {}).get("Status")
            if not seen or seen[-1] != status:
                seen.append(status)
            return status == "healthy"

        t = time.monotonic()
        wait_until("the API's health check to pass", healthy, 120)
        self.log(f"  API health: {' -> '.join(map(str, seen))} {time.monotonic() - t:.1f} s "
                 "after the restart")
        check(client.get(job_id).state == "succeeded",
              "the job is not in the restarted API's store (state volume)")
        self.log(f"  job {job_id[:8]} still listed after the restart (state volume)")

    # ------------------------------------------------------------------ driver

    def main(self) -> int:
        self.log(f"project {self.project}, API {self.url}, matrix {self.args.rows}x{self.args.cols} "
                 f"in {self.args.rows // self.args.chunk_rows} panels of {self.args.chunk_rows} rows, "
                 f"rank {self.args.rank}; {self.docker}, {' '.join(self.compose_cmd)}")
        ok = False
        try:
            with self.step("build the image"):
                self.build()
            with self.step("up: scheduler, 1 worker, API"):
                self.up_one_worker()
            A = make_matrix(self.args.rows, self.args.cols, self.args.seed)
            with self.step("upload a matrix into the data volume"):
                self.upload(A)
            with Client(self.url, timeout=60) as client:
                with self.step("submit from the host with svdserve.client"):
                    job = self.submit(client)
                with self.step("scale to 3 workers mid-job, check they joined"):
                    self.scale_up(job)
                with self.step("docker kill one worker mid-job"):
                    victim_ip = self.kill_worker(job)
                with self.step("scale down to 1 worker"):
                    self.scale_down(job)
                with self.step("result against NumPy, over HTTP and from the results volume"):
                    self.check_result(client, job, A, victim_ip)
                if self.args.measure_scaling:
                    t = time.monotonic()
                    self.measure_scaling(client)
                    self.timings.append(("   (extra) 1 vs 3 worker job", time.monotonic() - t))
                with self.step("restart: unless-stopped brings a crashed worker back"):
                    self.crash_and_restart()
                with self.step("the API's health check turns healthy"):
                    self.api_health(client, job.id)
            ok = True
        except BaseException as exc:
            self.log(f"FAILED: {exc}")
            try:
                logs = self.compose("logs", "--no-color", "--tail", "40", check_rc=False, quiet=True)
                print(logs.stdout[-12000:], flush=True)
            except Exception:  # noqa: BLE001
                pass
            if not isinstance(exc, Exception):
                raise
        finally:
            t = time.monotonic()
            if self.args.keep:
                self.log(f"--keep: project {self.project} left running "
                         f"(docker-compose -p {self.project} down -v)")
            else:
                self.compose("down", "-v", "--remove-orphans", "--timeout", "10",
                             check_rc=False, timeout=300)
                left = self.sh([self.docker, "ps", "-aq", "--filter",
                                f"label=com.docker.compose.project={self.project}"],
                               check_rc=False, quiet=True).stdout.split()
                vols = self.sh([self.docker, "volume", "ls", "-q", "--filter",
                                f"label=com.docker.compose.project={self.project}"],
                               check_rc=False, quiet=True).stdout.split()
                self.log(f"down -v: {len(left)} containers and {len(vols)} volumes left")
                ok = ok and not left and not vols
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.timings.append(("   down -v", time.monotonic() - t))
        print("\ncompose-check timings:")
        for name, dt in self.timings:
            print(f"  {name:<66} {dt:7.1f} s")
        print(f"  {'total':<66} {time.monotonic() - self.t0:7.1f} s")
        print("compose-check: " + ("PASSED" if ok else "FAILED"), flush=True)
        return 0 if ok else 1


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # The job must outlast steps 5-7 (about 10 s on 2 cores): 300,000 x 40
    # float64 in panels of 500 rows is 600 panels, about 30 s on 2 cores.
    ap.add_argument("--rows", type=int, default=300_000)
    ap.add_argument("--cols", type=int, default=40)
    ap.add_argument("--chunk-rows", type=int, default=500, help="rows per chunk = per panel")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--worker-memory", default="1g",
                    help="SVDSERVE_WORKER_MEMORY (3 workers of 1g fit a small machine)")
    ap.add_argument("--job-timeout", type=float, default=600)
    ap.add_argument("--measure-scaling", action="store_true",
                    help="also time one job on 1 and on 3 worker containers")
    ap.add_argument("--scaling-repeats", type=int, default=2, help="with --measure-scaling")
    ap.add_argument("--no-cache", action="store_true", help="build the image from scratch")
    ap.add_argument("--keep", action="store_true", help="leave the project running (debugging)")
    return ap.parse_args(argv)


if __name__ == "__main__":
    sys.exit(Run(parse_args()).main())
