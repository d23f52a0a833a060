"""What every benchmark result file records about the machine it was measured on, plus a Markdown table helper.

    from bench.common import machine_info, machine_markdown, markdown_table

Timings mean little without the machine: CPU model, the cores this process may use, memory, thread limits
and the versions of the libraries that do the work.
"""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
LIBRARIES = ("foldstack", "numpy", "pandas", "scikit-learn", "torch", "transformers")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)  # the value is in KiB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _usable_cores() -> int:
    # The affinity mask, not os.cpu_count(): a container may see more CPUs than it may run on.
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _git_revision() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}{' + uncommitted changes' if dirty else ''}"


def machine_info() -> dict[str, Any]:
    """A flat description of this machine and software stack."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {
        "cpu": _cpu_model(),
        "usable_cores": _usable_cores(),
        "memory_gib": _memory_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        **{f"env {var}": os.environ.get(var, "unset") for var in THREAD_VARIABLES},
        **{f"version {name}": version for name, version in versions.items()},
        "git revision": _git_revision(),
    }


def machine_markdown() -> str:
    """`machine_info()` as a Markdown bullet list."""
    return "\n".join(f"- {key}: {value}" for key, value in machine_info().items())


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table; floats are printed as given (format them first), None as an empty cell."""
    def cell(value: Any) -> str:
        return "" if value is None else str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(map(cell, columns)) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def write_section(start: str, end: str, path: Path, text: str, title: str = "# Orchestration benchmarks") -> None:
    """Replace one benchmark's section of a shared results file (between its `start`/`end` markers, which
    `text` includes), or append it; the other sections stay as they are."""
    old = path.read_text(encoding="utf-8") if path.exists() else title + "\n"
    if start in old and end in old:
        before, rest = old.split(start, 1)
        new = before + text + rest.split(end, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new, encoding="utf-8")
