"""One training run at a time per artifacts directory: `foldstack train`, each `foldstack stage` (what
`dvc repro` runs) and the Prefect flow take the project's run lock before they write anything.

Two runs writing one `artifacts/` would both retrain everything and the last writer would win. The lock is
an flock on `.foldstack/locks/run-<hash of the artifacts path>.lock` beside the params file: the kernel
releases it when its holder dies, so the lock of a killed run (even `kill -9`) is taken over by the next run
at once. Beside it, `<lock>.json` says who holds it (pid, command, start time), for the message a waiting
run prints. A run either waits (saying for whom) or, with `wait=False` (`--no-wait`), fails at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from foldstack.config import Config
from foldstack.errors import FoldstackError
from foldstack.common.files import LockTimeout, exclusive_lock


class RunLocked(FoldstackError):
    """Another run holds the project's run lock and this one was told not to wait."""


def lock_path(cfg: Config) -> Path:
    artifacts = cfg.resolve_path(cfg.runtime.artifacts_dir).resolve()
    digest = hashlib.sha256(str(artifacts).encode()).hexdigest()[:12]
    return cfg.resolve_path(".foldstack") / "locks" / f"run-{digest}.lock"


def holder(path: Path) -> dict[str, Any] | None:
    """Who holds (or last held) the lock, as its holder wrote it; None when unknown."""
    try:
        return json.loads(path.with_suffix(".lock.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _describe(info: dict[str, Any] | None) -> str:
    if not info:
        return "another process"
    started = time.strftime("%H:%M:%S", time.localtime(info.get("started", 0)))
    return f"pid {info.get('pid')} ({info.get('command')}, started {started} on {info.get('host')})"


@contextlib.contextmanager
def run_lock(cfg: Config, command: str, *, wait: bool = True, timeout: float | None = None) -> Iterator[Path]:
    """Hold the project's run lock for the artifacts directory of `cfg` while the block runs.

    Re-entrant within a process (the flow's tasks and the stage functions may be called under it).
    """
    from filelock import FileLock

    path = lock_path(cfg)
    nested = FileLock(str(path), is_singleton=True).is_locked  # held by this process already
    held = contextlib.ExitStack()
    try:  # only taking the lock is guarded here: a LockTimeout from the block itself is the block's own
        held.enter_context(exclusive_lock(path, guarding=cfg.runtime.artifacts_dir, timeout=timeout, wait=wait,
                                          holder=_describe(holder(path)), name="the run lock"))
    except LockTimeout as exc:
        hint = "" if wait else "; wait for it to finish, or run without --no-wait to queue behind it"
        raise RunLocked(f"another run is in the way: {exc}{hint}") from None
    with held:
        if not nested:
            _write_holder(path, command)
        yield path


def _write_holder(path: Path, command: str) -> None:
    info = {"pid": os.getpid(), "command": command, "started": time.time(), "host": socket.gethostname()}
    tmp = path.with_suffix(f".lock.json.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(info), encoding="utf-8")
    os.replace(tmp, path.with_suffix(".lock.json"))
