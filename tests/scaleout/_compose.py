"""Run the services of ``docker-compose.yml`` as plain OS processes on loopback.

There is no Docker engine on the test machine, so the compose file is taken
at its word and every service's ``command`` is started as a separate process
group, with the service's ``environment``. What Docker would provide is mapped
as follows:

- ``${VAR:-default}``: interpolated from ``variables`` (what ``docker compose``
  takes from the shell or ``.env``), else the defaults;
- image ``ENV``: the ``ENV`` lines of the Dockerfile's last stage, under each
  service's environment;
- service host names (``tcp://scheduler:8786``) and ``0.0.0.0``: ``127.0.0.1``;
  nothing listens beyond loopback;
- container ports (``expose`` and the container side of ``ports``): a free
  loopback port each; every occurrence of the port number in commands,
  environments and health checks is rewritten, so each port must belong to
  one service (checked);
- named volumes: one temporary directory each; the container path
  (``/data``) is rewritten to it in command arguments and environment values
  (also inside comma-separated lists);
- ``healthcheck.test``: run as a command (``CMD`` form), same rewriting;
- ``restart:``: not emulated; a killed process stays dead, like a container
  stopped with ``docker kill``; tests restart services explicitly;
- executables: looked up in the virtualenv's ``bin/`` first.

If the compose file changes a command or an environment value, the processes
started here change with it.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests._server import free_port

__all__ = ["interpolate", "load_compose", "dockerfile_instructions", "image_env",
           "free_port", "Topology", "Proc"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# --------------------------------------------------------------------------- interpolation


def interpolate(text: str, variables: dict[str, str]) -> str:
    """Compose-style interpolation of one string.

    Supports ``$$`` (a literal ``$``), ``$VAR``, ``${VAR}``, ``${VAR:-default}``
    (default when unset or empty), ``${VAR-default}`` (when unset),
    ``${VAR:?message}`` / ``${VAR?message}`` (error), ``${VAR:+alt}`` /
    ``${VAR+alt}``; defaults may themselves hold ``${...}``.
    """
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "$":
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1] if i + 1 < len(text) else ""
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "{":
            depth, j = 1, i + 2
            while j < len(text) and depth:
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                j += 1
            if depth:
                raise ValueError(f"unterminated ${{ in {text!r}")
            out.append(_expand(text[i + 2:j - 1], variables))
            i = j
        else:
            match = _NAME.match(text, i + 1)
            if match is None:
                raise ValueError(f"invalid interpolation at {text[i:]!r} (use $$ for a literal $)")
            out.append(variables.get(match.group(), ""))
            i = match.end()
    return "".join(out)


def _expand(expr: str, variables: dict[str, str]) -> str:
    match = _NAME.match(expr)
    if match is None:
        raise ValueError(f"invalid variable name in ${{{expr}}}")
    name, rest = match.group(), expr[match.end():]
    value = variables.get(name)
    if not rest:
        return value or ""
    for op in (":-", "-", ":?", "?", ":+", "+"):
        if rest.startswith(op):
            arg = interpolate(rest[len(op):], variables)
            unset = value is None
            empty = unset or value == ""
            if op == ":-":
                return arg if empty else value
            if op == "-":
                return arg if unset else value
            if op in (":?", "?"):
                if empty if op == ":?" else unset:
                    raise ValueError(f"required variable {name} is missing: {arg}")
                return value
            if op == ":+":
                return "" if empty else arg
            return "" if unset else arg
    raise ValueError(f"unsupported interpolation ${{{expr}}}")


def _interpolate_tree(node, variables):
    if isinstance(node, str):
        return interpolate(node, variables)
    if isinstance(node, list):
        return [_interpolate_tree(v, variables) for v in node]
    if isinstance(node, dict):
        return {k: _interpolate_tree(v, variables) for k, v in node.items()}
    return node


def load_compose(path: str | os.PathLike, variables: dict[str, str] | None = None) -> dict:
    """The compose file as a dict, YAML anchors merged, every string interpolated."""
    with open(path) as fh:
        raw = yaml.safe_load(fh)
    return _interpolate_tree(raw, dict(variables or {}))


# --------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions(path: str | os.PathLike) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, comments dropped, continuations joined."""
    logical, current = [], ""
    for line in Path(path).read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        logical.append(current)
        current = ""
    if current:
        logical.append(current)
    out = []
    for entry in logical:
        word, _, args = entry.partition(" ")
        out.append((word.upper(), args.strip()))
    return out


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The instructions of the last ``FROM`` stage."""
    starts = [i for i, (word, _) in enumerate(instructions) if word == "FROM"]
    return instructions[starts[-1]:] if starts else instructions


def image_env(path: str | os.PathLike) -> dict[str, str]:
    """``ENV`` of the image (last stage), in ``KEY=VALUE`` form."""
    env: dict[str, str] = {}
    for word, args in final_stage(dockerfile_instructions(path)):
        if word != "ENV":
            continue
        parts = shlex.split(args)
        if parts and "=" not in parts[0]:  # legacy "ENV KEY value"
            env[parts[0]] = " ".join(parts[1:])
            continue
        for part in parts:
            key, _, value = part.partition("=")
            env[key] = value
    return env


# --------------------------------------------------------------------------- processes


def _container_port(spec) -> int:
    """Container side of a ``ports``/``expose`` entry (``"127.0.0.1:8000:8000"``, ``8786``)."""
    if isinstance(spec, dict):
        return int(spec["target"])
    text = str(spec).split("/")[0]
    return int(text.rsplit(":", 1)[-1])


@dataclass
class Proc:
    """One running service replica: a process group of its own."""

    service: str
    argv: list[str]
    env: dict[str, str]
    popen: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self, sig: int = signal.SIGKILL, wait: float = 10.0) -> None:
        """Signal the whole group (the process and its children, e.g. a Dask nanny's worker)."""
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.popen.wait(wait)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(wait)

    def tail(self, n: int = 40) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


@dataclass
class Topology:
    """The services of a compose file as local processes.

    Parameters
    ----------
    compose_file : path
    workdir : path
        Temporary directory: volumes, logs, scratch space.
    variables : dict
        Interpolation variables, as ``docker compose`` would take them from
        the shell or ``.env``.
    image_env : dict
        ``ENV`` of the image (defaults under every service's environment).
    bin_dir : path
        Where ``dask``, ``svdserve`` and ``python`` are looked up first.
    """

    compose_file: Path
    workdir: Path
    variables: dict[str, str] = field(default_factory=dict)
    image_env: dict[str, str] = field(default_factory=dict)
    bin_dir: Path = field(default_factory=lambda: Path(sys.executable).parent)
    procs: list[Proc] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.config = load_compose(self.compose_file, self.variables)
        self.services: dict = self.config["services"]
        self.hosts = set(self.services)
        owners: dict[int, set[str]] = {}
        for name, svc in self.services.items():
            for spec in list(svc.get("expose", [])) + list(svc.get("ports", [])):
                owners.setdefault(_container_port(spec), set()).add(name)
        shared = {port: sorted(names) for port, names in owners.items() if len(names) > 1}
        if shared:
            raise ValueError(f"container ports used by several services: {shared}; on one "
                             "loopback interface each port must belong to one service")
        self.ports: dict[int, int] = {port: free_port() for port in sorted(owners)}
        self.volumes: dict[str, Path] = {}
        for name in self.config.get("volumes") or {}:
            path = self.workdir / "volumes" / name
            path.mkdir(parents=True, exist_ok=True)
            self.volumes[name] = path
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        (self.workdir / "tmp").mkdir(parents=True, exist_ok=True)
        self._count: dict[str, int] = {}

    # ------------------------------------------------------------------ mapping
    def host_port(self, container_port: int) -> int:
        return self.ports[container_port]

    def url(self, service: str, container_port: int, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.ports[container_port]}"

    def mounts(self, service: str) -> list[tuple[str, Path, bool]]:
        """``(container path, host directory, read_only)`` of a service's volumes."""
        out = []
        for spec in self.services[service].get("volumes", []) or []:
            if isinstance(spec, dict):
                source, target, ro = spec["source"], spec["target"], bool(spec.get("read_only"))
            else:
                parts = str(spec).split(":")
                source, target = parts[0], parts[1]
                ro = len(parts) > 2 and "ro" in parts[2].split(",")
            if source not in self.volumes:
                raise ValueError(f"service {service}: only named volumes are mapped, got {spec!r}")
            out.append((target.rstrip("/") or "/", self.volumes[source], ro))
        return out

    def _rewrite_text(self, text: str) -> str:
        hosts = "|".join(sorted((re.escape(h) for h in self.hosts), key=len, reverse=True))
        text = re.sub(rf"(?<=//)({hosts})(?=[:/]|$)", "127.0.0.1", text)
        text = re.sub(rf"(?<![\w.\-/])({hosts})(?=:\d)", "127.0.0.1", text)
        text = text.replace("0.0.0.0", "127.0.0.1")
        if self.ports:
            alternatives = "|".join(str(p) for p in sorted(self.ports, reverse=True))
            text = re.sub(rf"(?<![\d.])({alternatives})(?!\d)",
                          lambda m: str(self.ports[int(m.group())]), text)
        return text

    def _rewrite_paths(self, value: str, mounts) -> str:
        def one(item: str) -> str:
            for target, host, _ in mounts:
                if item == target or item.startswith(target + "/"):
                    return str(host) + item[len(target):]
            return item

        if "=" in value and value.startswith("--"):
            opt, _, arg = value.partition("=")
            return f"{opt}={self._rewrite_paths(arg, mounts)}"
        return ",".join(one(part) for part in value.split(","))

    def command(self, service: str, argv=None) -> list[str]:
        svc = self.services[service]
        argv = svc.get("command") if argv is None else argv
        if argv is None:
            raise ValueError(f"service {service} has no command (the image default is not used)")
        argv = shlex.split(argv) if isinstance(argv, str) else [str(a) for a in argv]
        mounts = self.mounts(service)
        argv = [self._rewrite_paths(self._rewrite_text(a), mounts) for a in argv]
        exe = self.bin_dir / argv[0]
        if exe.exists():
            argv[0] = str(exe)
        return argv

    def environment(self, service: str) -> dict[str, str]:
        svc = self.services[service]
        env_spec = svc.get("environment") or {}
        if isinstance(env_spec, list):
            env_spec = dict(item.split("=", 1) if "=" in item else (item, os.environ.get(item, ""))
                            for item in env_spec)
        declared = {**self.image_env, **{k: "" if v is None else str(v)
                                         for k, v in env_spec.items()}}
        mounts = self.mounts(service)
        declared = {k: self._rewrite_paths(self._rewrite_text(v), mounts)
                    for k, v in declared.items()}
        base = {k: v for k, v in os.environ.items()
                if not k.startswith(("SVDSERVE_", "DASK_", "AWS_"))}
        base["PATH"] = f"{self.bin_dir}{os.pathsep}{base.get('PATH', '')}"
        base["TMPDIR"] = str(self.workdir / "tmp")
        base["PYTHONUNBUFFERED"] = "1"
        return {**base, **declared}

    # ------------------------------------------------------------------ processes
    def start(self, service: str) -> Proc:
        """Start one replica of ``service`` (in a new session: its own process group)."""
        argv, env = self.command(service), self.environment(service)
        n = self._count.get(service, 0) + 1
        self._count[service] = n
        log = self.workdir / "logs" / f"{service}-{n}.log"
        with open(log, "wb") as fh:
            popen = subprocess.Popen(argv, env=env, cwd=self.workdir, stdout=fh,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        proc = Proc(service, argv, env, popen, log)
        self.procs.append(proc)
        return proc

    def run(self, service: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """Run a one-shot service (``restart: "no"``) to completion."""
        argv, env = self.command(service), self.environment(service)
        return subprocess.run(argv, env=env, cwd=self.workdir, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def running(self, service: str) -> list[Proc]:
        return [p for p in self.procs if p.service == service and p.alive()]

    def healthcheck(self, service: str, timeout: float = 10.0) -> bool:
        """Run the service's ``healthcheck.test`` once; True when it exits 0."""
        test = self.services[service]["healthcheck"]["test"]
        if isinstance(test, str):
            argv = ["sh", "-c", test]
        elif test[0] == "CMD":
            argv = list(test[1:])
        elif test[0] == "CMD-SHELL":
            argv = ["sh", "-c", test[1]]
        else:
            raise ValueError(f"unsupported healthcheck {test!r}")
        try:
            done = subprocess.run(self.command(service, argv), env=self.environment(service),
                                  cwd=self.workdir, capture_output=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return False
        return done.returncode == 0

    def wait_healthy(self, service: str, timeout: float = 60.0, interval: float = 0.5) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            procs = [p for p in self.procs if p.service == service]
            if procs and not procs[-1].alive():
                raise RuntimeError(f"{service} exited with {procs[-1].popen.returncode}:\n"
                                   f"{procs[-1].tail()}")
            if self.healthcheck(service):
                return
            time.sleep(interval)
        raise TimeoutError(f"{service} not healthy after {timeout:.0f} s:\n{self.logs(service)}")

    def logs(self, service: str | None = None, n: int = 30) -> str:
        return "\n".join(f"--- {p.service} pid {p.pid} ({'alive' if p.alive() else 'dead'}) "
                         f"{p.log.name}\n{p.tail(n)}"
                         for p in self.procs if service is None or p.service == service)

    def close(self) -> None:
        """Stop everything: SIGTERM, then SIGKILL of each process group."""
        for proc in self.procs:
            if proc.alive():
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5
        for proc in self.procs:
            try:
                proc.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:  # children of a nanny may outlive it: always kill the group
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                proc.popen.wait(5)
            except subprocess.TimeoutExpired:
                pass
