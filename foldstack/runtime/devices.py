"""Where torch work runs: the device a spec names, the process-wide settings for it, and seeding.

One place for every caller (fold tasks, the transformer models, the doctor): asking for a GPU that is not there is
an error, never a silent fall back to a 30x slower CPU run.
"""

from __future__ import annotations

import random
import re

import numpy as np

from foldstack.errors import ConfigError

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def resolve_device(spec: str) -> str:
    """A concrete torch device string: "auto" means cuda when available, else cpu.

    Asking for a GPU that is not there is an error rather than a silent fall back to a 30x slower CPU run.
    """
    spec = str(spec).strip().lower()
    if not _DEVICE_PATTERN.match(spec):
        raise ConfigError(f"device {spec!r}: expected auto, cpu, mps, cuda or cuda:N")
    if spec == "cpu":
        return "cpu"
    import torch

    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError("device 'mps' was requested but this torch has no usable MPS backend")
        return "mps"
    if not torch.cuda.is_available():
        raise ConfigError(
            f"device {spec!r} was requested but torch {torch.__version__} sees no CUDA GPU; use device: auto or cpu"
        )
    index = int(spec.split(":")[1]) if ":" in spec else 0
    if index >= torch.cuda.device_count():
        raise ConfigError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return spec


def configure_torch_for_device(device: str) -> None:
    """Process-wide settings that make GPU runs fast; nothing to do on CPU."""
    if not device.startswith("cuda"):
        return
    import torch

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    # cuDNN's attention kernel re-plans for every new (batch, length) shape, which dynamic padding produces
    # all the time; the flash / memory-efficient kernels do not.
    torch.backends.cuda.enable_cudnn_sdp(False)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (all CUDA devices included)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
