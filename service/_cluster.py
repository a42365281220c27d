"""The Dask cluster behind the service: embedded ``LocalCluster`` or a scheduler address.

- No ``SVDSERVE_SCHEDULER``: a ``LocalCluster`` (worker processes by
  default) is started in the app's lifespan and closed with it. It is built
  in a thread so its scheduler runs on Dask's own event loop, not on the
  loop that serves HTTP.
- ``SVDSERVE_SCHEDULER=tcp://host:8786``: the service connects, retrying in
  the background until the scheduler answers; ``/v1/ready`` says 503 and no
  job starts until then.

The embedded cluster admits only the service: its scheduler and workers
listen on ``tls://`` with a temporary self-signed certificate
(``distributed.security.Security.temporary()``, kept in memory) and require
it of every client, so another local process cannot connect and run code on
the workers. An external scheduler is reached over TLS when
``SVDSERVE_TLS_CA_FILE``/``_CERT_FILE``/``_KEY_FILE`` are set.

Two clients share the scheduler: an asynchronous one on the service's loop
(readiness probes) and a synchronous one used by the job threads, since
:func:`svdserve.worker.svd` blocks.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging

from distributed import Client, LocalCluster
from distributed.security import Security

from svdserve.worker import smallest_memory_limit

from ._settings import Settings

__all__ = ["Cluster"]

log = logging.getLogger("svdserve.service")

#: Client states in which work can still be submitted (``connecting``: it is
#: retrying the scheduler, and will either succeed or close).
_USABLE = ("newly-created", "connecting", "running")


class Cluster:
    """Connection to the scheduler (and the embedded cluster, if any).

    Parameters
    ----------
    settings : Settings
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self.address: str = settings.scheduler or ""
        self.local: LocalCluster | None = None
        self.aclient: Client | None = None
        self.sync_client: Client | None = None
        self.connected = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.security: Security | None = None
        s = settings
        if s.scheduler is not None and s.tls_ca_file is not None:
            self.security = Security(tls_ca_file=str(s.tls_ca_file),
                                     tls_client_cert=str(s.tls_cert_file),
                                     tls_client_key=str(s.tls_key_file),
                                     require_encryption=True)

    @property
    def embedded(self) -> bool:
        return self.settings.scheduler is None

    async def start(self) -> None:
        """Start the embedded cluster (and wait for it), or start connecting."""
        if self.embedded:
            s = self.settings
            # TLS with a certificate only this process holds: no other local
            # process can join as a client and run code on the workers.
            self.security = await asyncio.to_thread(Security.temporary)
            self.local = await asyncio.to_thread(
                LocalCluster, n_workers=s.n_workers, threads_per_worker=s.threads_per_worker,
                processes=s.worker_processes, dashboard_address=None,
                security=self.security, protocol="tls://", host="127.0.0.1",
                # the scheduler's own HTTP endpoints: loopback, any free port; with
                # the dashboard when bokeh is installed (the pages link it)
                scheduler_kwargs={"dashboard_address": "127.0.0.1:0",
                                  "dashboard": importlib.util.find_spec("bokeh") is not None},
                silence_logs=logging.WARNING)
            self.address = self.local.scheduler_address
            log.info("embedded Dask cluster at %s with %d workers", self.address, s.n_workers)
            await self._connect()
        else:
            self._task = asyncio.create_task(self._connect_forever())
            try:  # usually the scheduler is up: start connected
                await asyncio.wait_for(self.connected.wait(), self.settings.connect_timeout)
            except TimeoutError:
                log.warning("starting without the Dask scheduler %s; still trying",
                            self.address)

    async def _connect(self) -> None:
        timeout = self.settings.connect_timeout
        self.aclient = await Client(self.address, asynchronous=True, timeout=timeout,
                                    set_as_default=False, security=self.security)
        self.sync_client = await asyncio.to_thread(
            Client, self.address, timeout=timeout, set_as_default=False,
            security=self.security)
        self.connected.set()

    async def _connect_forever(self) -> None:
        delay = 1.0
        while True:
            try:
                await self._connect()
                log.info("connected to the Dask scheduler at %s", self.address)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep trying
                log.warning("Dask scheduler %s not reachable (%s); retrying in %.0f s",
                            self.address, exc, delay)
                await self._close_clients()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def check(self) -> None:
        """Reconnect in the background if a client gave up on the scheduler.

        A ``distributed.Client`` whose scheduler vanished retries for its
        connect timeout and then closes for good; a closed client is replaced
        as soon as a scheduler answers at the address again.
        """
        if not self.connected.is_set() or (self._task is not None and not self._task.done()):
            return
        clients = (self.sync_client, self.aclient)
        if all(c is not None and c.status in _USABLE for c in clients):
            return
        log.warning("lost the Dask scheduler at %s; reconnecting in the background",
                    self.address)
        self.connected.clear()
        await self._close_clients()
        self._task = asyncio.create_task(self._connect_forever())

    async def probe(self, timeout: float = 2.0) -> tuple[bool, int]:
        """``(scheduler reachable, number of workers)``."""
        await self.check()
        if not self.connected.is_set() or self.aclient is None:
            return False, 0
        try:
            ident = await asyncio.wait_for(self.aclient.scheduler.identity(), timeout)
        except Exception:  # noqa: BLE001 - unreachable, whatever the reason
            log.warning("scheduler probe failed", exc_info=True)
            return False, 0
        return True, len(ident.get("workers", {}))

    async def worker_memory(self, timeout: float = 2.0) -> int | None:
        """The smallest worker memory limit in bytes; None if unknown or unlimited."""
        if not self.connected.is_set() or self.aclient is None:
            return None
        try:
            ident = await asyncio.wait_for(self.aclient.scheduler.identity(), timeout)
        except Exception:  # noqa: BLE001 - the job is checked again when it runs
            return None
        return smallest_memory_limit(ident.get("workers", {}))

    async def _close_clients(self) -> None:
        if self.sync_client is not None:
            client, self.sync_client = self.sync_client, None
            await asyncio.to_thread(_quiet_close, client)
        if self.aclient is not None:
            client, self.aclient = self.aclient, None
            try:
                await asyncio.wait_for(client.close(), 10)
            except Exception:  # noqa: BLE001
                pass

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        self.connected.clear()
        await self._close_clients()
        if self.local is not None:
            cluster, self.local = self.local, None
            await asyncio.to_thread(_quiet_close, cluster)


def _quiet_close(obj) -> None:
    try:
        obj.close()
    except Exception:  # noqa: BLE001 - shutting down anyway
        log.debug("error while closing %r", obj, exc_info=True)
