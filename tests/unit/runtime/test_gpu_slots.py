"""The GPU-slot logic with fake device lists: slot plans, and leases that never put two fits on one device."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar

import pytest

from foldstack.errors import ConfigError
from foldstack.runtime.gpu_slots import DeviceLeases, DeviceLeaseTimeout, SlotPlan, kind_uses_gpu, plan_slots

FAKE_GPUS = [0, 1, 2]


@pytest.mark.parametrize("setting, visible, devices", [
    ("cpu", FAKE_GPUS, ()),
    ("auto", FAKE_GPUS, ("cuda:0", "cuda:1", "cuda:2")),
    ("auto", [], ()),
    ("cuda", [0, 1], ("cuda:0", "cuda:1")),
    ("cuda:1", FAKE_GPUS, ("cuda:1",)),
    ("CUDA:2", FAKE_GPUS, ("cuda:2",)),
])
def test_plan_slots_gives_one_slot_per_usable_gpu(setting, visible, devices):
    plan = plan_slots(setting, max_workers=3, visible=visible)
    assert plan == SlotPlan(gpu_devices=devices, cpu_slots=3)
    assert plan.gpu_slots == len(devices)


@pytest.mark.parametrize("setting, visible, message", [
    ("cuda", [], "no visible CUDA device"),
    ("cuda:3", FAKE_GPUS, re.escape("visible CUDA devices are [0, 1, 2]")),
    ("gpu", FAKE_GPUS, "must be auto, cpu, cuda or cuda:N"),
])
def test_plan_slots_names_an_impossible_device(setting, visible, message):
    with pytest.raises(ConfigError, match=message):
        plan_slots(setting, max_workers=2, visible=visible)


def test_gpu_kinds_take_gpu_slots_only_when_there_are_gpus():
    class Finetune:
        uses_gpu: ClassVar[bool] = True

    class Tfidf:
        pass

    with_gpus, without = plan_slots("auto", 2, FAKE_GPUS), plan_slots("auto", 2, [])
    assert with_gpus.uses_gpu_slot(kind_uses_gpu(Finetune))
    assert not with_gpus.uses_gpu_slot(kind_uses_gpu(Tfidf))
    assert not without.uses_gpu_slot(kind_uses_gpu(Finetune))


class Occupancy:
    """Records who holds which device, and the most holders seen at once (per device and in total)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.holders: dict[str, int] = {}
        self.max_per_device = 0
        self.max_total = 0
        self.devices_seen: list[str] = []

    def enter(self, device: str) -> None:
        with self.lock:
            self.holders[device] = self.holders.get(device, 0) + 1
            self.devices_seen.append(device)
            self.max_per_device = max(self.max_per_device, self.holders[device])
            self.max_total = max(self.max_total, sum(self.holders.values()))

    def leave(self, device: str) -> None:
        with self.lock:
            self.holders[device] -= 1


def _fit_on_leased_device(leases: DeviceLeases, occupancy: Occupancy, seconds: float) -> str:
    with leases.lease(timeout=30) as device:
        occupancy.enter(device)
        time.sleep(seconds)
        occupancy.leave(device)
    return device


def test_n_slots_run_n_fits_at_once_each_on_its_own_device(tmp_path):
    devices = [f"cuda:{i}" for i in FAKE_GPUS]
    leases = DeviceLeases(devices, lock_dir=tmp_path, poll_seconds=0.01)
    occupancy = Occupancy()
    # The orchestrator's GPU runner has one slot per device; 12 fits queue behind its 3 slots.
    with ThreadPoolExecutor(max_workers=len(devices)) as runner:
        got = list(runner.map(lambda _: _fit_on_leased_device(leases, occupancy, 0.05), range(12)))
    assert len(got) == 12 and set(got) <= set(devices)
    assert occupancy.max_per_device == 1  # never two fits on one device
    assert occupancy.max_total == len(devices)  # and all devices in use at once


def test_leases_alone_never_oversubscribe(tmp_path):
    """More concurrent callers than devices (e.g. two flows on one machine): the extra ones wait."""
    leases = DeviceLeases(["cuda:0", "cuda:1"], lock_dir=tmp_path, poll_seconds=0.01)
    occupancy = Occupancy()
    with ThreadPoolExecutor(max_workers=6) as callers:
        list(callers.map(lambda _: _fit_on_leased_device(leases, occupancy, 0.05), range(8)))
    assert occupancy.max_per_device == 1
    assert occupancy.max_total == 2


def test_a_lease_times_out_with_a_message_when_all_devices_are_held(tmp_path):
    leases = DeviceLeases(["cuda:0"], lock_dir=tmp_path, poll_seconds=0.01)
    with leases.lease(), pytest.raises(DeviceLeaseTimeout, match=r"cuda:0 came free within"), \
            leases.lease(timeout=0.1):
        pass
    with leases.lease(timeout=0.1) as device:  # given back when the first holder left
        assert device == "cuda:0"


def test_a_killed_holder_gives_its_device_back(tmp_path):
    """Leases are kernel file locks: SIGKILL of the holding process frees the device at once."""
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from foldstack.runtime.gpu_slots import DeviceLeases\n"
         f"with DeviceLeases(['cuda:0'], lock_dir={str(tmp_path)!r}).lease():\n"
         "    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        leases = DeviceLeases(["cuda:0"], lock_dir=tmp_path, poll_seconds=0.01)
        with pytest.raises(DeviceLeaseTimeout), leases.lease(timeout=0.2):
            pass
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
        with leases.lease(timeout=5) as device:
            assert device == "cuda:0"
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=10)
        holder.stdout.close()


def test_lock_files_name_their_holder(tmp_path):
    with DeviceLeases(["cuda:7"], lock_dir=tmp_path).lease():
        assert Path(tmp_path / "cuda-7.lock").read_text().strip() == str(os.getpid())


def test_several_fits_per_gpu_share_each_device_evenly(tmp_path):
    """runtime.fits_per_gpu > 1 (packing small fine-tunes): at most that many on a device, spread over all."""
    plan = plan_slots("auto", max_workers=1, visible=[0, 1], fits_per_gpu=2)
    assert plan.gpu_slots == 4
    leases = DeviceLeases(plan.gpu_devices, lock_dir=tmp_path, poll_seconds=0.01, per_device=plan.fits_per_gpu)
    occupancy = Occupancy()
    with ThreadPoolExecutor(max_workers=plan.gpu_slots) as runner:
        list(runner.map(lambda _: _fit_on_leased_device(leases, occupancy, 0.05), range(12)))
    assert occupancy.max_per_device == 2
    assert occupancy.max_total == 4
    with leases.lease() as first, leases.lease() as second:
        assert {first, second} == {"cuda:0", "cuda:1"}  # the second fit goes to the idle GPU, not beside the first
