"""One model's store directory: a directory of bundle bytes per registered version, and the registry's lock.

`registry.store_dir/<model_name>/<version>/` is written once, never rewritten: the bytes go into a temporary
directory beside the versions, are verified against the bundle's manifest and renamed into place. Where the
store lacks a version, `pull` fetches it (foldstack.ops.registry.version_bytes) into a temporary directory,
verified against the registered manifest before the rename. Every write holds the lock `<store>/.lock` (an
flock the kernel drops if its holder dies), which the registry's tag writes hold as well.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

from foldstack.bundle import MANIFEST, verify_bundle
from foldstack.common.files import (COMPLETE_MARKER, exclusive_lock, process_alive, read_json, sha256_file,
                                    sha256_json, temporary_writer, write_json)
from foldstack.errors import BundleError
from foldstack.ops.registry.git import PullError, RegistryError
from foldstack.ops.registry.store import DirHash, RemoteBytesError, remove_tree
from foldstack.ops.registry.tags import ModelVersion
from foldstack.ops.registry.version_bytes import VersionBytes

log = logging.getLogger("foldstack.ops.registry")

LOCK_FILE = ".lock"  # in the store directory: held by every write of the registry (bytes and tags)


@dataclass(frozen=True)
class StoreProblem:
    """One thing `registry check` found: a `dangling tag` (a version whose bytes are missing - here and on the
    DVC remote - or fail verification), an `orphan directory` (store bytes no tag names), a `temporary` (an
    interrupted write) or an `unavailable` version (pushed to a DVC remote, but neither here nor on the one this
    checkout can reach: left alone, since it is not known to be lost)."""

    kind: str
    name: str  # the version, or the entry's name in the store directory
    detail: str
    removable: bool = True
    repair: str = ""  # what `--repair` did; empty when nothing was done

    @property
    def repaired(self) -> bool:
        return self.repair not in ("", "left alone")


class VersionStore:
    """The bundle bytes of one model's versions in `directory`, and where they travel (`bytes`)."""

    def __init__(self, model_name: str, directory: Path, version_bytes: VersionBytes, *, lock_timeout: float):
        self.model_name = model_name
        self.directory = Path(directory)
        self.bytes = version_bytes
        self.lock_timeout = lock_timeout

    @property
    def lock_file(self) -> Path:
        """The lock every write of this registry holds (store directories and git tags alike)."""
        return self.directory / LOCK_FILE

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """Hold the registry's lock: writes are serialised between processes, and what the holder reads about
        versions and stages stays true until it lets go. Re-entrant within a process."""
        return exclusive_lock(self.lock_file, guarding=f"the {self.model_name} registry",
                              timeout=self.lock_timeout)

    def path(self, version: str) -> Path:
        return self.directory / version

    # ------------------------------------------------------------------------------------------- reading
    def bundle_path(self, version: ModelVersion) -> Path:
        """The stored bundle of `version`, after checking its manifest is the one registered.

        The files themselves are checked against the manifest by `verify_bundle`/`load_bundle`; together that
        refuses any modification of a registered bundle.
        """
        path = self.path(version.version)
        manifest = path / MANIFEST
        if not manifest.is_file():
            raise BundleError(f"{self.model_name} {version.version}: its bundle is not in the local store ({path}); "
                              f"it was registered on another machine or the store was deleted: "
                              f"`foldstack registry pull {version.version}` fetches it")
        expected = version.record.get("manifest_sha256")
        if expected and sha256_file(manifest) != expected:
            raise BundleError(f"{manifest}: does not match the manifest registered as {version.version} "
                              f"(sha256 {expected[:12]}...); the registered bundle was modified")
        return path

    def problem(self, version: ModelVersion, *, verify_files: bool = False) -> tuple[str, str] | None:
        """Why the stored bytes of `version` cannot be served - (state, detail) with state `missing`,
        `modified` or `incomplete` - or None when they can.

        Without `verify_files` the checks are cheap (the manifest is the registered one and every file it lists
        exists: what `registry list` shows); with it every file is hashed as well (`registry check`).
        """
        path = self.path(version.version)
        if not (path / MANIFEST).is_file():
            return "missing", f"no bundle in {path}"
        try:
            self.bundle_path(version)  # the manifest is the one registered
            listed = read_json(path / MANIFEST).get("files", {})
        except (BundleError, ValueError) as exc:
            return "modified", str(exc)
        absent = sorted(rel for rel in listed if not (path / rel).is_file())
        if absent:
            return "incomplete", f"{path}: {len(absent)} of its files are missing ({', '.join(absent[:3])})"
        if verify_files:
            try:
                verify_bundle(path)
            except BundleError as exc:
                return "modified", str(exc)
        return None

    # ------------------------------------------------------------------------------------------- writing
    def put(self, bundle_path: Path, version: str, content_digest: str) -> Path:
        """Copy the bundle into the store as `version` (naming the version in its manifest): into a temporary
        directory first, verified there, then renamed into place; returns its manifest. Call with the lock held."""
        final = self.path(version)
        tmp = self.directory / f".{version}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            shutil.copytree(bundle_path, tmp, ignore=shutil.ignore_patterns(COMPLETE_MARKER))
            manifest = read_json(tmp / MANIFEST)
            manifest["registry_version"] = version
            manifest["registry"] = {"name": self.model_name, "version": version}
            write_json(tmp / MANIFEST, manifest)
            copied = verify_bundle(tmp)  # the copy is intact (and the manifest edit left the file digests alone)
            if sha256_json(copied["files"]) != content_digest:
                raise BundleError(f"{bundle_path} changed while it was being registered; push it again")
            try:
                os.replace(tmp, final)  # fails rather than replace a directory that is not empty
            except OSError as exc:
                raise RegistryError(f"cannot put {self.model_name} {version} into {final} ({exc.strerror}); "
                                    f"`foldstack registry check` says what is there") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # only this call's own temporary directory
            raise
        return final / MANIFEST

    def save_bytes(self, version: str) -> tuple[DirHash, str | None]:
        """Version the stored bytes with DVC before the tag (`VersionBytes.save`): a push that fails raises."""
        try:
            return self.bytes.save(version, self.path(version))
        except RemoteBytesError as exc:
            raise RegistryError(str(exc)) from None

    # ------------------------------------------------------------------------------------- pull and upload
    def pull(self, version: ModelVersion, *, remote: str | None = None) -> tuple[Path, str | None]:
        """Put `version`'s bytes into the local store if they are not there: from the DVC remote (`remote`, default
        the project's default remote), or from the W&B model registry when no DVC remote is configured and W&B
        is online. Returns (bundle path, where they came from; None when they were here already).

        The copy is verified against the version's registered manifest (and every file's sha256) in a temporary
        directory before it is renamed into place, under the registry's lock; anything else is refused.
        """
        source = None
        if not (self.path(version.version) / MANIFEST).is_file():
            with self.locked():
                if not (self.path(version.version) / MANIFEST).is_file():  # not pulled meanwhile
                    source = self._restore(version, remote)
        return self.bundle_path(version), source

    def _restore(self, version: ModelVersion, remote: str | None) -> str:
        final = self.path(version.version)
        if final.exists():
            raise PullError(f"{final} exists but holds no bundle manifest, so it is not {version.version}'s "
                            f"registered bytes; move it away, then pull again")
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".{version.version}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            source = self.bytes.fetch(version, tmp, remote)  # verified against the registration, or raises
            os.replace(tmp, final)
        except RemoteBytesError as exc:
            remove_tree(tmp)
            raise PullError(f"{self.model_name} {version.version}: its bundle is not in the local store "
                            f"({self.directory}) and {exc}") from None
        except BaseException:
            remove_tree(tmp)  # only this call's own temporary directory
            raise
        log.warning("%s %s: pulled into %s and verified against its registration", self.model_name,
                    version.version, final)
        return source

    def upload(self, versions: Iterable[ModelVersion], *, remote: str | None = None) -> list[tuple[str, str, bool]]:
        """Send stored versions' bytes to the DVC remote (those registered while none was configured): one
        (version, what happened, ok) each (`VersionBytes.upload`)."""
        try:
            return [self.bytes.upload(version, self.path(version.version), remote) for version in versions]
        except RemoteBytesError as exc:
            raise RegistryError(str(exc)) from None

    # ----------------------------------------------------------------------------------------- leftovers
    def leftovers(self, registered: Collection[str]) -> list[StoreProblem]:
        """Orphan directories (no version in `registered` names them) and temporaries of interrupted writes."""
        problems = []
        for entry in sorted(self.directory.iterdir()) if self.directory.is_dir() else []:
            if entry.name == LOCK_FILE:
                continue
            if entry.name.startswith("."):
                if ".tmp-" in entry.name or ".old-" in entry.name:
                    problems.append(self._temporary_problem(entry))
                continue
            if entry.name not in registered:  # deregistered versions' directories still belong to a tag
                problems.append(StoreProblem("orphan directory", entry.name,
                                             "no version tag names it (an interrupted push, or copied by hand)"))
        return problems

    @staticmethod
    def _temporary_problem(entry: Path) -> StoreProblem:
        writer = temporary_writer(entry)
        if writer is not None and writer != os.getpid() and process_alive(writer):
            # Registry writes hold the lock this check holds: a live writer is one that ignores the lock (an
            # older foldstack) - or a new process that got the same id. Either way, not ours to remove.
            return StoreProblem("temporary", entry.name, f"its writer, process {writer}, is still running",
                                removable=False)
        return StoreProblem("temporary", entry.name, "left by an interrupted write")

    def remove(self, name: str) -> None:
        """Remove the store entry `name` (an orphan or a temporary that `leftovers` found)."""
        path = self.directory / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
