"""How many fine-tunes to run at once on one GPU, decided from measurements rather than a constant.

One fine-tune of a small model (all-MiniLM-L6-v2) cannot fill an H100: its step loop is host-bound and the
GPU is busy about 40% of the time. Several fine-tunes in separate processes fill it. How many is bounded
twice:

* **memory**: each process holds its peak of the caching allocator plus a CUDA context; together they
  must fit in the GPU's free memory with some headroom (fragmentation, the allocator's rounding);
* **utilisation**: past the point where the GPU is always busy, another task only slows the others.
  The utilisation that NVML and nvidia-smi report is the share of time at least one kernel was running,
  not the share of the chip in use, and kernels of several processes interleave; so tasks that are each
  busy a share `u` of the time fill the card only when together they add up to well above 1. Measured on
  an H100 (all-MiniLM-L6-v2, bf16, batch 128-256): one task alone about 40% busy; five at once 99-100%
  busy and 3.7-4.2x the throughput of one; ten at once only about 10% more than five. The default
  `target_busy=2.0` (the busy shares adding up to 2) puts the stop at five there.

The planner functions are pure (no torch, no GPU) and unit-tested; `probe_task` measures a task's peak
memory and the GPU's utilisation while it runs, on a real GPU, for the planner to use.

How it reaches a run: `bench/gpu_finetune.py` probes fold fits on the GPU at hand and prints the
`runtime.fits_per_gpu` this planner recommends; that value is what `foldstack.runtime.gpu_slots` gives each GPU
(`DeviceLeases` holds that many lock files per device). The planner lives beside the bench, not in the library:
the library never re-plans a run on its own, the user sets the measured number.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from foldstack.errors import ConfigError

DEFAULT_MAX_PER_GPU = 8
DEFAULT_HEADROOM = 0.1
DEFAULT_TARGET_BUSY = 2.0
_NVIDIA_SMI_TIMEOUT_SECONDS = 10


@dataclass(frozen=True)
class TaskFootprint:
    """What one task costs a GPU: bytes at its peak (allocator and CUDA context) and the share of time (0..1]
    that the GPU is busy while the task runs alone (None: not measured)."""

    peak_bytes: int
    utilisation: float | None

    def __post_init__(self) -> None:
        if self.peak_bytes <= 0:
            raise ValueError(f"a task's peak memory must be positive, got {self.peak_bytes} bytes")
        _check_utilisation(self.utilisation)


def plan_packing(
    free_bytes: int,
    per_task_peak_bytes: int,
    measured_utilisation: float | None,
    max_per_gpu: int = DEFAULT_MAX_PER_GPU,
    headroom: float = DEFAULT_HEADROOM,
    target_busy: float = DEFAULT_TARGET_BUSY,
) -> int:
    """How many copies of one task to run at once on a GPU with `free_bytes` free.

    The smallest of: how many peaks fit in the free memory less `headroom`; how many busy shares
    `measured_utilisation` add up to at most `target_busy` (no limit when it was not measured or is 0);
    `max_per_gpu`. Never less than 1: a task too large for the headroom still gets the GPU to itself,
    where the fine-tune's own out-of-memory retry shrinks its micro-batch.
    """
    if free_bytes < 0:
        raise ValueError(f"free_bytes must be >= 0, got {free_bytes}")
    if per_task_peak_bytes <= 0:
        raise ValueError(f"per_task_peak_bytes must be positive, got {per_task_peak_bytes}")
    _check_utilisation(measured_utilisation)
    _check_limits(max_per_gpu, headroom, target_busy)
    by_memory = math.floor(free_bytes * (1.0 - headroom) / per_task_peak_bytes)
    if measured_utilisation:
        # The epsilon keeps 2.0 / 0.4 from becoming 4.999... and losing a task to rounding.
        by_utilisation = math.floor(target_busy / measured_utilisation + 1e-9)
    else:
        by_utilisation = max_per_gpu
    return max(1, min(max_per_gpu, by_memory, by_utilisation))


def fits_alongside(
    running: Sequence[TaskFootprint],
    candidate: TaskFootprint,
    free_bytes: int,
    max_per_gpu: int = DEFAULT_MAX_PER_GPU,
    headroom: float = DEFAULT_HEADROOM,
    target_busy: float = DEFAULT_TARGET_BUSY,
) -> bool:
    """Whether `candidate` may start on a GPU that already runs `running` (tasks of different sizes, e.g. two
    models). `free_bytes` is the GPU's free memory with none of them running. Same limits as
    `plan_packing`; an idle GPU always takes a task."""
    _check_limits(max_per_gpu, headroom, target_busy)
    if not running:
        return True
    if len(running) + 1 > max_per_gpu:
        return False
    memory = sum(t.peak_bytes for t in running) + candidate.peak_bytes
    if memory > free_bytes * (1.0 - headroom):
        return False
    shares = [t.utilisation for t in (*running, candidate)]
    if any(not share for share in shares):  # an unmeasured task: memory and the count decide alone
        return True
    return sum(shares) <= target_busy + 1e-9


def _check_utilisation(utilisation: float | None) -> None:
    if utilisation is not None and not 0.0 <= utilisation <= 1.0:
        raise ValueError(f"utilisation is a share of time between 0 and 1, got {utilisation} (a percentage?)")


def _check_limits(max_per_gpu: int, headroom: float, target_busy: float) -> None:
    if max_per_gpu < 1:
        raise ValueError(f"max_per_gpu must be at least 1, got {max_per_gpu}")
    if not 0.0 <= headroom < 1.0:
        raise ValueError(f"headroom is a share of the free memory in [0, 1), got {headroom}")
    if target_busy <= 0:
        raise ValueError(f"target_busy must be positive, got {target_busy}")


# -------------------------------------------------------------------------------------------------
# Reading the GPU without CUDA in this process (the orchestrator should not hold a CUDA context)
# -------------------------------------------------------------------------------------------------
def parse_nvidia_smi_values(text: str) -> list[float]:
    """The numbers of an `nvidia-smi --query-gpu=... --format=csv,noheader,nounits` answer, one per line
    (one field per query); "[N/A]" and "[Not Supported]" read as NaN."""
    values = []
    for line in text.strip().splitlines():
        cell = line.split(",")[0].strip()
        try:
            values.append(float(cell))
        except ValueError:
            values.append(math.nan)
    return values


def nvidia_smi_query(field_name: str, gpu: str) -> float:
    """One numeric field (e.g. "memory.free", in MiB; "utilization.gpu", in %) of one GPU via nvidia-smi.

    `gpu` is what `nvidia-smi -i` takes: the physical index or the UUID (see `physical_gpu_id`).
    """
    binary = shutil.which("nvidia-smi")
    if binary is None:
        raise ConfigError("nvidia-smi is not on the PATH; it is needed to read GPU memory and utilisation")
    answer = subprocess.run(
        [binary, f"--query-gpu={field_name}", "--format=csv,noheader,nounits", "-i", gpu],
        capture_output=True, text=True, timeout=_NVIDIA_SMI_TIMEOUT_SECONDS, check=True,
    )
    values = parse_nvidia_smi_values(answer.stdout)
    if len(values) != 1:
        raise ConfigError(f"nvidia-smi gave {len(values)} values for {field_name} of GPU {gpu}: {answer.stdout!r}")
    return values[0]


def physical_gpu_id(cuda_index: int, visible_devices: str | None = None) -> str:
    """The `nvidia-smi -i` id of the GPU that this process calls cuda:`cuda_index` (CUDA_VISIBLE_DEVICES
    renumbers the GPUs a process sees from 0)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible_devices is None else visible_devices
    if not visible:
        return str(cuda_index)
    entries = [e.strip() for e in visible.split(",") if e.strip()]
    if cuda_index >= len(entries):
        raise ConfigError(f"cuda:{cuda_index} is not among CUDA_VISIBLE_DEVICES={visible!r}")
    return entries[cuda_index]


