"""Settings of the job service: one validated object read from ``SVDSERVE_*``.

This is the only module of :mod:`svdserve.service` that reads the process
environment. Every other module receives a :class:`Settings` instance.

Lists are given as comma-separated strings (or JSON lists); mappings as
JSON objects::

    SVDSERVE_DATA_ROOTS=/srv/matrices,s3://lab-bucket/matrices
    SVDSERVE_STORAGE_OPTIONS='{"key": "...", "secret": "..."}'
    SVDSERVE_TOKENS=alice:s3cret-a,bob:s3cret-b
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from svdserve.worker import READERS, Execution, Limits

__all__ = ["Settings", "TENANT_PATTERN"]

#: A tenant name is used as a directory name under the results root.
TENANT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

#: The worker's defaults, which the settings below take rather than repeat.
_WORKER, _LIMITS = Execution(), Limits()

_S3 = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.\-]{1,62})(?:/(?P<prefix>.*))?$")


def _split_list(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [item.strip() for item in text.split(",") if item.strip()]
    return value


def _normalize_root(root: str) -> str:
    """A data or results root as an absolute local path or ``s3://bucket[/prefix]``."""
    root = root.strip()
    if root.startswith("s3://"):
        match = _S3.match(root.rstrip("/"))
        if match is None:
            raise ValueError(f"{root!r} is not a valid s3://bucket[/prefix] root")
        prefix = (match["prefix"] or "").strip("/")
        if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
            raise ValueError(f"{root!r}: the prefix must not hold empty, '.' or '..' segments")
        return f"s3://{match['bucket']}" + (f"/{prefix}" if prefix else "")
    if root.startswith("file://"):
        root = root[len("file://"):]
    if "://" in root:
        raise ValueError(
            f"{root!r}: roots must be local directories, file:// URLs or s3://bucket/prefix")
    return os.path.realpath(os.path.expanduser(root))


