"""`foldstack server` and `foldstack serve` as subprocesses against a real Prefect server on 127.0.0.1.

* `foldstack server` stops the Prefect server it started when it is itself stopped (SIGTERM), leaving no
  process behind;
* the `retrain` deployment that `foldstack serve` registers runs on its cron: the server's scheduler creates
  the runs (what failed with SQLAlchemy 2.1, see pyproject.toml) and the runner served by `foldstack serve`
  runs one to completion;
* `watch-data`, served beside it, emits `foldstack.data.changed`, the trigger creates a `retrain` run, and a
  second event during that run queues a run (one at a time) instead of starting it.

Every wait is bounded; every process is stopped in a `finally`.
"""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import asyncio  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402
import pytest  # noqa: E402
from prefect import get_client  # noqa: E402
from prefect.client.orchestration import SyncPrefectClient  # noqa: E402
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId  # noqa: E402
from prefect.client.schemas.objects import Deployment, FlowRun  # noqa: E402
from prefect.events import Event  # noqa: E402
from prefect.events.clients import get_events_client  # noqa: E402
from prefect.exceptions import ObjectNotFound  # noqa: E402
from prefect.settings import PREFECT_API_URL, temporary_settings  # noqa: E402

from flows.watch_data import DATA_CHANGED_EVENT, data_resource_id  # noqa: E402
from foldstack.config import load_config  # noqa: E402
from foldstack.common.files import read_json  # noqa: E402
from foldstack.pipeline.stages import Layout  # noqa: E402
from tests.conftest import write_params  # noqa: E402
from tests.processes import alive  # noqa: E402
from tests.flows.test_flow_server import REPO_ROOT, START_TIMEOUT_S, _free_port, _prefect_env, _stop  # noqa: E402

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; POSIX signals")]

