"""Which device a fold training runs on: the GPU-slot logic behind the Prefect fan-out (no Prefect here).

Two questions, two answers:

* **How many at once** is decided by the orchestrator (Prefect task runners sized from a `SlotPlan`): one
  slot per GPU for the kinds that use a GPU (`runtime.fits_per_gpu` per GPU where several small fine-tunes
  fill one GPU better, measured and recommended by `bench/gpu_finetune.py`), `runtime.max_workers` slots for everything on CPU.
* **Which GPU** a task takes is decided here, by `DeviceLeases`: a task leases one free device for the length
  of its fit and passes it to the model as `device="cuda:i"`. Leases are exclusive `flock`s on one file per
  device in a host-wide directory, so two flows (or two workers) on one machine never put two fine-tunes on
  one GPU, and a process killed with SIGKILL gives its device back at once (the kernel drops its locks).

Models never pick a device themselves (docs/ARCHITECTURE.md): a kind says whether it can use a GPU with the
class attribute `uses_gpu = True`, and this module turns that plus `runtime.device` into a device string.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from foldstack.errors import ConfigError

try:  # POSIX only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

CPU = "cpu"
_CUDA_INDEX = re.compile(r"^cuda:(\d+)$")


def default_lock_dir() -> Path:
    """A directory every process of this user on this host agrees on (the leases are per host)."""
    return Path(tempfile.gettempdir()) / f"foldstack-gpu-leases-{os.getuid() if hasattr(os, 'getuid') else 0}"


def visible_gpus() -> list[int]:
    """Indices of the CUDA devices this process can see (CUDA_VISIBLE_DEVICES applied); [] without CUDA."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return []
    if sys.platform.startswith("linux") and not Path("/proc/driver/nvidia/version").exists():
        return []  # no NVIDIA driver loaded: answer without importing torch (seconds on a busy machine)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return []
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def kind_uses_gpu(model_cls: type) -> bool:
    """Whether a base-model kind benefits from a GPU (its `uses_gpu` class attribute; CPU-only if absent)."""
    return bool(getattr(model_cls, "uses_gpu", False))


@dataclass(frozen=True)
class SlotPlan:
    """How a machine's devices are shared out: the GPU devices, fits per GPU, and the number of CPU slots."""

    gpu_devices: tuple[str, ...]
    cpu_slots: int
    fits_per_gpu: int = 1

    @property
    def gpu_slots(self) -> int:
        return len(self.gpu_devices) * self.fits_per_gpu

    def uses_gpu_slot(self, wants_gpu: bool) -> bool:
        """A task takes a GPU slot when its kind can use a GPU and this machine has one to give."""
        return wants_gpu and self.gpu_slots > 0

    def describe(self) -> str:
        gpus = ", ".join(self.gpu_devices) if self.gpu_devices else "none"
        per_gpu = f", {self.fits_per_gpu} per GPU" if self.fits_per_gpu > 1 else ""
        return f"{self.gpu_slots} GPU slot(s) ({gpus}{per_gpu}), {self.cpu_slots} CPU slot(s)"


def plan_slots(device_setting: str, max_workers: int, visible: Sequence[int], fits_per_gpu: int = 1) -> SlotPlan:
    """Turn `runtime.device`, `runtime.max_workers` and `runtime.fits_per_gpu` into slots on a machine whose
    GPUs are `visible`.

    `cpu` uses no GPU; `auto` uses every visible GPU (none is fine); `cuda` needs at least one and uses all;
    `cuda:N` uses exactly device N.
    """
    if max_workers < 1:
        raise ConfigError(f"runtime.max_workers must be at least 1, got {max_workers}")
    if fits_per_gpu < 1:
        raise ConfigError(f"runtime.fits_per_gpu must be at least 1, got {fits_per_gpu}")
    setting = device_setting.strip().lower()
    if setting == CPU:
        devices: list[int] = []
    elif setting == "auto":
        devices = list(visible)
    elif setting == "cuda":
        if not visible:
            raise ConfigError("runtime.device is 'cuda' but this machine has no visible CUDA device; "
                              "use 'auto' (GPU when there is one) or 'cpu'")
        devices = list(visible)
    elif match := _CUDA_INDEX.match(setting):
        index = int(match.group(1))
        if index not in visible:
            raise ConfigError(f"runtime.device is {device_setting!r} but the visible CUDA devices are "
                              f"{list(visible) or 'none'} (CUDA_VISIBLE_DEVICES renumbers them from 0)")
        devices = [index]
    else:
        raise ConfigError(f"runtime.device must be auto, cpu, cuda or cuda:N, got {device_setting!r}")
    return SlotPlan(gpu_devices=tuple(f"cuda:{i}" for i in devices), cpu_slots=max_workers,
                    fits_per_gpu=fits_per_gpu)


class DeviceLeaseTimeout(TimeoutError):
    """No device came free in time (something outside this flow holds them all)."""


class DeviceLeases:
    """Host-wide leases on a fixed list of devices, `per_device` holders at most on each (1: exclusive).

    `lease()` takes the first free slot, trying the first slot of every device before the second slot of any
    (so the fits spread over the GPUs), and waits, polling, while all are taken. The orchestrator sizes its
    GPU slots to the number of lease slots, so inside one flow a free one is there at once; waiting only
    happens when another flow or worker on the same machine holds devices.
    """

    def __init__(self, devices: Sequence[str], lock_dir: Path | str | None = None, poll_seconds: float = 0.5,
                 per_device: int = 1):
        if not devices:
            raise ValueError("DeviceLeases needs at least one device")
        if per_device < 1:
            raise ValueError(f"DeviceLeases needs at least one holder per device, got {per_device}")
        if fcntl is None:  # pragma: no cover - Windows
            raise OSError("GPU leases need POSIX file locks (fcntl.flock); run GPU workers on Linux")
        self.devices = tuple(devices)
        self.lock_dir = Path(lock_dir) if lock_dir is not None else default_lock_dir()
        self.poll_seconds = poll_seconds
        self.per_device = per_device

    def _lock_path(self, device: str, slot: int) -> Path:
        return self.lock_dir / (device.replace(":", "-") + (f".slot{slot}" if slot else "") + ".lock")

    def _try_lock(self, device: str, slot: int) -> int | None:
        """An fd holding the lock of one of the device's slots, or None if another holder has it."""
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_path(device, slot), os.O_RDWR | os.O_CREAT, 0o666)
        try:
            # flock (not fcntl/lockf): its locks belong to the open file, so two threads of one process that
            # open the file separately exclude each other too, and the kernel releases it when the process dies.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # for a human wondering who holds a GPU
        return fd

    @contextlib.contextmanager
    def lease(self, timeout: float | None = None) -> Iterator[str]:
        """Hold one device for the `with` block; yields its name (e.g. "cuda:1")."""
        deadline = None if timeout is None else time.monotonic() + timeout
        slots = [(device, slot) for slot in range(self.per_device) for device in self.devices]
        while True:
            for device, slot in slots:
                fd = self._try_lock(device, slot)
                if fd is not None:
                    try:
                        yield device
                    finally:
                        os.close(fd)  # closing the last fd of the open file drops the flock
                    return
            if deadline is not None and time.monotonic() >= deadline:
                raise DeviceLeaseTimeout(
                    f"no device of {', '.join(self.devices)} came free within {timeout:.0f}s; lock files in "
                    f"{self.lock_dir} name the holders' process ids")
            time.sleep(self.poll_seconds)

