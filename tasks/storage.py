"""Artifacts exchanged with remote workers through shared storage (any fsspec URL: s3://, gs://, file://).

A worker never reads the parent's disk: the parent publishes the snapshot and the fold assignment under a
key made of their content hashes, a worker downloads them into its own scratch directory, trains one fold
and uploads that fold's directory under a key made of the fold task's identity. Keys are content
addressed, so any run (or worker) that needs the same identity finds it already there.

Object stores have no rename, so "complete or absent" is kept with the completion marker: every file is
uploaded first and `COMPLETE` last; a remote directory without it is treated as absent (and overwritten).
Downloads go through `atomic_directory`, so locally too a half-downloaded directory never looks finished.
No Prefect here: these functions run inside tasks and inside the worker's flow.
"""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import Any

from foldstack.errors import StageError
from foldstack.common.files import COMPLETE_MARKER, atomic_directory, read_json


def _filesystem(url: str) -> tuple[Any, str]:
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    return fs, root.rstrip("/")


def inputs_key(data_hash: str, folds_hash: str) -> str:
    """Where the snapshot and folds of one (data, fold assignment) live in shared storage."""
    return f"inputs/{data_hash}-{folds_hash}"


def fold_key(model: str, identity: str) -> str:
    """Where one finished fold task lives in shared storage (its identity makes it reusable by any run)."""
    return f"folds/{model}/{identity}"


def is_published(url: str, key: str) -> bool:
    fs, root = _filesystem(url)
    return fs.exists(posixpath.join(root, key, COMPLETE_MARKER))


def upload_directory(local: Path, url: str, key: str) -> int:
    """Copy every file of `local` to `url/key`, the completion marker last; returns the number of files."""
    local = Path(local)
    if not (local / COMPLETE_MARKER).is_file():
        raise StageError(f"{local} is not a finished directory (no {COMPLETE_MARKER}); refusing to publish it")
    fs, root = _filesystem(url)
    target = posixpath.join(root, key)
    files = sorted(p for p in local.rglob("*") if p.is_file() and p.name != COMPLETE_MARKER)
    if fs.exists(posixpath.join(target, COMPLETE_MARKER)):
        fs.rm(posixpath.join(target, COMPLETE_MARKER))  # while being rewritten it must not look finished
    for path in files:
        remote = posixpath.join(target, path.relative_to(local).as_posix())
        fs.makedirs(posixpath.dirname(remote), exist_ok=True)
        fs.put_file(str(path), remote)
    fs.put_file(str(local / COMPLETE_MARKER), posixpath.join(target, COMPLETE_MARKER))
    return len(files) + 1


def download_directory(url: str, key: str, local: Path) -> int:
    """Replace `local` with the finished remote directory `url/key`; returns the number of files copied."""
    fs, root = _filesystem(url)
    source = posixpath.join(root, key)
    if not fs.exists(posixpath.join(source, COMPLETE_MARKER)):
        raise StageError(f"{url}/{key} is not in shared storage (or was not finished): nothing to download")
    remote_files = [p for p in fs.find(source) if posixpath.basename(p) != COMPLETE_MARKER]
    with atomic_directory(Path(local)) as tmp:  # writes its own COMPLETE once every file is in
        for remote in remote_files:
            relative = posixpath.relpath(remote, source)  # find() returns paths in the same form as `source`
            destination = tmp / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(remote, str(destination))
    return len(remote_files)


def publish_inputs(layout_snapshot: Path, layout_folds: Path, url: str) -> str:
    """Upload the snapshot and folds once per content (skipped when already there); returns their key."""
    snapshot_meta = read_json(layout_snapshot / "snapshot.json")
    folds_meta = read_json(layout_folds / "folds.json")
    key = inputs_key(snapshot_meta["data_hash"], folds_meta["hash"])
    for name, directory in (("snapshot", layout_snapshot), ("folds", layout_folds)):
        if not is_published(url, f"{key}/{name}"):
            upload_directory(directory, url, f"{key}/{name}")
    return key
