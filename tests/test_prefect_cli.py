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

import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402
import pytest  # noqa: E402

from tests.conftest import write_params  # noqa: E402
from tests.test_flow_server import REPO_ROOT, START_TIMEOUT_S, _free_port, _prefect_env, _stop  # noqa: E402

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; POSIX signals")

FOLDSTACK = [sys.executable, "-m", "foldstack.cli"]
# The scheduler services loop every few seconds instead of every 60 (main) and 5 (recently changed deployments).
FAST_SCHEDULER = {"PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
                  "PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS": "1"}
# `foldstack serve`'s runner looks for due runs every second instead of every 10.
FAST_RUNNER = {"PREFECT_RUNNER_POLL_FREQUENCY": "1"}
TINY_MODELS = [{"name": "tfidf_lr", "kind": "tfidf_lr"}]


def _alive(pid: int) -> bool:
    """Running (a zombie nobody reaped yet counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


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
    with foldstack_server(tmp_path) as (server, api_url):
        tree = _descendants(server.pid)
        assert tree, "foldstack server started no Prefect server process"
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=30)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in tree) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in tree if _alive(p)], "the Prefect server outlived `foldstack server`"
        assert not _healthy(api_url)
    assert code == 0, (tmp_path / "server.log").read_text(errors="replace")[-3000:]