def gpu_free_bytes(cuda_index: int = 0) -> int:
    """Free memory of a GPU as nvidia-smi sees it (all processes counted), without creating a CUDA context."""
    mib = nvidia_smi_query("memory.free", physical_gpu_id(cuda_index))
    if math.isnan(mib):
        raise ConfigError(f"nvidia-smi reports no free-memory figure for cuda:{cuda_index}")
    return int(mib * 2**20)


# -------------------------------------------------------------------------------------------------
# Probing one task on a real GPU
# -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProbeResult:
    """What one task did to the GPU while it ran alone (see `probe_task`)."""

    device: str
    device_name: str
    seconds: float
    peak_allocated_bytes: int  # torch.cuda.max_memory_allocated: tensors at their peak
    peak_reserved_bytes: int  # torch.cuda.max_memory_reserved: what the caching allocator held from the driver
    context_bytes: int  # memory in use on the GPU that the allocator does not account for (CUDA context)
    total_bytes: int
    utilisation: float | None  # mean busy share over the samples; None when none could be read
    utilisation_samples: list[float] = field(default_factory=list)

    @property
    def footprint(self) -> TaskFootprint:
        return TaskFootprint(self.peak_reserved_bytes + self.context_bytes, self.utilisation)

    def as_dict(self) -> dict[str, Any]:
        return {
            "device": self.device, "device_name": self.device_name, "seconds": round(self.seconds, 3),
            "peak_allocated_bytes": self.peak_allocated_bytes, "peak_reserved_bytes": self.peak_reserved_bytes,
            "context_bytes": self.context_bytes, "total_bytes": self.total_bytes,
            "utilisation": self.utilisation, "n_utilisation_samples": len(self.utilisation_samples),
        }


