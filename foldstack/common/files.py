"""Files that are either complete or absent, content hashes, and seeds derived from identities."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from foldstack.errors import FoldstackError

COMPLETE_MARKER = "COMPLETE"

log = logging.getLogger("foldstack.common.files")


class LockTimeout(FoldstackError):
    """Another process held a lock for longer than this one was willing to wait."""


def file_digest(path: Path, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    return file_digest(path, "sha256")


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def sha256_texts(texts: list[str] | tuple[str, ...]) -> str:
    """Order-sensitive hash of a list of texts (the separator cannot occur inside UTF-8 text)."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\xff")
    return h.hexdigest()


def derive_seed(base_seed: int, identity: str) -> int:
    """A 31-bit seed from the params seed and a task identity: reproducible, different per task."""
    return int(hashlib.sha256(f"{base_seed}:{identity}".encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


def write_json(path: Path, obj: Any, *, indent: int | None = 2) -> None:
    """Write JSON via a temporary file and rename, so a reader never sees half a file.

    ASCII-escaped, so any string (even a lone surrogate, which UTF-8 cannot encode) survives the round trip;
    `indent=None` writes one line (e.g. a vocabulary of a few hundred thousand terms).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    text = json.dumps(obj, indent=indent, sort_keys=True, ensure_ascii=True, default=_json_default)
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def save_array(path: Path, array: np.ndarray) -> None:
    np.save(path, np.ascontiguousarray(array), allow_pickle=False)


def load_array(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def is_complete(directory: Path) -> bool:
    return (directory / COMPLETE_MARKER).is_file()


@contextlib.contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success mark it complete and rename it onto `final`.

    On any exception the temporary directory is removed and `final` is left as it was: a killed or failed
    task never leaves a directory that looks finished.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        (tmp / COMPLETE_MARKER).write_text("ok\n")
        if final.exists():
            # Move the old one aside first: rename cannot replace a non-empty directory.
            old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def process_alive(pid: int) -> bool:
    """True while a process with this id runs on this machine (one we may not signal counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(directory: Path) -> int:
    """Delete leftovers of killed writers (`.name.tmp-<pid>-*` whose process is gone); returns how many.

    A temporary directory of a live process (another fold task writing right now) is left alone.
    """
    removed = 0
    if not directory.is_dir():
        return 0
    for p in directory.iterdir():
        if not p.name.startswith(".") or (".tmp-" not in p.name and ".old-" not in p.name):
            continue
        owner = temporary_writer(p)
        if owner is not None and process_alive(owner):
            continue
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        removed += 1
    return removed


def temporary_writer(path: Path) -> int | None:
    """The process id in a temporary's name (`.name.tmp-<pid>-<id>`, as `atomic_directory` names them)."""
    name = Path(path).name
    if not name.startswith(".") or ".tmp-" not in name:
        return None
    owner = name.rsplit(".tmp-", 1)[-1].split("-", 1)[0]
    return int(owner) if owner.isdigit() else None


@contextlib.contextmanager
def exclusive_lock(lock_file: Path, *, guarding: str, timeout: float | None = 600.0, wait: bool = True,
                   holder: str = "another process", name: str = "the lock") -> Iterator[None]:
    """Hold the inter-process lock `lock_file` (flock; released by the kernel if the holder dies).

    Re-entrant within a process: a function that holds it may call others that take it again. When another
    process holds it, say so once (naming the file, so a stuck holder can be found) and wait up to `timeout`
    seconds (None: as long as it takes); then raise LockTimeout. With `wait=False`, raise it at once.
    `guarding` says what the lock protects, `holder` who holds it and `name` what it is, for those messages.
    """
    from filelock import FileLock, Timeout

    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_file), is_singleton=True)  # one object per path: nested takes are re-entrant
    try:
        lock.acquire(blocking=False)
    except Timeout:
        if not wait:
            raise LockTimeout(f"{holder} holds {name} {lock_file} and is writing {guarding}") from None
        log.warning("waiting for %s %s: %s is writing %s", name, lock_file, holder, guarding)
        try:
            lock.acquire(timeout=-1 if timeout is None else timeout)
        except Timeout:
            raise LockTimeout(f"gave up after {timeout:.0f}s waiting for {name} {lock_file}: {holder} "
                              f"is still writing {guarding}; find it with `fuser {lock_file}`") from None
    try:
        yield
    finally:
        lock.release()
