"""The deployment files themselves: compose schema, topology, Dockerfile, build context.

These checks read the files and need no Docker engine. What the services
actually do is proven by test_topology.py and test_s3.py, which run the same
commands as processes, and, where a Docker engine answers, by
test_compose_docker.py (``make compose-check``), which runs them in containers.
"""

from __future__ import annotations

import copy
import json
import os
import re
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

from ._compose import dockerfile_instructions, final_stage, image_env, interpolate, load_compose
from ._helpers import COMPOSE_FILE, DOCKERFILE, REPO, SCHEMA_FILE


@pytest.fixture(scope="module")
def schema():
    return json.loads(SCHEMA_FILE.read_text())


@pytest.fixture(scope="module")
def validator(schema):
    # docker-compose 1.29.2 validates with Draft4Validator (compose/config/validation.py).
    return jsonschema.Draft4Validator(schema)


def _errors(validator, doc):
    return sorted(f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                  for e in validator.iter_errors(doc))


# --------------------------------------------------------------------------- schema


@pytest.mark.parametrize("variables", [
    None,                                              # the file as written, before interpolation
    {},                                                # every default
    {"SVDSERVE_DATA_ROOTS": "/data,s3://svdserve/data",  # S3 set-up of the README
     "SVDSERVE_RESULTS_ROOT": "s3://svdserve/results", "SVDSERVE_WORKER_THREADS": "2",
     "SVDSERVE_BIND": "0.0.0.0", "SVDSERVE_API_PORT": "9999"},
], ids=["raw", "defaults", "s3"])
def test_compose_file_is_valid_against_the_compose_spec_schema(validator, variables):
    if variables is None:
        doc = yaml.safe_load(COMPOSE_FILE.read_text())
    else:
        doc = load_compose(COMPOSE_FILE, variables)
    assert _errors(validator, doc) == []


@pytest.mark.parametrize("path, value", [
    (("services", "worker", "comand"), ["dask", "worker"]),             # misspelt key
    (("services", "api", "healthcheck", "retries"), "many"),             # wrong type
    (("services", "api", "depends_on", "scheduler", "condition"), "up"),  # not in the enum
    (("volumes", "data"), "not-a-mapping"),
], ids=["unknown-key", "wrong-type", "bad-enum", "bad-volume"])
def test_schema_rejects_broken_compose_files(validator, path, value):
    """The schema check is not vacuous: typical mistakes are caught."""
    doc = copy.deepcopy(yaml.safe_load(COMPOSE_FILE.read_text()))
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert _errors(validator, doc)


def test_schema_file_says_where_it_came_from(schema):
    assert "docker-compose 1.29.2" in schema["$comment"]
    assert schema["title"] == "Compose Specification"


# --------------------------------------------------------------------------- topology


@pytest.fixture(scope="module")
def compose():
    return load_compose(COMPOSE_FILE, {})


def test_services_and_commands(compose):
    services = compose["services"]
    assert {"scheduler", "worker", "api"} <= set(services)
    assert services["scheduler"]["command"][:2] == ["dask", "scheduler"]
    assert "--dashboard-address" in services["scheduler"]["command"]
    worker = services["worker"]["command"]
    assert worker[:3] == ["dask", "worker", "tcp://scheduler:8786"]
    assert "--nthreads" in worker and "--memory-limit" in worker
    assert services["api"]["command"][:2] == ["svdserve", "serve"]
    assert services["api"]["environment"]["SVDSERVE_SCHEDULER"] == "tcp://scheduler:8786"


