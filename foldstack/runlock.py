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
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from foldstack.config import Config
from foldstack.errors import FoldstackError

log = logging.getLogger("foldstack")


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
    from filelock import FileLock, Timeout

    path = lock_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), is_singleton=True)  # one object per path: a nested take is re-entrant
    nested = lock.is_locked
    try:
        lock.acquire(blocking=False)
    except Timeout:
        who = _describe(holder(path))
        artifacts = cfg.runtime.artifacts_dir
        if not wait:
            raise RunLocked(f"another run is writing {artifacts}: {who} holds {path}; wait for it to finish, "
                            f"or run without --no-wait to queue behind it") from None
        log.warning("waiting for the run lock %s: %s is writing %s", path, who, artifacts)
        try:
            lock.acquire(timeout=-1 if timeout is None else timeout)
        except Timeout:
            raise RunLocked(f"gave up after {timeout:.0f}s waiting for {who} to finish writing {artifacts} "
                            f"(lock {path})") from None
    try:
        if not nested:
            _write_holder(path, command)
        yield path
    finally:
        lock.release()


def _write_holder(path: Path, command: str) -> None:
    info = {"pid": os.getpid(), "command": command, "started": time.time(), "host": socket.gethostname()}
    tmp = path.with_suffix(f".lock.json.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(info), encoding="utf-8")
    os.replace(tmp, path.with_suffix(".lock.json"))
