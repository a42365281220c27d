"""Fakes of the client tests: the service's job JSON.

Reference SVDs and fake result stores (built with the worker's own
``ResultWriter`` and ``energy_report``) are in the shared kit, ``tests/_check.py``.
"""

from __future__ import annotations


def job_json(job_id="j1", state="succeeded", *, result_url=None, shape=(10, 4), rank=2,
             progress=None, error=None):
    """A JobPublic dict as the service sends it."""
    return {
        "id": job_id, "state": state,
        "created_at": "2026-01-01T00:00:00Z", "started_at": None, "finished_at": None,
        "updated_at": "2026-01-01T00:00:00Z", "attempt": 1,
        "request": {"source": {"url": "/data/A.zarr", "array": None}, "rank": rank,
                    "method": "auto", "n_oversamples": 10, "n_iter": 2, "center": False,
                    "random_state": 0},
        "progress": progress, "error": error, "notes": [],
        "result": None if result_url is None else {
            "url": result_url, "http": f"/v1/jobs/{job_id}/result",
            "shape": list(shape), "rank": rank, "method": "exact"},
        "links": {"self": f"/v1/jobs/{job_id}", "report": f"/v1/jobs/{job_id}/report",
                  "result": f"/v1/jobs/{job_id}/result", "cancel": f"/v1/jobs/{job_id}/cancel"},
    }
