"""Prometheus metrics of one service instance (own registry per app).

========================================  =========  ==========================================
name                                      type       meaning
========================================  =========  ==========================================
``svdserve_jobs{state}``                  gauge      jobs in the store, by state
``svdserve_jobs_submitted_total``         counter    jobs accepted by ``POST /v1/jobs``
``svdserve_jobs_finished_total{state}``   counter    jobs that reached a final state
``svdserve_job_duration_seconds{state}``  histogram  start to finish of each attempt that ended
``svdserve_job_queue_seconds``            histogram  time jobs waited in the queue
``svdserve_panels_processed_total``       counter    panels processed (all jobs, all passes)
``svdserve_cluster_workers``              gauge      Dask workers seen by the last readiness probe
========================================  =========  ==========================================
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

__all__ = ["Metrics", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600,
                     float("inf"))


class _JobsByState:
    def __init__(self, counts: Callable[[], dict[str, int]]):
        self.counts = counts

    def collect(self):
        family = GaugeMetricFamily("svdserve_jobs", "Jobs in the store by state",
                                   labels=["state"])
        for state, n in self.counts().items():
            family.add_metric([state], n)
        yield family


class Metrics:
    """The service's metrics.

    Parameters
    ----------
    counts : callable
        Returns ``{state: number of jobs}`` (read from the store at scrape time).
    """

    def __init__(self, counts: Callable[[], dict[str, int]]):
        self.registry = CollectorRegistry()
        self.registry.register(_JobsByState(counts))
        r = self.registry
        self.submitted = Counter("svdserve_jobs_submitted", "Jobs accepted", registry=r)
        self.finished = Counter("svdserve_jobs_finished", "Jobs that reached a final state",
                                ["state"], registry=r)
        self.duration = Histogram("svdserve_job_duration_seconds",
                                  "Run time of job attempts, start to final state", ["state"],
                                  buckets=_DURATION_BUCKETS, registry=r)
        self.queue_wait = Histogram("svdserve_job_queue_seconds",
                                    "Time jobs waited in the queue", buckets=_DURATION_BUCKETS,
                                    registry=r)
        self.panels = Counter("svdserve_panels_processed", "Panels processed", registry=r)
        self.workers = Gauge("svdserve_cluster_workers", "Dask workers at the last probe",
                             registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
