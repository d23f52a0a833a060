"""`GitModelRegistry`: one model's git-native registry - its GTO tags (foldstack.ops.registry.tags) and the
bytes of its versions (foldstack.ops.registry.local_store) - and the writes that need both: register, promote,
roll back, deregister, check and repair.

Every write holds the registry's lock: choosing the next version, copying the bytes, making the tag, and the
stage tags. The version tag comes last and is the commit point: a killed push leaves at most a temporary or an
untagged directory, never a tag without bytes. No write removes anything but what it made itself in the same
call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from foldstack.bundle import verify_bundle
from foldstack.common.faults import failpoint
from foldstack.common.files import sha256_file, sha256_json
from foldstack.ops.registry.git import RegistryError, git_toplevel, tag_exists
from foldstack.ops.registry.local_store import StoreProblem, VersionStore
from foldstack.ops.registry.store import DvcBytes, find_dvc_root
from foldstack.ops.registry.tags import PRODUCTION, ModelTags, ModelVersion, StageEvent, semver_key
from foldstack.ops.registry.version_bytes import VersionBytes, WandbBytes

if TYPE_CHECKING:
    from foldstack.config import Config

log = logging.getLogger("foldstack.ops.registry")


class GitModelRegistry:
    """Versions and the production stage of one model as GTO git tags; bundle bytes in a local store."""

    def __init__(self, repo: Path, model_name: str, store: Path, *, version_bump: str = "minor",
                 push_tags: bool = False, lock_timeout: float = 600.0, dvc_root: Path | str | None = "find",
                 wandb: WandbBytes | None = None):
        self.repo = Path(repo)
        self.model_name = model_name
        self.store = Path(store)
        self.version_bump = version_bump
        self.push_tags = push_tags
        self.lock_timeout = lock_timeout
        # Where the versions' bytes travel: the DVC project's cache and default remote ("find": the repository's
        # root if it is a DVC project; None: none, so they stay on this machine), else W&B (online only).
        self.bytes = VersionBytes(model_name, self.store,
                                  DvcBytes(find_dvc_root(self.repo, self.repo) if dvc_root == "find" else dvc_root),
                                  wandb)
        self.tags = ModelTags(self.repo, model_name, version_bump=version_bump, push_tags=push_tags)
        self.local = VersionStore(model_name, self.store, self.bytes, lock_timeout=lock_timeout)

    @classmethod
    def from_config(cls, cfg: Config) -> GitModelRegistry:
        if not cfg.registry.git_registry:
            raise RegistryError("the git-native registry is switched off (registry.git_registry: false)")
        repo = git_toplevel(cfg.resolve_path("."))
        return cls(repo, cfg.registry.model_name, cfg.resolve_path(cfg.registry.store_dir) / cfg.registry.model_name,
                   version_bump=cfg.registry.version_bump, push_tags=cfg.registry.push_tags,
                   dvc_root=find_dvc_root(cfg.resolve_path("."), repo), wandb=WandbBytes(cfg))

    # ----------------------------------------------------------------------- reading (the GTO tags)
    def versions(self, *, include_deregistered: bool = False) -> list[ModelVersion]:
        """Registered versions, newest (highest semver) first."""
        return self.tags.versions(include_deregistered=include_deregistered)

    def stage_events(self, stage: str = PRODUCTION) -> list[StageEvent]:
        return self.tags.stage_events(stage)

    def stage_version(self, stage: str = PRODUCTION) -> ModelVersion | None:
        """The version in `stage`: the last one assigned (by tag counter) and not unassigned since."""
        return self.tags.stage_version(stage)

    def production(self) -> ModelVersion | None:
        return self.tags.stage_version(PRODUCTION)

    def get(self, version: str) -> ModelVersion:
        return self.tags.get(version)

    def resolve(self, ref: str) -> ModelVersion:
        """'production' (or another stage), 'latest', or a version ('v0.2.0' / '0.2.0')."""
        return self.tags.resolve(ref)

    def find_by_content(self, content_digest: str) -> ModelVersion | None:
        return self.tags.find_by_content(content_digest)

    def production_lineage(self) -> list[str]:
        """The versions production held, oldest first, with rolled-back versions popped off (an undo stack)."""
        return self.tags.production_lineage()

    # ---------------------------------------------------------------------- bundles (the local store)
    def store_path(self, version: str) -> Path:
        return self.local.path(version)

    def bundle_path(self, version: ModelVersion) -> Path:
        """The stored bundle of `version`, after checking its manifest is the one registered
        (`VersionStore.bundle_path`)."""
        return self.local.bundle_path(version)

    def ensure_local(self, version: ModelVersion, *, remote: str | None = None) -> Path:
        """`bundle_path`, after pulling the version into the local store if the store lacks it."""
        return self.pull(version, remote=remote)[0]

    def pull(self, version: ModelVersion, *, remote: str | None = None) -> tuple[Path, str | None]:
        """(bundle path, where its bytes came from; None when they were here already): `VersionStore.pull`."""
        return self.local.pull(version, remote=remote)

    def upload(self, versions: Iterable[ModelVersion], *, remote: str | None = None) -> list[tuple[str, str, bool]]:
        """Send stored versions' bytes to the DVC remote: one (version, what happened, ok) each."""
        return self.local.upload(versions, remote=remote)

    def stored_problem(self, version: ModelVersion, *, verify_files: bool = False) -> tuple[str, str] | None:
        """Why the stored bytes of `version` cannot be served, or None when they can (`VersionStore.problem`)."""
        return self.local.problem(version, verify_files=verify_files)

    @property
    def lock_file(self) -> Path:
        """The lock every write of this registry holds (store directories and git tags alike)."""
        return self.local.lock_file

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """Hold the registry's lock (`VersionStore.locked`); re-entrant within a process."""
        return self.local.locked()

    # ------------------------------------------------------------------------------------------- writing
    def _free_version(self) -> str:
        """The next version number whose store directory is free as well. A directory without a tag was left by
        an interrupted push (or copied in by hand): it is skipped, never overwritten."""
        version = self.tags.next_version()
        while self.store_path(version).exists():
            log.warning("%s has no version tag (left by an interrupted push?); registering as the next version "
                        "instead; `foldstack registry check --repair` removes it", self.store_path(version))
            version = self.tags.bump(version)
        return version

    def register(self, bundle_path: Path) -> tuple[ModelVersion, bool]:
        """Register a verified bundle as a new version; (version, created).

        An identical bundle (same file digests) that is already registered is returned instead, with
        created=False: a retried task, or two pushes of one bundle at once, register it once. Under the
        registry's lock, the bytes are copied and verified first and the tag is made last (the commit point).
        """
        bundle_path = Path(bundle_path)
        manifest = verify_bundle(bundle_path)  # hashed before the lock: other pushes need not wait for this
        content_digest = sha256_json(manifest["files"])
        with self.locked():
            existing = self.find_by_content(content_digest)
            if existing is not None:
                self._ensure_stored(existing, bundle_path, content_digest)
                return existing, False
            version = self._free_version()
            stored_manifest = self.local.put(bundle_path, version, content_digest)
            failpoint("registry-bytes-stored")  # a crash here must leave no tag, only an untagged directory
            try:
                dir_hash, remote = self.local.save_bytes(version)  # in DVC's cache and on its remote, or raises
                tag = self.tags.register(version, manifest, content_digest, stored_manifest, bundle_path,
                                         dir_hash, remote)
            except BaseException:
                # This call made these bytes a moment ago, under the lock; unless the tag exists after all,
                # nothing names them, so they are removed rather than left as an orphan.
                if not tag_exists(self.repo, f"{self.model_name}@{version}"):
                    shutil.rmtree(self.store_path(version), ignore_errors=True)
                raise
            self.tags.push(tag)
            return self.get(version), True

    def _ensure_stored(self, version: ModelVersion, bundle_path: Path, content_digest: str) -> None:
        """A push of an already registered bundle: put its bytes back if they are gone (the same files, so the
        same version); refuse if they are there but fail verification (a person should look first)."""
        problem = self.stored_problem(version, verify_files=True)
        if problem is None:
            return
        state, detail = problem
        if self.store_path(version.version).exists():
            raise RegistryError(
                f"{self.model_name} {version.version} is this bundle, but its stored copy is {state} ({detail}); "
                f"`foldstack registry check --repair` deregisters it, then push the bundle again")
        log.warning("%s %s is registered but its bytes were missing; storing them again from %s",
                    self.model_name, version.version, bundle_path)
        stored_manifest = self.local.put(bundle_path, version.version, content_digest)
        expected = version.record.get("manifest_sha256")
        if expected and sha256_file(stored_manifest) != expected:
            shutil.rmtree(stored_manifest.parent, ignore_errors=True)  # made just now by this call
            raise RegistryError(
                f"{self.model_name} {version.version} has this bundle's files but a different manifest, and its "
                f"stored copy is gone; `foldstack registry check --repair` deregisters it, then push again")

    def promote(self, version: str, *, reason: str, action: str = "promote") -> ModelVersion:
        """Make `version` production: assign it, then unassign every other version still in the stage.

        The bundle must be present and intact first: production never points at bytes that cannot be served.
        Under the registry's lock: GTO numbers stage tags by a counter, which two writers at once would share.
        """
        with self.locked():
            target = self.get(version)
            verify_bundle(self.ensure_local(target))  # pulled first where this store lacks it (another clone)
            current = self.production()
            if current is not None and current.version == target.version:
                return target
            self.tags.assign(target.version, PRODUCTION, f"{action}: {reason}".strip())
            return target

    def rollback(self, *, reason: str = "") -> tuple[ModelVersion, ModelVersion]:
        """Put back the version production held before the current one; (from, to)."""
        with self.locked():
            current = self.production()
            if current is None:
                raise RegistryError(f"{self.model_name}: no version is in production, so there is nothing to roll "
                                    f"back")
            registered = {v.version for v in self.versions()}
            earlier = [v for v in self.production_lineage()[:-1] if v in registered and v != current.version]
            if not earlier:
                raise RegistryError(f"{self.model_name}: production has only held {current.version}; there is no "
                                    f"earlier version to roll back to (promote one with `foldstack registry "
                                    f"promote`)")
            target = earlier[-1]
            self.promote(target, reason=reason or f"back from {current.version}", action="rollback")
            return current, self.get(target)

    def deregister(self, version: str, *, reason: str) -> ModelVersion:
        """Retire `version` with a GTO deregistration tag. Its tag and record stay (so its number is never
        given out again and `git tag -d` of the deregistration tag undoes this); it leaves every stage."""
        with self.locked():
            target = self.get(version)
            self.tags.deregister(target.version, reason=reason)
            return target

    # ------------------------------------------------------------------------------------ check and repair
    def check(self, *, repair: bool = False) -> list[StoreProblem]:
        """Dangling version tags (bytes missing or failing verification), orphan store directories (no tag
        names them) and temporaries of interrupted writes; with `repair`, each one is dealt with
        (`StoreProblem.repair` says how).

        Holds the registry's lock throughout: a push in progress has, for a moment, a directory without its
        tag yet, which must not be taken for an orphan.
        """
        with self.locked():
            problems = self._find_problems()
            if repair:
                production = self.production()
                problems = [self._repair(p, production) for p in problems]
            return problems

    def _find_problems(self) -> list[StoreProblem]:
        all_versions, _ = self.tags.state()
        problems = []
        for version in sorted(all_versions.values(), key=lambda v: semver_key(v.version)):
            if version.deregistered:  # retired: its bytes need not be servable
                continue
            found = self.stored_problem(version, verify_files=True)
            if found is not None and found[0] == "missing":
                found = self.bytes.remote_state(version, found[1])  # a clone that has not pulled it: fine
                if found is not None and found[0] == "unavailable":
                    problems.append(StoreProblem("unavailable", version.version, found[1], removable=False))
                    continue
            if found is not None:
                problems.append(StoreProblem("dangling tag", version.version, f"bytes {found[0]}: {found[1]}"))
        return problems + self.local.leftovers(all_versions)

    def _repair(self, problem: StoreProblem, production: ModelVersion | None) -> StoreProblem:
        if problem.kind == "dangling tag":
            self.deregister(problem.name, reason=f"registry check --repair: {problem.detail}")
            was_production = production is not None and production.version == problem.name
            return dataclasses.replace(problem, repair="deregistered" + (
                "; it was production: no version is in production now" if was_production else ""))
        if not problem.removable:
            return dataclasses.replace(problem, repair="left alone")
        self.local.remove(problem.name)
        return dataclasses.replace(problem, repair="removed")
