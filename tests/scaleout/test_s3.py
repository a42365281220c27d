"""Sources and results on S3: a real S3-protocol server (moto, server mode) on loopback.

The compose file's ``s3`` service (MinIO, profile ``s3``) is played by moto
on the port the topology maps ``s3:9000`` to; the ``s3-init`` service's own
command creates the bucket. Scheduler, 2 workers and the API run as
processes from docker-compose.yml, configured only through the variables a
user would put in ``.env`` (README, "Object storage"):

    SVDSERVE_DATA_ROOTS=s3://svdserve/data
    SVDSERVE_RESULTS_ROOT=s3://svdserve/results
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from distributed import Client as DaskClient

from svdserve import _manifest
from svdserve.client import Client
from svdserve.worker import load, svd

from ._helpers import (
    PANEL_BYTES,
    api_url,
    check_factors,
    make_matrix,
    make_topology,
    scheduler_address,
    start_services,
)

pytestmark = pytest.mark.slow

K = 4
BUCKET = "svdserve"
VARIABLES = {
    "SVDSERVE_DATA_ROOTS": f"s3://{BUCKET}/data",
    "SVDSERVE_RESULTS_ROOT": f"s3://{BUCKET}/results",
    "SVDSERVE_PANEL_BYTES": str(PANEL_BYTES),
}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto on the loopback port of the compose ``s3`` service, and a host's storage options."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    # the port map is fixed when the compose file is read: moto takes the s3 service's port
    topo = make_topology(tmp_path_factory.mktemp("s3-topology"), VARIABLES)
    port = topo.host_port(9000)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        env = topo.environment("s3-init")
        so = {"key": env["SVDSERVE_S3_KEY"], "secret": env["SVDSERVE_S3_SECRET"],
              "endpoint_url": env["SVDSERVE_S3_ENDPOINT"]}
        assert so["endpoint_url"] == f"http://127.0.0.1:{port}"
        yield {"topology": topo, "so": so}
    finally:
        topo.close()
        server.stop()


def test_s3_init_service_creates_the_bucket(s3):
    import s3fs

    topo = s3["topology"]
    for _ in range(2):  # idempotent: a second `up` finds the bucket
        done = topo.run("s3-init", timeout=60)
        assert done.returncode == 0, done.stderr
        assert f"bucket '{BUCKET}' ready" in done.stdout
    fs = s3fs.S3FileSystem(**s3["so"], skip_instance_cache=True)
    assert fs.exists(BUCKET)


@pytest.fixture(scope="module")
def topo(s3):
    """Scheduler, 2 workers and the API of the S3 set-up (bucket made by ``s3-init``)."""
    topo = s3["topology"]
    if not _bucket_exists(s3["so"]):
        done = topo.run("s3-init", timeout=60)
        assert done.returncode == 0, done.stderr
    return start_services(topo, workers=2)


def _bucket_exists(so) -> bool:
    import s3fs

    return s3fs.S3FileSystem(**so, skip_instance_cache=True).exists(BUCKET)


def test_core_reads_and_writes_s3_on_worker_processes(s3, topo):
    """`svd("s3://...")` on the compose cluster: workers read panels from and write U to S3."""
    so = s3["so"]
    A = make_matrix(3_000, 24, seed=3)
    with Client(api_url(topo), storage_options=so) as client:
        src = client.upload(A, f"s3://{BUCKET}/data/core.zarr", chunks=500)
    out = f"s3://{BUCKET}/results/core-direct/result.zarr"
    with DaskClient(scheduler_address(topo), timeout=30, set_as_default=False) as dc:
        res = svd(src, K, method="exact", client=dc, storage_options=so, out=out,
                  panel_bytes=PANEL_BYTES)
    assert res.url == out and res.passes == 2
    back = load(out, storage_options=so)
    check_factors(A, back.U[...], back.S, back.Vt[...], K)


def test_job_on_s3_through_the_service(s3, topo):
    """Upload with the client, a job reading from and writing to the bucket, factors back."""
    import s3fs

    so = s3["so"]
    A = make_matrix(6_000, 30, seed=4)
    with Client(api_url(topo), storage_options=so) as client:
        url = client.upload(A, f"s3://{BUCKET}/data/A.zarr", chunks=1_000)
        assert url == f"s3://{BUCKET}/data/A.zarr"
        job = client.submit(url, rank=K)
        res = job.result(timeout=120)
        assert job.state == "succeeded", job.error
        result_url = job["result"]["url"]
        assert result_url.startswith(f"s3://{BUCKET}/results/"), result_url
        check_factors(A, res.U, res.S, res.Vt, K)
    fs = s3fs.S3FileSystem(**so, skip_instance_cache=True)
    assert _manifest.exists(fs, result_url)
    assert fs.exists(result_url + "/U/zarr.json")
    # the same factors over HTTP, for a host without S3 credentials
    with Client(api_url(topo), result_access="http") as remote:
        over_http = remote.get(job.id).result(timeout=30)
        np.testing.assert_array_equal(np.asarray(over_http.S), np.asarray(res.S))
        check_factors(A, over_http.U, over_http.S, over_http.Vt, K)


def test_source_outside_the_configured_bucket_prefix_is_refused(s3, topo):
    from svdserve.client import Forbidden

    with Client(api_url(topo), storage_options=s3["so"]) as client:
        with pytest.raises(Forbidden):
            client.submit(f"s3://{BUCKET}/results/core-direct/result.zarr", rank=1,
                          array="U")
