"""Faults: the flow killed with SIGKILL at named points, then rerun; W&B unreachable while a run registers.

After each kill the rerun must redo only the unfinished work, give metrics identical to an uninterrupted
run, and leave a registry with no tag that lacks its bytes. (A kill in the middle of the fold tasks is
tests/flows/test_flow_resume.py; concurrent pushes are tests/integration/test_registry_concurrency.py.)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from foldstack.config import load_config
from foldstack.common.faults import FAILPOINT_ENV
from foldstack.common.files import read_json
from foldstack.pipeline.stages import Layout, run_pipeline
from tests.conftest import write_params

FLOW_TIMEOUT_S = 300
CLI = [sys.executable, "-m", "foldstack.cli"]


def _env(project: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "WANDB_"))}
    env.update({"PREFECT_HOME": str(project / ".prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "COLUMNS": "200", **extra})
    return env


def _git_project(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for args in (["init", "-q"], ["config", "user.name", "foldstack tests"],
                 ["config", "user.email", "tests@foldstack.invalid"], ["commit", "-q", "--allow-empty", "-m", "init"]):
        subprocess.run(["git", *args], cwd=directory, check=True)
    return directory


def _flow(project: Path, params: Path, **env: str) -> subprocess.CompletedProcess:
    proc = subprocess.Popen([sys.executable, "-m", "flows.train", "--params", str(params)], cwd=project,
                            env=_env(project, **env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=FLOW_TIMEOUT_S)
    finally:
        with contextlib.suppress(ProcessLookupError):  # whatever a kill left behind (fit processes)
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _registry(project: Path, params: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + ["registry", *args, "--params", str(params)], cwd=project, env=_env(project),
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def reference_metrics(tmp_path_factory, demo_csv) -> dict[str, float]:
    """The metrics of an uninterrupted run of the same params and data."""
    directory = tmp_path_factory.mktemp("reference")
    cfg = load_config(write_params(directory, demo_csv, registry={"git_registry": False}))
    run_pipeline(cfg)
    return read_json(Layout.of(cfg).eval / "metrics.json")


@pytest.mark.slow
@pytest.mark.parametrize("point", ["folds-written", "registry-bytes-stored"])
def test_a_flow_killed_at_a_failpoint_reruns_to_the_same_result(tmp_path, demo_csv, reference_metrics, point):
    project = _git_project(tmp_path / "project")
    params = write_params(project, demo_csv, tracking={"mode": "disabled"})
    layout = Layout.of(load_config(params))

    killed = _flow(project, params, **{FAILPOINT_ENV: point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    tags = subprocess.run(["git", "tag"], cwd=project, capture_output=True, text=True, check=True).stdout
    assert "foldstack-ensemble@" not in tags, "a killed run made a version tag"
    if point == "folds-written":
        assert (layout.folds / "folds.json").is_file() and not list(layout.root.glob("base/*/fold-*"))
    else:  # the bytes are stored, the tag (the commit point) is not made
        assert [p.name for p in (project / ".foldstack/registry/foldstack-ensemble").iterdir()
                if p.name.startswith("v")] == ["v0.1.0"]

    rerun = _flow(project, params)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    result = json.loads(rerun.stdout)
    # Only the unfinished work is redone: after the folds every fold task; after the bytes, none.
    assert (result["trained"], result["reused"]) == ((6, 0) if point == "folds-written" else (0, 6))
    metrics = read_json(layout.eval / "metrics.json")
    assert metrics == reference_metrics, "the rerun's metrics differ from an uninterrupted run's"

    check = _registry(project, params, "check")
    listing = _registry(project, params, "list").stdout
    assert "NO BYTES" not in listing and "INCOMPLETE" not in listing and "MODIFIED" not in listing
    if point == "folds-written":
        assert check.returncode == 0, check.stdout + check.stderr
    else:  # the untagged bytes of the killed push are reported, never adopted silently, and repaired
        assert check.returncode == 1 and "orphan" in (check.stdout + check.stderr).lower()
        assert _registry(project, params, "check", "--repair").returncode == 0
        assert _registry(project, params, "check").returncode == 0


def _closed_port() -> int:
    with socket.socket() as sock:  # bound, then closed: nothing listens there afterwards
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_wandb_unreachable_the_run_completes_and_the_registry_link_stays_pending(tmp_path, demo_csv):
    project = _git_project(tmp_path / "project")
    params = write_params(project, demo_csv, tracking={"mode": "online", "init_timeout_seconds": 10})
    proc = _flow(project, params, WANDB_MODE="online", WANDB_BASE_URL=f"http://127.0.0.1:{_closed_port()}",
                 WANDB_API_KEY="x" * 40, WANDB_DIR=str(project / ".wandb"), WANDB_SILENT="true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "could not reach W&B" in proc.stderr, "the run was not logged online first"
    result = json.loads(proc.stdout)
    assert result["registration"] == "done"
    pending = list((project / ".wandb" / "foldstack-links").glob("*.json"))
    assert pending, "the registry link was neither made nor left pending"
    assert all(read_json(p).get("status", "pending") == "pending" for p in pending)