class Settings(BaseSettings):
    """Configuration of ``svdserve serve``; every field is ``SVDSERVE_<NAME>``.

    Parameters
    ----------
    host, port : str, int, default="127.0.0.1", 8000
        Where ``svdserve serve`` listens (``--host``/``--port`` override).
    scheduler : str or None, default=None
        Address of a running Dask scheduler (``tcp://host:8786``). None starts
        an embedded ``LocalCluster`` in the service's lifespan.
    n_workers : int, default=2
        Workers of the embedded cluster.
    threads_per_worker : int, default=1
        Threads per embedded worker.
    worker_processes : bool, default=True
        Embedded workers run in their own processes (False: threads of the
        service process; only sensible for tests).
    data_roots : list of str, default=["./data"]
        Where sources may be read: local directories and/or
        ``s3://bucket/prefix``. Relative source paths resolve against the first.
    storage_options : dict, default={}
        fsspec options for ``s3://`` data and results (credentials, ...).
    s3_endpoint : str or None, default=None
        S3-compatible endpoint URL (MinIO, moto); merged into the options as
        ``endpoint_url``.
    results_root : str, default="./results"
        Where results are written: ``{results_root}/{tenant}/{job}/{attempt}/result.zarr``.
    database : str, default="./svdserve.sqlite"
        Path of the SQLite job store.
    tokens : secret str or None, default=None
        ``tenant:token,tenant:token``; when tokens (or a tokens file) are
        configured every route except ``/v1/health`` needs a bearer token.
    tokens_file : path or None, default=None
        A file of ``tenant:token`` lines (``#`` comments allowed).
    max_concurrent_jobs : int, default=2
        Jobs running at once; the rest wait in the queue, dispatched fairly
        between tenants (FIFO within one; see ``max_running_jobs_per_tenant``).
    max_queued_jobs : int, default=100
        Queue capacity; a submission beyond it is answered 429 with Retry-After.
    max_queued_jobs_per_tenant : int or None, default=None
        Jobs one tenant may have queued; its submission beyond it is answered
        429 naming this limit. None: only ``max_queued_jobs`` applies.
    max_running_jobs_per_tenant : int or None, default=None
        Jobs of one tenant running at once (None: up to
        ``max_concurrent_jobs``). Whatever the limits, the dispatcher is fair
        between tenants: the tenant with the fewest running jobs, then the one
        served least recently, starts next; FIFO within one tenant.
    max_attempts : int, default=3
        A job interrupted by service restarts this many times is failed.
    panel_bytes : int or None, default=None
        Panel byte budget passed to the core (None: its default, 128 MiB).
    panel_cache : float, default=0.4
        Share of each worker's memory limit that may keep decoded panels
        between passes (0 streams every pass; see ``svdserve.worker._cache``).
    reader : {"direct", "zarr"}, default="direct"
        How workers decode stored chunks: straight into the panel buffer
        where the encoding allows (``svdserve.worker._decode``), or always
        through zarr's codec pipeline. The panels are the same bits.
    max_body_bytes : int, default=65536
        Larger request bodies are refused with 413.
    progress_interval : float, default=0.2
        Least seconds between two progress writes of one job (phase changes
        and the last panel of a phase are always written).
    connect_timeout : float, default=30
        Seconds to wait for the scheduler when connecting (retried in the
        background until it answers).
    no_workers_timeout : float, default=60
        Seconds a running job waits while the cluster has no worker at all
        before it fails with ``worker_lost``.
    max_chunks : int, default=1_000_000
        A source whose metadata implies more chunk keys is refused at submit
        (422 naming ``body.source``); each key is stat-ed once when pinned.
    max_panels : int, default=1_000_000
        A source whose panel plan has more panels is refused at submit.
    max_band_bytes : int, default=4 GiB
        A source with compressed chunks larger than this (as float64; a
        compressed chunk is decoded whole) is refused at submit.
    max_nnz : int, default=2**40
        A sparse source (AnnData or Binsparse group) storing more values is
        refused at submit.
    memory_fraction : float, default=0.5
        A source whose unavoidable read unit (one compressed chunk decoded,
        with its copies) exceeds this share of the smallest worker's memory
        limit is refused at submit (422 naming ``body.source``).
    tls_ca_file, tls_cert_file, tls_key_file : path or None, default=None
        TLS for an external scheduler (``SVDSERVE_SCHEDULER=tls://...``): the
        CA that signed the scheduler's and workers' certificates, and this
        service's client certificate and key. Required together. The
        embedded cluster always uses TLS with a temporary certificate.
    task_deadline : float, default=60
        Floor of the deadline of a pass: when no panel task finishes for
        ``max(task_deadline, task_deadline_factor x the median time between
        two task completions so far in the job)`` seconds, the workers that do
        not answer a ping (a hung, e.g. SIGSTOPped, worker) are retired as
        lost and their tasks recompute elsewhere.
    task_deadline_factor : float, default=10
    state_retry_max : float, default=5
        Longest pause between two tries of a job-state write the database
        refused (disk full, read-only); the runner retries until it succeeds.
    log_format : {"text", "json"}, default="text"
        ``json``: one JSON object per log line (job events carry ``event``,
        ``job``, ``tenant`` and more as fields).
    metrics_token : secret str or None, default=None
        Bearer token of ``GET /metrics``. With tenant tokens configured,
        ``/metrics`` (every tenant's activity) answers only this token;
        without it the endpoint is closed (403). With no tokens at all it is open.
    log_level : str, default="info"
    dashboard_link : str or None, default=None
        Address of the Dask dashboard as the browser reaches it, linked from
        the pages (an external scheduler's, e.g. ``http://localhost:8787/status``).
        None: the embedded cluster's when bokeh is installed, else no link.
    uploads_root : str, default="./uploads"
        A local directory for matrices uploaded over HTTP (``/v1/uploads``):
        a committed upload is ``{uploads_root}/{tenant}/{name}.zarr``, readable
        as a source by its tenant only. Work in progress lives in its
        ``.uploads`` directory, which is never readable as a source.
    upload_quota_bytes : int, default=10 GiB
        Raw bytes (rows x columns x itemsize; CSR: its arrays' bytes) one
        tenant's uploads, committed or not, may hold; a new upload beyond it
        is answered 413.
    upload_expiry : float, default=86400
        Seconds an uncommitted upload may go without a new block before it is
        deleted (checked on every upload request).
    upload_block_bytes : int, default=16 MiB
        Rows per block (one Zarr chunk) of an upload whose creator does not
        choose ``block_rows``: about this many bytes of whole rows.
    upload_max_block_bytes : int, default=256 MiB
        Largest block (request body of ``PUT /v1/uploads/{id}/blocks/{i}``).
    """

    model_config = SettingsConfigDict(env_prefix="SVDSERVE_", extra="ignore",
                                      validate_default=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    scheduler: str | None = None
    n_workers: int = Field(default=2, ge=1)
    threads_per_worker: int = Field(default=1, ge=1)
    worker_processes: bool = True
    data_roots: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["./data"])
    storage_options: dict[str, Any] = Field(default_factory=dict)
    s3_endpoint: str | None = None
    results_root: str = "./results"
    database: str = "./svdserve.sqlite"
    tokens: SecretStr | None = None
    tokens_file: Path | None = None
    max_concurrent_jobs: int = Field(default=2, ge=1)
    max_queued_jobs: int = Field(default=100, ge=0)
    max_queued_jobs_per_tenant: int | None = Field(default=None, ge=0)
    max_running_jobs_per_tenant: int | None = Field(default=None, ge=1)
    max_attempts: int = Field(default=3, ge=1)
    panel_bytes: int | None = Field(default=None, ge=1)
    panel_cache: float = Field(default=_WORKER.panel_cache, ge=0.0, le=0.5)
    reader: Literal[READERS] = _WORKER.reader
    max_body_bytes: int = Field(default=65536, ge=1024)
    progress_interval: float = Field(default=0.2, ge=0)
    connect_timeout: float = Field(default=30.0, gt=0)
    no_workers_timeout: float = Field(default=_WORKER.no_workers_timeout, gt=0)
    max_chunks: int = Field(default=_LIMITS.max_chunks, ge=1)
    max_panels: int = Field(default=_LIMITS.max_panels, ge=1)
    max_band_bytes: int = Field(default=_LIMITS.max_band_bytes, ge=1)
    max_nnz: int = Field(default=_LIMITS.max_nnz, ge=1)
    memory_fraction: float = Field(default=_WORKER.memory_fraction, gt=0.0, le=1.0)
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    task_deadline: float = Field(default=60.0, gt=0)  # the worker's default is None (no deadline)
    task_deadline_factor: float = Field(default=_WORKER.task_deadline_factor, ge=1)
    state_retry_max: float = Field(default=5.0, gt=0)
    log_format: Literal["text", "json"] = "text"
    metrics_token: SecretStr | None = None
    log_level: str = "info"
    dashboard_link: str | None = None
    uploads_root: str = "./uploads"
    upload_quota_bytes: int = Field(default=10 * 2**30, ge=0)
    upload_expiry: float = Field(default=86400.0, gt=0)
    upload_block_bytes: int = Field(default=16 * 2**20, ge=1)
    upload_max_block_bytes: int = Field(default=256 * 2**20, ge=1)
    # (tenant, token) pairs, tokens kept secret (out of repr and logs)
    _tenant_tokens: list[tuple[str, SecretStr]] = PrivateAttr(default_factory=list)

    @field_validator("scheduler", "s3_endpoint", "tls_ca_file", "tls_cert_file",
                     "tls_key_file", "max_queued_jobs_per_tenant",
                     "max_running_jobs_per_tenant", "metrics_token", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("data_roots", mode="before")
    @classmethod
    def _parse_roots(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("data_roots")
    @classmethod
    def _normalize_roots(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one data root is needed")
        return [_normalize_root(root) for root in value]

    @field_validator("results_root")
    @classmethod
    def _normalize_results(cls, value: str) -> str:
        return _normalize_root(value)

    @field_validator("uploads_root")
    @classmethod
    def _normalize_uploads(cls, value: str) -> str:
        root = _normalize_root(value)
        if root.startswith("s3://"):
            raise ValueError(f"{value!r}: the uploads root must be a local directory")
        return root

    @field_validator("database")
    @classmethod
    def _normalize_database(cls, value: str) -> str:
        return os.path.realpath(os.path.expanduser(value))

    @model_validator(mode="after")
    def _parse_tokens(self) -> Settings:
        # Parsed (and the tokens file read) once; raises ValueError on a malformed entry.
        self._tenant_tokens = [(tenant, SecretStr(token)) for tenant, token
                               in _tenant_tokens(self.tokens, self.tokens_file)]
        return self

    @model_validator(mode="after")
    def _check_tls(self) -> Settings:
        files = (self.tls_ca_file, self.tls_cert_file, self.tls_key_file)
        if any(f is not None for f in files) and not all(f is not None for f in files):
            raise ValueError("SVDSERVE_TLS_CA_FILE, SVDSERVE_TLS_CERT_FILE and "
                             "SVDSERVE_TLS_KEY_FILE go together: set all three or none")
        if self.scheduler and any(files) and not self.scheduler.startswith("tls://"):
            raise ValueError("with TLS files set, SVDSERVE_SCHEDULER must be a tls:// address")
        return self

    @model_validator(mode="after")
    def _check_upload_blocks(self) -> Settings:
        if self.upload_block_bytes > self.upload_max_block_bytes:
            raise ValueError(
                f"SVDSERVE_UPLOAD_BLOCK_BYTES ({self.upload_block_bytes}) exceeds "
                f"SVDSERVE_UPLOAD_MAX_BLOCK_BYTES ({self.upload_max_block_bytes}): the default "
                "block would be refused; lower the first or raise the second")
        return self

    # ------------------------------------------------------------------ derived
    def tenant_tokens(self) -> list[tuple[str, str]]:
        """``(tenant, token)`` pairs from :attr:`tokens` and :attr:`tokens_file`,
        as parsed when the settings were validated."""
        return [(tenant, token.get_secret_value()) for tenant, token in self._tenant_tokens]

    @property
    def auth_enabled(self) -> bool:
        return bool(self._tenant_tokens)

    def fs_options(self) -> dict[str, Any]:
        """fsspec options for ``s3://`` data and results."""
        options = dict(self.storage_options)
        if self.s3_endpoint:
            options.setdefault("endpoint_url", self.s3_endpoint)
        return options

    def execution(self) -> Execution:
        """How the core runs each job (:class:`svdserve.worker.Execution`)."""
        return Execution(panel_bytes=self.panel_bytes, panel_cache=self.panel_cache,
                         memory_fraction=self.memory_fraction, reader=self.reader,
                         no_workers_timeout=self.no_workers_timeout,
                         task_deadline=self.task_deadline,
                         task_deadline_factor=self.task_deadline_factor)

    def limits(self) -> Limits:
        """The sanity limits on sources (:class:`svdserve.worker.Limits`)."""
        return Limits(max_chunks=self.max_chunks, max_panels=self.max_panels,
                      max_band_bytes=self.max_band_bytes, max_nnz=self.max_nnz)


def _tenant_tokens(tokens: SecretStr | None, tokens_file: Path | None) -> list[tuple[str, str]]:
    """Parse ``tenant:token`` entries from the comma-separated list and the file."""
    entries: list[str] = []
    if tokens is not None:
        entries += [e for e in tokens.get_secret_value().split(",") if e.strip()]
    if tokens_file is not None:
        for line in Path(tokens_file).read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                entries.append(line)
    pairs = []
    for entry in entries:
        tenant, sep, token = entry.strip().partition(":")
        if not sep or not token or not TENANT_PATTERN.match(tenant):
            raise ValueError(
                "tokens must be 'tenant:token' entries with tenant names of letters, "
                "digits, '_', '.', '-' (the token itself is not shown here)")
        pairs.append((tenant, token))
    return pairs
