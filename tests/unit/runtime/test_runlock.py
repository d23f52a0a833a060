"""One run at a time per artifacts directory: a second run waits (saying for whom) or fails at once with
--no-wait; the lock of a killed run is taken over; two real `foldstack train` at once train each fold once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from foldstack.config import load_config
from foldstack.pipeline.runlock import RunLocked, holder, lock_path, run_lock
from tests.conftest import write_params

CLI = [sys.executable, "-m", "foldstack.cli"]
HOLD = ("import sys, time; from foldstack.config import load_config; from foldstack.pipeline.runlock import run_lock\n"
        "with run_lock(load_config(sys.argv[1]), 'a test holder'):\n"
        "    print('held', flush=True); time.sleep(60)\n")


def _hold(params: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(params)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_no_wait_fails_at_once_naming_the_holder_and_a_killed_holder_is_taken_over(tmp_path, demo_csv):
    params = write_params(tmp_path, demo_csv)
    cfg = load_config(params)
    holder_proc = _hold(params)
    try:
        with pytest.raises(RunLocked, match=f"pid {holder_proc.pid} \\(a test holder"):
            with run_lock(cfg, "a second run", wait=False):
                pass
        with pytest.raises(RunLocked, match="gave up after 0s"):
            with run_lock(cfg, "a second run", timeout=0.2):
                pass
    finally:
        holder_proc.send_signal(signal.SIGKILL)
        holder_proc.wait()
    # The kernel dropped the dead holder's flock: the next run takes the lock at once.
    started = time.perf_counter()
    with run_lock(cfg, "the next run", wait=False) as path:
        assert path == lock_path(cfg)
        assert holder(path)["pid"] == os.getpid() and holder(path)["command"] == "the next run"
        with run_lock(cfg, "nested", wait=False):  # re-entrant within the holder
            pass
    assert time.perf_counter() - started < 1.0


def test_other_artifacts_directories_have_their_own_lock(tmp_path, demo_csv):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = load_config(write_params(tmp_path / "one", demo_csv))
    two = load_config(write_params(tmp_path / "two", demo_csv))
    assert lock_path(one) != lock_path(two)
    with run_lock(one, "one", wait=False), run_lock(two, "two", wait=False):
        pass


@pytest.mark.slow
def test_two_concurrent_train_commands_train_each_fold_once(tmp_path, demo_csv):
    params = write_params(tmp_path, demo_csv, tracking={"mode": "disabled"})
    env = {**os.environ, "WANDB_MODE": "disabled", "COLUMNS": "200"}
    first = subprocess.Popen(CLI + ["train", "--params", str(params)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    lock = lock_path(load_config(params))
    deadline = time.monotonic() + 60
    while (holder(lock) or {}).get("pid") != first.pid:  # the first run holds the lock
        assert time.monotonic() < deadline and first.poll() is None, first.communicate()
        time.sleep(0.05)
    refused = subprocess.run(CLI + ["train", "--params", str(params), "--no-wait"], capture_output=True, text=True,
                             env=env, timeout=120)
    second = subprocess.run(CLI + ["train", "--params", str(params)], capture_output=True, text=True, env=env,
                            timeout=300)
    out_first, err_first = first.communicate(timeout=300)
    assert first.returncode == 0, err_first
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"pid {first.pid} (foldstack train" in refused.stdout + refused.stderr
    assert second.returncode == 0, second.stderr
    assert "waiting for the run lock" in second.stdout + second.stderr
    assert "6 fold models trained, 0 reused" in out_first
    assert "0 fold models trained, 6 reused" in second.stdout, "the second run reused the first one's folds"