def test_workers_can_be_scaled(compose):
    """`docker compose up --scale worker=N` needs no fixed name and no published port."""
    worker = compose["services"]["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker
    assert "--worker-port" not in worker["command"] and "--nanny-port" not in worker["command"]
    # Dask workers exit when they lose the scheduler; the restart policy brings them back.
    assert worker["restart"] in ("unless-stopped", "always")


def test_api_port_and_health_check(compose):
    api = compose["services"]["api"]
    assert any(str(p).endswith(":8000") for p in api["ports"])
    assert "8000" in api["command"]
    test = " ".join(api["healthcheck"]["test"])
    assert "/v1/health" in test and ":8000" in test
    assert api["depends_on"]["scheduler"]["condition"] == "service_healthy"


def test_published_ports_bind_loopback_by_default(compose):
    """The Dask scheduler runs arbitrary code for its clients: never publish 8786."""
    for name, svc in compose["services"].items():
        for spec in svc.get("ports", []):
            assert str(spec).startswith("127.0.0.1:"), (name, spec)
            assert not str(spec).endswith(":8786"), (name, spec)


def test_data_and_results_volumes_are_shared_at_the_same_paths(compose):
    def mounts(name):
        out = {}
        for spec in compose["services"][name]["volumes"]:
            source, target = str(spec).split(":")[:2]
            out[source] = target
        return out

    api, worker = mounts("api"), mounts("worker")
    named = set(compose["volumes"])
    for volume in ("data", "results"):
        assert volume in named
        assert api[volume] == worker[volume], volume
    env = compose["services"]["api"]["environment"]
    assert env["SVDSERVE_DATA_ROOTS"].split(",")[0] == api["data"]
    assert env["SVDSERVE_RESULTS_ROOT"] == api["results"]
    assert env["SVDSERVE_DATABASE"].startswith(api["state"] + "/")


def test_object_storage_is_optional_behind_a_profile(compose):
    services = compose["services"]
    assert services["s3"]["profiles"] == ["s3"]
    assert services["s3-init"]["profiles"] == ["s3"]
    # nothing that always runs depends on the optional services
    for name in ("scheduler", "worker", "api"):
        assert "profiles" not in services[name]
        assert not set(services[name].get("depends_on", {})) & {"s3", "s3-init"}
    api_env = services["api"]["environment"]
    assert api_env["SVDSERVE_S3_ENDPOINT"] == "http://s3:9000"
    options = json.loads(api_env["SVDSERVE_STORAGE_OPTIONS"])
    assert options["key"] == services["s3"]["environment"]["MINIO_ROOT_USER"]
    assert options["secret"] == services["s3"]["environment"]["MINIO_ROOT_PASSWORD"]


def test_s3_endpoint_can_be_emptied_for_aws(compose):
    """``${VAR-default}``: an explicitly empty endpoint means AWS S3 itself."""
    env = load_compose(COMPOSE_FILE, {"SVDSERVE_S3_ENDPOINT": ""})["services"]["api"]["environment"]
    assert env["SVDSERVE_S3_ENDPOINT"] == ""


def test_service_environment_is_valid_settings(compose, monkeypatch):
    """The API's environment in the compose file is accepted by the service's settings."""
    from svdserve.service import Settings

    env = compose["services"]["api"]["environment"]
    for key in [k for k in os.environ if k.startswith("SVDSERVE_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.scheduler == "tcp://scheduler:8786"
    assert settings.data_roots == ["/data"] and settings.results_root == "/results"
    assert settings.panel_bytes == 128 * 2**20
    assert settings.fs_options()["endpoint_url"] == "http://s3:9000"
    assert settings.fs_options()["key"] == "svdserve"
    assert not settings.auth_enabled
    assert settings.no_workers_timeout == 60
    # no dead configuration: every variable is a setting of the service
    unknown = sorted(k for k in env if k[len("SVDSERVE_"):].lower() not in Settings.model_fields)
    assert unknown == [], unknown


# --------------------------------------------------------------------------- interpolation


@pytest.mark.parametrize("text, variables, expected", [
    ("${A:-x}", {}, "x"),                 # unset -> default
    ("${A:-x}", {"A": ""}, "x"),          # empty -> default
    ("${A-x}", {"A": ""}, ""),            # empty stays empty without the colon
    ("${A-x}", {}, "x"),
    ("${A}", {"A": "1"}, "1"),
    ("$A/b", {"A": "1"}, "1/b"),
    ("$$A", {"A": "1"}, "$A"),            # $$ escapes
    ("${A:-${B:-y}}", {}, "y"),           # nested default
    ("${A:+set}", {"A": "1"}, "set"),
    ("${A:+set}", {}, ""),
], ids=lambda v: repr(v))
def test_interpolation(text, variables, expected):
    assert interpolate(text, variables) == expected


def test_interpolation_required_variable():
    with pytest.raises(ValueError, match="TOKEN"):
        interpolate("${TOKEN:?set a token}", {})


# --------------------------------------------------------------------------- Dockerfile


@pytest.fixture(scope="module")
def dockerfile():
    return dockerfile_instructions(DOCKERFILE)


def test_dockerfile_base_and_stages(dockerfile):
    args = dict(a.split("=", 1) for w, a in dockerfile if w == "ARG" and "=" in a)
    froms = [interpolate(a.split()[0], args) for w, a in dockerfile if w == "FROM"]
    assert froms and all(f == "python:3.11-slim" for f in froms), froms


def test_dockerfile_runs_as_a_non_root_user(dockerfile):
    users = [a for w, a in final_stage(dockerfile) if w == "USER"]
    assert users, "the runtime stage sets no USER: containers would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")


def test_dockerfile_installs_everything_at_build_time(dockerfile):
    stage = final_stage(dockerfile)
    installs = [a for w, a in stage if w == "RUN" and "pip install" in a]
    assert installs, "the runtime stage installs nothing"
    for command in installs:
        assert "--no-index" in command, f"runtime install may reach the network: {command}"
    for word, args in stage:
        if word in ("CMD", "ENTRYPOINT"):
            argv = json.loads(args)  # exec form: no shell, signals reach the process
            assert not re.search(r"\b(pip|curl|wget|apt-get|uv)\b", " ".join(argv)), argv
    cmd = json.loads(next(a for w, a in reversed(stage) if w == "CMD"))
    assert cmd[:2] == ["svdserve", "serve"] and "0.0.0.0" in cmd and "8000" in cmd


def test_dockerfile_builds_with_any_builder(dockerfile):
    """The legacy builder, BuildKit and ``docker-compose build`` all build it, with no registry.

    A ``# syntax=`` line makes BuildKit pull that frontend image; ``RUN
    --mount`` needs BuildKit. The wheels come over with ``COPY --from``.
    """
    text = DOCKERFILE.read_text()
    assert not re.search(r"^#\s*syntax\s*=", text, re.M | re.I), "a # syntax= frontend line"
    assert not re.search(r"^#\s*escape\s*=", text, re.M | re.I)
    assert not any("--mount" in a for w, a in dockerfile if w == "RUN"), "RUN --mount needs BuildKit"
    stage = final_stage(dockerfile)
    copies = [a for w, a in stage if w == "COPY" and a.startswith("--from=build ")]
    assert copies, "the runtime stage does not copy the wheels from the build stage"
    # Both stages on the same base, chosen by one build arg (no registry: a local image).
    assert dockerfile[0] == ("ARG", "PYTHON_IMAGE=python:3.11-slim")
    assert [a for w, a in dockerfile if w == "FROM"] == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE}"]
    # pip's index comes from build args only in the build stage, never from a fixed host.
    build_stage = dockerfile[:len(dockerfile) - len(stage)]
    build_args = {a.split("=")[0] for w, a in build_stage if w == "ARG"}
    assert {"PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"} <= build_args
    assert not re.search(r"https?://", " ".join(a for w, a in dockerfile if w != "LABEL"))


def test_scheduler_health_check_asks_its_http_health_endpoint(compose):
    """``/health`` on the dashboard port: a bare TCP connect to 8786 logs
    "closed before handshake completed" at every probe."""
    scheduler = compose["services"]["scheduler"]
    test = " ".join(scheduler["healthcheck"]["test"])
    assert "http://127.0.0.1:8787/health" in test, test
    assert "8786" not in test
    assert "--dashboard-address" in scheduler["command"]
    assert scheduler["command"][scheduler["command"].index("--dashboard-address") + 1] == ":8787"


def test_worker_memory_limit_follows_its_container(compose):
    """One setting, the container's memory (cgroup); the Dask worker takes a fraction of it."""
    worker = compose["services"]["worker"]
    limit = worker["mem_limit"]
    assert re.fullmatch(r"\d+[bkmg]?", str(limit)), f"docker cannot parse mem_limit {limit!r}"
    command = worker["command"]
    fraction = float(command[command.index("--memory-limit") + 1])
    assert 0.5 <= fraction < 1, "Dask's limit must leave room for the nanny in the cgroup"
    raw = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["worker"]
    assert raw["mem_limit"] == "${SVDSERVE_WORKER_MEMORY:-4g}"


def test_dockerfile_exposes_the_service_ports(dockerfile):
    exposed = {p for w, a in final_stage(dockerfile) if w == "EXPOSE" for p in a.split()}
    assert {"8000", "8786", "8787"} <= exposed


def test_compose_commands_download_nothing_at_start(compose):
    for name, svc in compose["services"].items():
        command = svc.get("command") or []
        text = " ".join(command) if isinstance(command, list) else command
        assert not re.search(r"\b(pip|curl|wget|apt-get)\b", text), (name, text)


def test_image_env_points_at_the_volume_mount_points():
    env = image_env(DOCKERFILE)
    assert env["SVDSERVE_DATA_ROOTS"] == "/data"
    assert env["SVDSERVE_RESULTS_ROOT"] == "/results"
    assert env["SVDSERVE_DATABASE"].startswith("/state/")


# --------------------------------------------------------------------------- build context


def _glob_regex(pattern: str) -> str:
    """``**`` crosses directories, ``*`` and ``?`` do not, ``[...]`` is a class."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out.append(pattern[i:end + 1])
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out) + r"\Z"


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule (the subset used here): the last matching
    pattern wins, and a pattern that matches a directory matches everything below it."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _glob_regex(pattern.lstrip("!").rstrip("/"))
        if any(re.match(regex, prefix) for prefix in prefixes):
            ignored = not negate
    return ignored


def test_build_context_holds_what_pip_needs_and_nothing_else():
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    package_dirs = set(project["tool"]["setuptools"]["package-dir"].values())
    needed = ["pyproject.toml"]
    for directory in package_dirs:
        needed += [str(p.relative_to(REPO)) for p in (REPO / directory).rglob("*.py")
                   if "__pycache__" not in p.parts]
    readme = project["project"].get("readme")
    if readme and (REPO / readme).exists():
        needed.append(readme)
    left_out = [p for p in needed if _ignored(p, patterns)]
    assert not left_out, f".dockerignore leaves out files the build needs: {left_out}"
    for unwanted in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "data/A.zarr/zarr.json",
                     "svdserve.sqlite", "worker/__pycache__/_api.cpython-311.pyc",
                     "svdserve.egg-info/PKG-INFO", "bench/compare.py"):
        assert _ignored(unwanted, patterns), f"{unwanted} would be sent to the build"


def test_compose_build_context_is_this_directory(compose):
    for name in ("scheduler", "worker", "api"):
        svc = compose["services"][name]
        assert Path(REPO, svc["build"]["context"]).resolve() == REPO
        assert svc["image"].startswith("svdserve:")
