"""Resume: kill the flow process with SIGKILL after some fold tasks finished, rerun, and count that only the
unfinished ones were trained (the finished ones were not touched), as the rerun's log says.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from foldstack.config import load_config
from foldstack.common.files import COMPLETE_MARKER
from foldstack.pipeline.stages import Layout
from tests.conftest import write_params

FLOW_TIMEOUT_S = 300


def _flow_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}  # the embedded server
    env.update(PREFECT_HOME=str(tmp_path / ".prefect"), PREFECT_LOGGING_LEVEL="INFO",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    return env


def _finished_folds(artifacts: Path) -> dict[str, int]:
    """Finished fold directories and the modification time of their task.json."""
    return {f"{d.parent.name}/{d.name}": (d / "task.json").stat().st_mtime_ns
            for d in sorted(artifacts.glob("base/*/fold-*")) if (d / COMPLETE_MARKER).is_file()}


def _is_fit_process(cmdline: str) -> bool:
    return ("multiprocessing.forkserver" in cmdline or "--multiprocessing-fork" in cmdline) \
        and "resource_tracker" not in cmdline


def _kill_group(leader_pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(leader_pid, signal.SIGKILL)  # what the kill left behind (the embedded server)


@pytest.mark.slow
def test_a_flow_killed_mid_training_resumes_with_only_the_unfinished_folds(tmp_path, demo_csv):
    params = write_params(tmp_path, demo_csv, registry={"git_registry": False}, folds={"k": 5},
                          runtime={"max_workers": 1})
    cfg = load_config(params)
    artifacts = Layout.of(cfg).root
    total = len(cfg.base_models) * cfg.folds.k
    command = [sys.executable, "-m", "flows.train", "--params", str(params)]
    log = (tmp_path / "killed.log").open("w")
    flow = subprocess.Popen(command, cwd=tmp_path, env=_flow_env(tmp_path), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + FLOW_TIMEOUT_S
        while len(_finished_folds(artifacts)) < 2:
            assert flow.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no fold task finished in time"
            time.sleep(0.05)
        fit_workers = [p for p in psutil.Process(flow.pid).children(recursive=True)  # the fork server and its
                       if _is_fit_process(" ".join(p.cmdline()))]                     # forks, or spawned ones
        os.kill(flow.pid, signal.SIGKILL)
        flow.wait(timeout=30)
        finished = _finished_folds(artifacts)
        assert 0 < len(finished) < total, f"kill came too late to test resume: {len(finished)} of {total} done"
        # The fit process noticed its flow process die and ended itself (no orphan keeps training).
        _, alive = psutil.wait_procs(fit_workers, timeout=20)
        assert not alive, f"fit processes outlived the killed flow: {[p.pid for p in alive]}"
    finally:
        _kill_group(flow.pid)
        log.close()

    rerun = subprocess.run(command, cwd=tmp_path, env=_flow_env(tmp_path), capture_output=True, text=True,
                           timeout=FLOW_TIMEOUT_S, start_new_session=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    result = json.loads(rerun.stdout)
    assert (result["trained"], result["reused"]) == (total - len(finished), len(finished))
    assert sorted(result["reused_tasks"]) == sorted(label.replace("/fold-", "/") for label in finished)
    assert f"resume: {len(finished)} of {total} fold tasks finished before with the same identity" in rerun.stderr
    after = _finished_folds(artifacts)
    assert len(after) == total
    assert {label: after[label] for label in finished} == finished  # the finished folds were not retrained
