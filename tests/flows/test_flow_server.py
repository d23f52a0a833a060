"""Against a real `prefect server start` on 127.0.0.1: the work-pool executor (a process worker runs one
`train-fold` flow per fold, artifacts go through shared storage) gives the same OOF as a local run, and a
`foldstack.data.changed` event from `watch-data` creates a `retrain` flow run.

Both start processes (server, worker) and stop them, bounded in time.
"""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import contextlib  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from prefect import get_client  # noqa: E402
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId  # noqa: E402
from prefect.settings import PREFECT_API_URL, temporary_settings  # noqa: E402

from flows.deploy import retrain_deployment  # noqa: E402
from flows.train_ensemble import train_ensemble  # noqa: E402
from flows.watch_data import watch_data  # noqa: E402
from foldstack.config import load_config  # noqa: E402
from foldstack.common.files import load_array  # noqa: E402
from foldstack.pipeline.stages import Layout, run_pipeline  # noqa: E402
from tests.conftest import write_params  # noqa: E402
from tests.flows.prefect_workers import drain_prefect_workers  # noqa: E402
from tests.paths import REPO_ROOT

START_TIMEOUT_S = 120
POOL = "foldstack-test-pool"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prefect_env(home: Path, api_url: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_LOGGING_LEVEL="WARNING",
               PREFECT_UI_ENABLED="false", PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_PREFETCH_SECONDS="1",
               OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the process group, SIGKILL what is left after 15 s."""
    for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        if process.poll() is not None:
            break
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # children (flow-run subprocesses) of a stopped leader


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    log = (home / "server.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=_prefect_env(home), stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert server.poll() is None, (home / "server.log").read_text()[-3000:]
            try:
                if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the Prefect server did not start in time"
            time.sleep(0.5)
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            yield api_url
    finally:
        drain_prefect_workers()  # while the server still answers: later modules start their own
        _stop(server)
        log.close()


@pytest.mark.slow
def test_workpool_executor_gives_the_same_oof_as_a_local_run(prefect_server, tmp_path, demo_csv):
    local = tmp_path / "local"
    local.mkdir()
    models = [{"name": "tfidf_lr", "kind": "tfidf_lr"}]
    local_cfg = load_config(write_params(local, demo_csv, base_models=models, folds={"k": 2},
                                         registry={"git_registry": False}))
    run_pipeline(local_cfg)

    shared = tmp_path / "shared"  # what S3 would be: the only place the parent and the workers share
    params = write_params(tmp_path, demo_csv, base_models=models, folds={"k": 2}, registry={"git_registry": False},
                          runtime={"executor": {"kind": "workpool", "work_pool": POOL,
                                                "shared_storage": shared.as_uri()}})
    worker_log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--type",
                               "process", "--limit", "2"], cwd=REPO_ROOT, env=_prefect_env(tmp_path, prefect_server),
                              stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        result = train_ensemble(params=str(params))
    finally:
        _stop(worker)
        worker_log.close()
    assert (result["trained"], result["reused"]) == (2, 0), (tmp_path / "worker.log").read_text()[-3000:]
    cfg = load_config(params)
    np.testing.assert_array_equal(load_array(Layout.of(cfg).base("tfidf_lr") / "oof.npy"),
                                  load_array(Layout.of(local_cfg).base("tfidf_lr") / "oof.npy"))
    assert len(list(shared.glob("folds/tfidf_lr/*/COMPLETE"))) == 2  # each fold went through shared storage

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(
            id=DeploymentFilterId(any_=[client.read_deployment_by_name("train-fold/train-fold").id])))
    assert sorted(r.name for r in runs) == ["train tfidf_lr r0-k0", "train tfidf_lr r0-k1"]
    assert all(r.state.is_completed() for r in runs)


@pytest.mark.slow
def test_a_data_change_event_creates_a_retrain_run(prefect_server, tmp_path, demo_csv):
    params = write_params(tmp_path, demo_csv)
    deployment_id = retrain_deployment(params).apply()
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment(deployment_id)
    assert deployment.global_concurrency_limit.limit == 1  # a trigger during a run queues, never runs two
    assert deployment.concurrency_options.collision_strategy == "ENQUEUE"

    announced = watch_data(params=str(params))  # never trained: the data counts as changed
    assert announced["changed"] and announced["emitted"]
    assert not watch_data(params=str(params))["emitted"]  # announced once, not on every tick

    deadline = time.monotonic() + 90
    with get_client(sync_client=True) as client:
        # Not the cron's runs: the server's scheduler makes those for the same deployment at any moment.
        while not (runs := [run for run in client.read_flow_runs(deployment_filter=DeploymentFilter(
                id=DeploymentFilterId(any_=[deployment_id]))) if not run.auto_scheduled]):
            assert time.monotonic() < deadline, "no retrain flow run was created by the event"
            time.sleep(1)
    assert len(runs) == 1
    assert runs[0].parameters["params"] == str(params.resolve())
