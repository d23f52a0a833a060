"""The GPU packing planner of bench/gpu_finetune.py (bench/gpu_packing.py), checked on CPU with stand-ins for the
CUDA API: how many fine-tunes share one GPU, from a measured footprint and utilisation."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from bench.gpu_packing import (
    TaskFootprint,
    fits_alongside,
    parse_nvidia_smi_values,
    physical_gpu_id,
    plan_packing,
    probe_task,
)
from foldstack.errors import ConfigError
from tests.paths import REPO_ROOT

GIB = 2**30


# ------------------------------------------------------------------------------------------------
# packing fine-tunes onto a GPU
# ------------------------------------------------------------------------------------------------
def test_plan_packing_takes_the_tighter_of_memory_and_utilisation() -> None:
    # H100-like: 79 GiB free; MiniLM at ~1.5 GiB and 40% busy -> utilisation decides (2.0 / 0.4 = 5).
    assert plan_packing(79 * GIB, int(1.5 * GIB), 0.40) == 5
    # The same task, but memory-bound: 7 GiB free, 10% headroom -> floor(6.3 / 1.5) = 4.
    assert plan_packing(7 * GIB, int(1.5 * GIB), 0.40) == 4
    # A task that keeps the GPU busy alone runs alone unless memory is generous and target_busy says so.
    assert plan_packing(79 * GIB, 4 * GIB, 0.95) == 2
    assert plan_packing(79 * GIB, 4 * GIB, 0.95, target_busy=1.0) == 1
    # Tiny tasks: the cap decides; unmeasured utilisation: memory and the cap decide.
    assert plan_packing(79 * GIB, GIB // 4, 0.05) == 8
    assert plan_packing(79 * GIB, 20 * GIB, None) == 3
    assert plan_packing(79 * GIB, 20 * GIB, 0.0, max_per_gpu=2) == 2
    # Never zero: a task larger than the free memory still gets the GPU alone (its OOM retry shrinks it).
    assert plan_packing(2 * GIB, 3 * GIB, 0.3) == 1
    with pytest.raises(ValueError, match="a percentage"):
        plan_packing(79 * GIB, GIB, 40)
    with pytest.raises(ValueError, match="headroom"):
        plan_packing(79 * GIB, GIB, 0.4, headroom=1.0)
    with pytest.raises(ValueError, match="positive"):
        plan_packing(79 * GIB, 0, 0.4)


def test_fits_alongside_mixes_tasks_of_different_sizes() -> None:
    minilm, mpnet = TaskFootprint(int(1.5 * GIB), 0.4), TaskFootprint(6 * GIB, 0.9)
    free = 79 * GIB
    assert fits_alongside([], mpnet, free)  # an idle GPU takes anything
    assert fits_alongside([mpnet], minilm, free) and fits_alongside([mpnet, minilm], minilm, free)  # 1.7 busy
    assert not fits_alongside([mpnet, minilm, minilm], minilm, free)  # 2.1 busy: past the target
    assert not fits_alongside([mpnet, mpnet], minilm, 13 * GIB)  # 13.5 GiB > 90% of 13 GiB
    assert not fits_alongside([minilm] * 7, TaskFootprint(GIB, 0.01), free, max_per_gpu=7)
    # Consistent with plan_packing for identical tasks.
    n = plan_packing(free, minilm.peak_bytes, minilm.utilisation)
    assert fits_alongside([minilm] * (n - 1), minilm, free) and not fits_alongside([minilm] * n, minilm, free)
    with pytest.raises(ValueError, match="positive"):
        TaskFootprint(0, 0.5)


def test_gpu_readings_and_the_probe_without_a_gpu() -> None:
    assert parse_nvidia_smi_values("41\n[N/A]\n") [0] == 41.0
    assert np.isnan(parse_nvidia_smi_values("41\n[N/A]\n")[1])
    assert physical_gpu_id(1, "3,5") == "5"
    assert physical_gpu_id(0, "GPU-1234abcd") == "GPU-1234abcd"
    assert physical_gpu_id(2, "") == "2"
    with pytest.raises(ConfigError, match="not among"):
        physical_gpu_id(2, "0,1")
    with pytest.raises(ConfigError, match="measures a CUDA GPU"):
        probe_task(lambda: None, "cpu")


def test_probe_arithmetic_against_a_stand_in_for_the_cuda_api(monkeypatch: pytest.MonkeyPatch) -> None:
    """CI has no GPU: torch.cuda's functions are replaced by stand-ins returning fixed numbers, to check what the
    probe does with them (context = used - reserved, footprint = peak reserved + context, mean utilisation)."""
    import time

    import torch

    readings = iter([0.30, 0.50] + [0.40] * 1000)
    stand_ins = {
        "is_available": lambda: True, "set_device": lambda index: None, "synchronize": lambda index=None: None,
        "mem_get_info": lambda index=None: (70 * GIB, 80 * GIB), "memory_reserved": lambda index=None: 2 * GIB,
        "reset_peak_memory_stats": lambda index=None: None, "utilization": lambda index=None: next(readings) * 100,
        "max_memory_allocated": lambda index=None: 3 * GIB, "max_memory_reserved": lambda index=None: 4 * GIB,
        "get_device_name": lambda index=None: "Stand-in GPU",
    }
    for name, function in stand_ins.items():
        monkeypatch.setattr(torch.cuda, name, function)
    probe, returned = probe_task(lambda: time.sleep(0.3) or "done", "cuda:0", sample_seconds=0.02)
    assert returned == "done" and probe.device_name == "Stand-in GPU"
    assert probe.context_bytes == 8 * GIB  # 10 GiB in use on the device, 2 GiB of it the allocator's
    assert probe.footprint.peak_bytes == 12 * GIB and probe.peak_allocated_bytes == 3 * GIB
    assert len(probe.utilisation_samples) >= 3 and 0.3 <= probe.utilisation <= 0.45


def test_gpu_packing_imports_no_torch() -> None:
    code = "import sys, bench.gpu_packing\nassert 'torch' not in sys.modules, 'torch imported at module level'\n"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)