FOLDSTACK = [sys.executable, "-m", "foldstack.cli"]
RETRAIN = "train-ensemble/retrain"
# The server: the scheduler services loop every few seconds instead of every 60 (main) and 5 (recently changed
# deployments); a run refused for the concurrency limit is retried after 2 s instead of 30.
FAST_SERVER = {"PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
               "PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS": "1",
               "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "2"}
# `foldstack serve`'s runner looks for due runs every second instead of every 10.
FAST_RUNNER = {"PREFECT_RUNNER_POLL_FREQUENCY": "1"}
# A retrain in seconds: one cheap model, two folds, no git registry, no Great Expectations gate (~10 s here).
TINY = {"base_models": [{"name": "tfidf_lr", "kind": "tfidf_lr"}], "folds": {"k": 2},
        "registry": {"git_registry": False}, "validation": {"enabled": False}}


def _descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _wait_for(what: str, check: Callable[[], Any], timeout_s: float, interval_s: float = 0.5,
              log: Path | None = None) -> Any:
    """`check()`'s first truthy value, polled until `timeout_s`; fails with `what` (and the log's tail)."""
    deadline = time.monotonic() + timeout_s
    while not (value := check()):
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log and log.is_file() else ""
            pytest.fail(f"{what} (waited {timeout_s:.0f} s){chr(10) + tail if tail else ''}")
        time.sleep(interval_s)
    return value


def _healthy(api_url: str) -> bool:
    try:
        return httpx.get(f"{api_url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def _process(command: list[str], log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """A subprocess in its own process group, output to `log`; stopped (its whole group) at the end."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            yield process
        finally:
            _stop(process)


@contextmanager
def foldstack_server(home: Path, extra_env: dict[str, str] | None = None) -> Iterator[tuple[subprocess.Popen, str]]:
    """`foldstack server` on a free port, state in `home`; yields (its process, the API URL) once it answers."""
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    log = home / "server.log"
    with _process([*FOLDSTACK, "server", "--port", str(port)], log, {**_prefect_env(home), **(extra_env or {})}) \
            as server:
        _wait_for("the Prefect server did not answer", lambda: server.poll() is not None or _healthy(api_url),
                  START_TIMEOUT_S, log=log)
        assert server.poll() is None, log.read_text(errors="replace")[-3000:]
        yield server, api_url


def test_foldstack_server_stops_the_prefect_server_on_sigterm(tmp_path):
    tree: list[int] = []
    try:
        with foldstack_server(tmp_path) as (server, api_url):
            tree = _descendants(server.pid)
            assert tree, "foldstack server started no Prefect server process"
            server.send_signal(signal.SIGTERM)
            code = server.wait(timeout=30)
            deadline = time.monotonic() + 10
            while any(alive(p) for p in tree) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not [p for p in tree if alive(p)], "the Prefect server outlived `foldstack server`"
            assert not _healthy(api_url)
        assert code == 0, (tmp_path / "server.log").read_text(errors="replace")[-3000:]
    finally:  # the server runs in a process group of its own: what outlived it is not in the one stopped above
        for pid in tree:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@contextmanager
def foldstack_serve(tmp_path: Path, params: Path, api_url: str) -> Iterator[Path]:
    """`foldstack serve -p params` against `api_url` (from the repository root, as a user runs it); yields its log."""
    log = tmp_path / "serve.log"
    env = {**_prefect_env(tmp_path / "prefect-client", api_url), **FAST_RUNNER}
    with _process([*FOLDSTACK, "serve", "--params", str(params)], log, env) as serve:
        yield log
        assert serve.poll() is None, f"foldstack serve exited: {log.read_text(errors='replace')[-3000:]}"


@dataclass
class Served:
    client: SyncPrefectClient  # of the server
    retrain: Deployment  # as `foldstack serve` registered it
    serve_log: Path
    server_log: Path

    def runs(self) -> list[FlowRun]:
        """The retrain runs, oldest first; a run that failed or crashed fails the test, with the serve log."""
        runs = self.client.read_flow_runs(deployment_filter=DeploymentFilter(
            id=DeploymentFilterId(any_=[self.retrain.id])))
        for run in runs:
            if run.state and run.state.is_final() and not run.state.is_completed():
                pytest.fail(f"retrain run {run.name} ended {run.state.name}: {run.state.message}\n"
                            f"{self.serve_log.read_text(errors='replace')[-3000:]}")
        return sorted(runs, key=lambda run: run.created)


@contextmanager
def served(tmp_path: Path, params: Path) -> Iterator[Served]:
    """A `foldstack server`, a `foldstack serve` of `params` against it, and a client of that server."""
    with foldstack_server(tmp_path / "prefect-server", FAST_SERVER) as (_, api_url), \
            foldstack_serve(tmp_path, params, api_url) as serve_log, \
            temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:

        def retrain() -> Deployment | None:
            try:
                return client.read_deployment_by_name(RETRAIN)
            except ObjectNotFound:
                return None

        deployment = _wait_for("foldstack serve registered no retrain deployment", retrain, 120, log=serve_log)
        yield Served(client, deployment, serve_log, tmp_path / "prefect-server" / "server.log")


def _assert_retrained_by(cfg_params: Path, run: FlowRun) -> None:
    """The run trained the project: a bundle, metrics, and the train flow's own record of it."""
    cfg = load_config(cfg_params)
    layout = Layout.of(cfg)
    assert (layout.eval / "metrics.json").is_file()
    assert layout.bundle.is_dir()
    assert read_json(layout.root / "flow" / "last_success.json")["flow_run_id"] == str(run.id)


def test_the_retrain_cron_makes_scheduled_runs_and_one_of_them_retrains(tmp_path, demo_csv):
    # watch-data (served too) every hour: within the test only the cron makes retrain runs.
    params = write_params(tmp_path, demo_csv, **TINY,
                          runtime={"retrain_cron": "* * * * *", "watch_interval_seconds": 3600})
    with served(tmp_path, params) as it:
        assert [s.schedule.cron for s in it.retrain.schedules] == ["* * * * *"]
        # The scheduler service (what SQLAlchemy 2.1 broke) fills in the next runs, one a minute.
        scheduled = _wait_for("the scheduler created no runs for the retrain cron",
                              lambda: [r for r in it.runs() if r.auto_scheduled], 30, log=it.server_log)
        assert all(r.parameters == {"params": str(params.resolve())} for r in scheduled)
        times = sorted(r.expected_start_time for r in scheduled)
        assert all(t.second == 0 and t.microsecond == 0 for t in times)  # on the minute
        assert len(times) >= 2 and (times[1] - times[0]).total_seconds() == 60
        # The first comes due within a minute; the runner of `foldstack serve` runs it.
        completed = _wait_for("no scheduled retrain run completed",
                              lambda: [r for r in it.runs() if r.auto_scheduled and r.state.is_completed()],
                              150, 1, log=it.serve_log)
    assert len(completed) == 1
    _assert_retrained_by(params, completed[0])


def _emit(event: Event) -> None:
    async def send() -> None:
        async with get_events_client() as events:
            await events.emit(event)

    asyncio.run(send())


def test_a_data_change_triggers_one_retrain_and_a_second_one_waits_for_it(tmp_path, demo_csv):
    # watch-data every 10 s; the retrain cron (weekly) makes no run due within the test.
    params = write_params(tmp_path, demo_csv, **TINY, runtime={"watch_interval_seconds": 10})
    cfg = load_config(params)
    with served(tmp_path, params) as it:
        client = it.client
        assert it.retrain.global_concurrency_limit.limit == 1
        # watch-data, served beside retrain, finds data no run has trained on and emits the event once.
        triggered = lambda: [r for r in it.runs() if not r.auto_scheduled]  # noqa: E731
        (first,) = _wait_for("the data-change event created no retrain run", triggered, 90, log=it.serve_log)
        assert first.parameters == {"params": str(params.resolve())}
        first = _wait_for("the triggered retrain did not start",
                          lambda: (run := client.read_flow_run(first.id)).state.is_running() and run, 60, 0.2,
                          log=it.serve_log)
        # A second change while it runs: its run must wait for the first one's slot, not run beside it.
        _emit(Event(event=DATA_CHANGED_EVENT, resource={"prefect.resource.id": data_resource_id(cfg)},
                    payload={"hash": "a later change"}))
        second = _wait_for("the second event created no run", lambda: (runs := triggered())[1:] and runs[1], 30, 0.2)
        queued = _wait_for("the second run was never refused a slot (AwaitingConcurrencySlot)",
                           lambda: [s for s in client.read_flow_run_states(second.id)
                                    if s.name == "AwaitingConcurrencySlot"], 60, 0.2, log=it.serve_log)
        # When the first one is done, the queued one gets the slot and retrains too: one at a time.
        _wait_for("the queued retrain did not complete", lambda: client.read_flow_run(second.id).state.is_completed(),
                  120, 1, log=it.serve_log)
        first, second = client.read_flow_run(first.id), client.read_flow_run(second.id)
        assert len(triggered()) == 2  # one run per event
    assert first.state.is_completed()
    assert queued[0].timestamp < first.end_time <= second.start_time  # refused while the first ran, then ran
    _assert_retrained_by(params, second)