def utilisation_reader(cuda_index: int) -> Callable[[], float] | None:
    """A function returning the GPU's current busy share (0..1), from NVML through torch when the
    `pynvml` module (package nvidia-ml-py) is there, else from nvidia-smi; None when neither works."""
    import torch

    try:
        torch.cuda.utilization(cuda_index)
        return lambda: torch.cuda.utilization(cuda_index) / 100.0
    except Exception:  # noqa: BLE001 - no pynvml, or NVML refuses: try the command-line tool
        pass
    gpu = physical_gpu_id(cuda_index)
    try:
        nvidia_smi_query("utilization.gpu", gpu)
    except (ConfigError, OSError, subprocess.SubprocessError):
        return None
    return lambda: nvidia_smi_query("utilization.gpu", gpu) / 100.0


def probe_task(
    run: Callable[[], Any], device: str = "cuda:0", *, sample_seconds: float = 0.2
) -> tuple[ProbeResult, Any]:
    """Run `run()` in this process on `device` and measure its peak memory and the GPU's utilisation.

    Meant to be called on an otherwise idle GPU with a short but representative piece of work (a fine-tune
    on a sample of the rows that includes the longest texts): other processes' memory would be counted
    as this task's context and their kernels as its busy time, which errs on the safe side (fewer tasks).
    The whole run is sampled, start-up included, since packed processes overlap one's start-up with
    another's training. Returns the measurements and what `run` returned.
    """
    import torch

    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        raise ConfigError(f"probe_task measures a CUDA GPU; device {device!r} is not one (or torch sees no GPU)")
    index = torch.device(device).index or 0
    torch.cuda.set_device(index)
    free_before, total = torch.cuda.mem_get_info(index)  # creates this process's context first
    # Used on the device but not by this process's allocator: its CUDA context (and, on a busy GPU, others).
    context_bytes = max(0, (total - free_before) - torch.cuda.memory_reserved(index))
    torch.cuda.reset_peak_memory_stats(index)
    read = utilisation_reader(index)
    samples: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(sample_seconds):
            try:
                value = read()
            except Exception:  # noqa: BLE001 - a failed reading is a missing sample, not a failed probe
                continue
            if not math.isnan(value):
                samples.append(value)

    sampler = threading.Thread(target=sample, name="gpu-utilisation-probe", daemon=True) if read else None
    started = time.perf_counter()
    if sampler is not None:
        sampler.start()
    try:
        result = run()
        torch.cuda.synchronize(index)
    finally:
        stop.set()
        if sampler is not None:
            sampler.join()
    seconds = time.perf_counter() - started
    probe = ProbeResult(
        device=f"cuda:{index}",
        device_name=torch.cuda.get_device_name(index),
        seconds=seconds,
        peak_allocated_bytes=int(torch.cuda.max_memory_allocated(index)),
        peak_reserved_bytes=int(torch.cuda.max_memory_reserved(index)),
        context_bytes=int(context_bytes),
        total_bytes=int(total),
        utilisation=sum(samples) / len(samples) if samples else None,
        utilisation_samples=samples,
    )
    return probe, result
