"""The model registry: git-native versions and stages (GTO), the W&B model registry, and the promotion gate.

Git-native registry (the embedded default; works offline)
    A registered version is an annotated GTO tag `<model_name>@vX.Y.Z`; the `production` stage is a GTO
    assignment tag `<model_name>#production#N`. GTO allows one version per commit, so each registration gets
    its own small commit: HEAD's tree (the code that produced the model, including dvc.yaml/dvc.lock) with
    HEAD as parent, made with `git commit-tree` - no branch moves, the working tree is never touched. The tag
    message carries the version's record (bundle digests, metrics, data hash). The bundle's bytes are copied
    into `registry.store_dir/<model_name>/<version>/` (a directory per version, never rewritten), with
    `registry_version` written into its manifest so predictions name the version.
    Stage state is read from the tags in the order of GTO's tag counter (not tag timestamps, which have
    one-second resolution): production is the version assigned last and not unassigned since. Promotion
    assigns the new version and unassigns the others, so `gto show`/`gto which` agree with foldstack.

Bytes that travel (foldstack/ops/registry/store.py)
    Before its tag, a version's store directory is hashed into the DVC project's cache (one `.dir` object, as
    `dvc add` makes) and pushed to the project's default DVC remote; the `.dir` hash goes into the record and
    a pointer file `registry/<model>/<version>.dvc` into the record commit's tree. A push that fails leaves no
    tag. Without a remote the version is registered with its bytes on this machine only (said once).
    Where the store lacks a version (a fresh clone, a serving host), `pull` fetches it from the DVC remote -
    or, with no remote configured, from the W&B model registry when online - into a temporary directory,
    verifies it against the registered manifest and renames it into place; `predict --model`, `serve-model`,
    the gate, promote and rollback pull on demand.

Several processes at once (two `registry push`, a push and a promote)
    Every write holds the registry's lock (`<store>/.lock`, an flock the kernel drops if its holder dies):
    choosing the next version, copying the bytes, making the tag, and the stage tags. The bytes go into a
    temporary directory beside the versions, are verified against the bundle's manifest and renamed into
    place; the version tag comes last and is the commit point. A killed push leaves at most a temporary or
    an untagged directory, never a tag without bytes; `foldstack registry check` finds those (and tags whose
    bytes were removed or modified since) and `--repair` clears them. No write removes anything but what it
    made itself in the same call.

Champion/challenger gate
    The candidate and the current production model are both scored by loading their (verified) bundles and
    predicting the current snapshot's holdout; `registry.gate_metric` decides, `registry.gate_tolerance` is
    the margin a candidate must win by. No production: the candidate passes. A tie or a loss keeps
    production; the candidate stays registered with the reason in `artifacts/registry/decision.{json,md}`.

W&B model registry
    Online, the logged model artifact is linked into `wandb-registry-model/<collection>` with alias
    `candidate` (and `production` when promoted), retried with backoff. Offline (or after the retries fail)
    the link is written to a pending-link ledger under `tracking.dir` and into the run's manifest;
    `foldstack registry sync` uploads the offline run (`wandb sync`) and performs the links later.

Nothing here unpickles anything: bundles are verified against their manifests before any model loads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from foldstack.bundle import MANIFEST, verify_bundle
from foldstack.errors import BundleError, FoldstackError
from foldstack.common.faults import failpoint
from foldstack.common.files import (COMPLETE_MARKER, exclusive_lock, process_alive, read_json, sha256_file, sha256_json,
                              temporary_writer, write_json)
from foldstack.ops.registry.store import (DirHash, DvcBytes, RemoteBytesError, VersionBytes, WandbBytes, find_dvc_root,
                                      pointer_path, pointer_text, registry_target, remove_tree)

if TYPE_CHECKING:
    from foldstack.config import Config
    from foldstack.ops.tracking import Tracker

log = logging.getLogger("foldstack.ops.registry")

PRODUCTION = "production"
RECORD_PREFIX = "foldstack-record: "  # the line of a version tag's message that holds its JSON record
LOCK_FILE = ".lock"  # in the store directory: held by every write of the registry (bytes and tags)
LOWER_IS_BETTER = frozenset({"log_loss"})
# Scores closer than this are equal: the same model scored twice can differ in the last bits.
_SCORE_EPSILON = 1e-12


class RegistryError(FoldstackError):
    """The model registry cannot do what was asked (no repository, unknown version, nothing to roll back)."""


class PullError(RegistryError):
    """A version's bytes are not in the local store and cannot be fetched (no remote, unreachable, modified)."""


# ============================================================================================ git helpers
def _git(repo: Path, *args: str, input_text: str | None = None, env: Mapping[str, str] | None = None) -> str:
    try:
        done = subprocess.run(["git", "-C", str(repo), *args], input=input_text, capture_output=True, text=True,
                              env={**os.environ, **(env or {})}, timeout=60, check=False)
    except FileNotFoundError:
        raise RegistryError("git is not installed: the git-native registry needs it") from None
    if done.returncode != 0:
        raise RegistryError(f"`git {' '.join(args)}` failed in {repo}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def git_toplevel(directory: Path) -> Path:
    """The root of the git repository holding `directory`, or a RegistryError that says what to do."""
    try:
        return Path(_git(Path(directory), "rev-parse", "--show-toplevel").strip())
    except RegistryError:
        raise RegistryError(
            f"{directory} is not inside a git repository: the git-native registry keeps versions as git tags; "
            f"run `git init` there or set registry.git_registry: false") from None


def _identity(repo: Path) -> tuple[str, str]:
    """The user's git identity, or a neutral one so that registering works on a fresh machine too."""
    def config(key: str) -> str:
        try:
            return _git(repo, "config", key).strip()
        except RegistryError:
            return ""

    return config("user.name") or "foldstack registry", config("user.email") or "foldstack@localhost"


def _semver_key(version: str) -> tuple:
    from gto.versions import SemVer

    parsed = SemVer.parse(version)
    # A release sorts after its pre-releases (1.0.0 > 1.0.0-rc1).
    return (parsed.major, parsed.minor, parsed.patch, parsed.prerelease is None, parsed.prerelease or "")


def normalise_version(text: str) -> str | None:
    """'1.2.0' or 'v1.2.0' -> 'v1.2.0'; None when `text` is not a semantic version."""
    from gto.versions import SemVer

    candidate = text if text[:1] in ("v", "V") else f"v{text}"
    candidate = "v" + candidate[1:]
    return candidate if SemVer.is_valid(candidate) else None


# ================================================================================== versions and stages
@dataclass(frozen=True)
class ModelVersion:
    """One registered version: its GTO tag, the commit it points at and the record in the tag message."""

    name: str
    version: str
    tag: str
    commit: str
    created_at: datetime
    record: dict[str, Any] = field(default_factory=dict, compare=False)
    deregistered: bool = False

    @property
    def bundle_id(self) -> str:
        return self.record.get("bundle_id", "")

    def metric(self, name: str) -> float | None:
        value = self.record.get("metrics", {}).get(f"ensemble.{name}")
        return float(value) if isinstance(value, (int, float)) else None


@dataclass(frozen=True)
class StageEvent:
    """A GTO assignment (`assign`) or unassignment (`unassign`) of a stage, ordered by GTO's tag counter."""

    counter: int
    action: str
    stage: str
    version: str
    tag: str
    created_at: datetime
    message: str

    @property
    def is_rollback(self) -> bool:
        return self.message.startswith("rollback:")


@dataclass(frozen=True)
class _Tag:
    name: str
    commit: str
    created_at: datetime
    message: str


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

    @classmethod
    def from_config(cls, cfg: Config) -> GitModelRegistry:
        if not cfg.registry.git_registry:
            raise RegistryError("the git-native registry is switched off (registry.git_registry: false)")
        repo = git_toplevel(cfg.resolve_path("."))
        return cls(repo, cfg.registry.model_name, cfg.resolve_path(cfg.registry.store_dir) / cfg.registry.model_name,
                   version_bump=cfg.registry.version_bump, push_tags=cfg.registry.push_tags,
                   dvc_root=find_dvc_root(cfg.resolve_path("."), repo), wandb=WandbBytes(cfg))

    # ------------------------------------------------------------------------------------------ reading
    def _tags(self) -> list[_Tag]:
        from gto.tag import parse_name

        out = _git(self.repo, "for-each-ref", "refs/tags",
                   "--format=%(refname:strip=2)%00%(objectname)%00%(*objectname)%00%(creatordate:unix)%00"
                   "%(contents)%1e")
        tags = []
        for chunk in out.split("\x1e"):
            chunk = chunk.lstrip("\n")
            if not chunk:
                continue
            name, obj, peeled, stamp, message = chunk.split("\x00", 4)
            parsed = parse_name(name, raise_on_fail=False)
            if not parsed or parsed.get("name") != self.model_name:
                continue
            tags.append(_Tag(name, peeled or obj, datetime.fromtimestamp(int(stamp or 0), tz=UTC),
                             message.strip()))
        return tags

    def _state(self) -> tuple[dict[str, ModelVersion], list[StageEvent]]:
        from gto.constants import Action
        from gto.tag import parse_name

        registrations: dict[str, _Tag] = {}
        deregistered: set[str] = set()
        stage_tags: list[tuple[dict, _Tag]] = []
        for tag in self._tags():
            parsed = parse_name(tag.name)
            action = parsed.get("action")
            if action == Action.REGISTER:
                registrations[parsed["version"]] = tag
            elif action == Action.DEREGISTER:
                deregistered.add(parsed["version"])
            elif action in (Action.ASSIGN, Action.UNASSIGN) and "counter" in parsed:
                stage_tags.append((parsed, tag))
        versions = {v: ModelVersion(self.model_name, v, t.name, t.commit, t.created_at, _parse_record(t.message),
                                    deregistered=v in deregistered) for v, t in registrations.items()}
        by_commit = {mv.commit: mv.version for mv in versions.values()}
        events = []
        for parsed, tag in stage_tags:
            version = by_commit.get(tag.commit)
            if version is None:  # a stage on a commit without a version: not ours to interpret
                continue
            events.append(StageEvent(parsed["counter"], "assign" if parsed["action"] == Action.ASSIGN else "unassign",
                                     parsed["stage"], version, tag.name, tag.created_at, tag.message))
        events.sort(key=lambda e: e.counter)
        return versions, events

    def versions(self, *, include_deregistered: bool = False) -> list[ModelVersion]:
        """Registered versions, newest (highest semver) first."""
        versions, _ = self._state()
        chosen = [v for v in versions.values() if include_deregistered or not v.deregistered]
        return sorted(chosen, key=lambda v: _semver_key(v.version), reverse=True)

    def stage_events(self, stage: str = PRODUCTION) -> list[StageEvent]:
        return [e for e in self._state()[1] if e.stage == stage]

    def stage_version(self, stage: str = PRODUCTION) -> ModelVersion | None:
        """The version in `stage`: the last one assigned (by tag counter) and not unassigned since."""
        versions, events = self._state()
        live = {v: c for v, c in _active_assignments(events, stage).items()
                if v in versions and not versions[v].deregistered}
        return versions[max(live, key=live.get)] if live else None

    def production(self) -> ModelVersion | None:
        return self.stage_version(PRODUCTION)

    def get(self, version: str) -> ModelVersion:
        wanted = normalise_version(version)
        if wanted is None:
            raise RegistryError(f"{version!r} is not a version (expected vMAJOR.MINOR.PATCH, e.g. v0.2.0)")
        versions, _ = self._state()
        if wanted not in versions or versions[wanted].deregistered:
            known = ", ".join(v.version for v in self.versions()) or "none registered yet"
            raise RegistryError(f"{self.model_name} has no version {wanted} (versions: {known})")
        return versions[wanted]

    def resolve(self, ref: str) -> ModelVersion:
        """'production' (or another stage), 'latest', or a version ('v0.2.0' / '0.2.0')."""
        if normalise_version(ref):
            return self.get(ref)
        if ref == "latest":
            versions = self.versions()
            if not versions:
                raise RegistryError(f"{self.model_name}: no version is registered yet (foldstack registry push)")
            return versions[0]
        found = self.stage_version(ref)
        if found is None:
            raise RegistryError(f"{self.model_name}: no version is in stage {ref!r} "
                                f"(promote one with `foldstack registry promote VERSION`)")
        return found

    def find_by_content(self, content_digest: str) -> ModelVersion | None:
        for version in self.versions():
            if version.record.get("content_digest") == content_digest:
                return version
        return None

    def production_lineage(self) -> list[str]:
        """The versions production held, oldest first, with rolled-back versions popped off (an undo stack)."""
        stack: list[str] = []
        for event in self.stage_events(PRODUCTION):
            if event.action != "assign":
                continue
            if event.is_rollback and len(stack) >= 2 and stack[-2] == event.version:
                stack.pop()
            elif not stack or stack[-1] != event.version:
                stack.append(event.version)
        return stack

    # ------------------------------------------------------------------------------------------- bundles
    def store_path(self, version: str) -> Path:
        return self.store / version

    def bundle_path(self, version: ModelVersion) -> Path:
        """The stored bundle of `version`, after checking its manifest is the one registered.

        The files themselves are checked against the manifest by `verify_bundle`/`load_bundle`; together that
        refuses any modification of a registered bundle.
        """
        path = self.store_path(version.version)
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

    def ensure_local(self, version: ModelVersion, *, remote: str | None = None) -> Path:
        """`bundle_path`, after pulling the version into the local store if the store lacks it."""
        return self.pull(version, remote=remote)[0]

    def pull(self, version: ModelVersion, *, remote: str | None = None) -> tuple[Path, str | None]:
        """Put `version`'s bytes into the local store if they are not there: from the DVC remote (`remote`, default
        the project's default remote), or from the W&B model registry when no DVC remote is configured and W&B
        is online. Returns (bundle path, where they came from; None when they were here already).

        The copy is verified against the version's registered manifest (and every file's sha256) in a temporary
        directory before it is renamed into place, under the registry's lock; anything else is refused.
        """
        source = None
        if not (self.store_path(version.version) / MANIFEST).is_file():
            with self.locked():
                if not (self.store_path(version.version) / MANIFEST).is_file():  # not pulled meanwhile
                    source = self._restore(version, remote)
        return self.bundle_path(version), source

    def _restore(self, version: ModelVersion, remote: str | None) -> str:
        final = self.store_path(version.version)
        if final.exists():
            raise PullError(f"{final} exists but holds no bundle manifest, so it is not {version.version}'s "
                            f"registered bytes; move it away, then pull again")
        self.store.mkdir(parents=True, exist_ok=True)
        tmp = self.store / f".{version.version}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            source = self.bytes.fetch(version, tmp, remote)  # verified against the registration, or raises
            os.replace(tmp, final)
        except RemoteBytesError as exc:
            remove_tree(tmp)
            raise PullError(f"{self.model_name} {version.version}: its bundle is not in the local store "
                            f"({self.store}) and {exc}") from None
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
            return [self.bytes.upload(version, self.store_path(version.version), remote) for version in versions]
        except RemoteBytesError as exc:
            raise RegistryError(str(exc)) from None

    def stored_problem(self, version: ModelVersion, *, verify_files: bool = False) -> tuple[str, str] | None:
        """Why the stored bytes of `version` cannot be served - (state, detail) with state `missing`,
        `modified` or `incomplete` - or None when they can.

        Without `verify_files` the checks are cheap (the manifest is the registered one and every file it lists
        exists: what `registry list` shows); with it every file is hashed as well (`registry check`).
        """
        path = self.store_path(version.version)
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
    @property
    def lock_file(self) -> Path:
        """The lock every write of this registry holds (store directories and git tags alike)."""
        return self.store / LOCK_FILE

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """Hold the registry's lock: writes are serialised between processes, and what the holder reads about
        versions and stages stays true until it lets go. Re-entrant within a process."""
        return exclusive_lock(self.lock_file, guarding=f"the {self.model_name} registry",
                              timeout=self.lock_timeout)

    def _bump(self, version: str) -> str:
        from gto.versions import SemVer

        return SemVer(version).bump(**{f"bump_{self.version_bump}": True}).version

    def _next_version(self) -> str:
        existing = self.versions(include_deregistered=True)  # never reuse a deregistered version's number
        if not existing:
            return {"major": "v1.0.0", "minor": "v0.1.0", "patch": "v0.0.1"}[self.version_bump]
        return self._bump(existing[0].version)

    def _free_version(self) -> str:
        """The next version number whose store directory is free as well. A directory without a tag was left by
        an interrupted push (or copied in by hand): it is skipped, never overwritten."""
        version = self._next_version()
        while self.store_path(version).exists():
            log.warning("%s has no version tag (left by an interrupted push?); registering as the next version "
                        "instead; `foldstack registry check --repair` removes it", self.store_path(version))
            version = self._bump(version)
        return version

    def _record_commit(self, version: str, record: dict[str, Any], files: Mapping[str, str] | None = None) -> str:
        """A commit of HEAD's tree (plus `files`: {path: text}) with HEAD as parent, for this version alone (GTO:
        one version per commit)."""
        name, email = _identity(self.repo)
        env = {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email, "GIT_COMMITTER_NAME": name,
               "GIT_COMMITTER_EMAIL": email}
        head = _head(self.repo)  # None in a repository without commits yet: the record commit has no parent
        tree = self._tree_with(head, files or {})
        message = (f"foldstack registry: {self.model_name} {version}\n\n"
                   f"bundle {record['bundle_id']} (sha256 of files {record['content_digest'][:16]}), "
                   f"data {record.get('data_hash')}\n")
        args = ["commit-tree", tree, "-m", message] + (["-p", head] if head else [])
        return _git(self.repo, *args, env=env).strip()

    def _tree_with(self, head: str | None, files: Mapping[str, str]) -> str:
        """HEAD's tree (empty without HEAD) with `files` added, written through a private index: neither the
        repository's index nor its working tree is touched."""
        if not files:
            return _git(self.repo, "rev-parse", f"{head}^{{tree}}").strip() if head else \
                _git(self.repo, "mktree", input_text="").strip()
        import tempfile

        with tempfile.TemporaryDirectory(prefix="foldstack-index-") as scratch:
            env = {"GIT_INDEX_FILE": str(Path(scratch) / "index")}
            _git(self.repo, "read-tree", *([head] if head else ["--empty"]), env=env)
            for path, text in files.items():
                blob = _git(self.repo, "hash-object", "-w", "--stdin", input_text=text).strip()
                _git(self.repo, "update-index", "--add", "--cacheinfo", f"100644,{blob},{path}", env=env)
            return _git(self.repo, "write-tree", env=env).strip()

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
            stored_manifest = self._store(bundle_path, version, content_digest)
            failpoint("registry-bytes-stored")  # a crash here must leave no tag, only an untagged directory
            try:
                dir_hash, remote = self._version_bytes(version)  # in DVC's cache and on its remote, or raises
                tag = self._tag_version(version, manifest, content_digest, stored_manifest, bundle_path,
                                        dir_hash, remote)
            except BaseException:
                # This call made these bytes a moment ago, under the lock; unless the tag exists after all,
                # nothing names them, so they are removed rather than left as an orphan.
                if not self._tag_exists(f"{self.model_name}@{version}"):
                    shutil.rmtree(self.store_path(version), ignore_errors=True)
                raise
            self._push(tag)
            return self.get(version), True

    def _version_bytes(self, version: str) -> tuple[DirHash, str | None]:
        """Version the stored bytes with DVC before the tag (`VersionBytes.save`): a push that fails raises."""
        try:
            return self.bytes.save(version, self.store_path(version))
        except RemoteBytesError as exc:
            raise RegistryError(str(exc)) from None

    def _tag_version(self, version: str, manifest: Mapping[str, Any], content_digest: str, stored_manifest: Path,
                     bundle_path: Path, dir_hash: DirHash | None = None, remote: str | None = None) -> str:
        """Make the version's record commit (with the bytes' DVC pointer) and its GTO tag; returns the tag."""
        import gto.api
        from gto.exceptions import GTOException

        metrics = {k: v for k, v in manifest.get("metrics", {}).items()
                   if k.startswith("ensemble.") and isinstance(v, (int, float)) and math.isfinite(v)}
        record = {
            "bundle_id": manifest["bundle_id"], "content_digest": content_digest,
            "manifest_sha256": sha256_file(stored_manifest), "data_hash": manifest.get("data_hash"),
            "fold_hash": manifest.get("fold_hash"), "labels": manifest.get("labels"),
            "base_models": [m["name"] for m in manifest.get("base_models", [])],
            "meta": manifest.get("meta", {}).get("kind"), "metrics": metrics,
            "foldstack_version": manifest.get("foldstack_version"), "source_commit": _head(self.repo),
            "registered_from": str(bundle_path.resolve()),
            "registered_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        files = {}
        if dir_hash is not None:
            record["dvc"] = dir_hash.record(remote)
            files[pointer_path(self.model_name, version)] = pointer_text(self.model_name, version, dir_hash)
        commit = self._record_commit(version, record, files)
        name, email = _identity(self.repo)
        summary = ", ".join(f"{m} {metrics[f'ensemble.{m}']:.4f}" for m in ("log_loss", "accuracy", "macro_f1")
                            if f"ensemble.{m}" in metrics)
        message = (f"foldstack: register {self.model_name} {version} (bundle {manifest['bundle_id']}"
                   f"{'; ' + summary if summary else ''})\n\n{RECORD_PREFIX}{json.dumps(record, sort_keys=True)}")
        try:
            gto.api.register(self.repo, self.model_name, ref=commit, version=version, message=message,
                             author=name, author_email=email)
        except GTOException as exc:
            raise RegistryError(f"GTO could not register {self.model_name} {version}: {exc}") from exc
        return f"{self.model_name}@{version}"

    def _tag_exists(self, tag: str) -> bool:
        try:
            _git(self.repo, "rev-parse", "--verify", "-q", f"refs/tags/{tag}")
        except RegistryError:
            return False
        return True

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
        stored_manifest = self._store(bundle_path, version.version, content_digest)
        expected = version.record.get("manifest_sha256")
        if expected and sha256_file(stored_manifest) != expected:
            shutil.rmtree(stored_manifest.parent, ignore_errors=True)  # made just now by this call
            raise RegistryError(
                f"{self.model_name} {version.version} has this bundle's files but a different manifest, and its "
                f"stored copy is gone; `foldstack registry check --repair` deregisters it, then push again")

    def _store(self, bundle_path: Path, version: str, content_digest: str) -> Path:
        """Copy the bundle into the store as `version` (naming the version in its manifest): into a temporary
        directory first, verified there, then renamed into place. Call with the lock held."""
        final = self.store_path(version)
        tmp = self.store / f".{version}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
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

    def promote(self, version: str, *, reason: str, action: str = "promote") -> ModelVersion:
        """Make `version` production: assign it, then unassign every other version still in the stage.

        The bundle must be present and intact first: production never points at bytes that cannot be served.
        Under the registry's lock: GTO numbers stage tags by a counter, which two writers at once would share.
        """
        with self.locked():
            return self._promote(version, reason=reason, action=action)

    def _promote(self, version: str, *, reason: str, action: str) -> ModelVersion:
        import gto.api
        from gto.exceptions import GTOException

        target = self.get(version)
        verify_bundle(self.ensure_local(target))  # pulled first where this store lacks it (another clone)
        current = self.production()
        if current is not None and current.version == target.version:
            return target
        name, email = _identity(self.repo)
        message = f"{action}: {reason}".strip()
        try:
            gto.api.assign(self.repo, self.model_name, PRODUCTION, version=target.version, message=message,
                           simple=False, force=True, author=name, author_email=email)
        except GTOException as exc:
            raise RegistryError(f"GTO could not assign {PRODUCTION} to {target.version}: {exc}") from exc
        self._push(self._latest_stage_tag())
        for other in self._active_in(PRODUCTION):
            if other == target.version:
                continue
            gto.api.unassign(self.repo, self.model_name, stage=PRODUCTION, version=other, force=True,
                             message=f"superseded by {target.version}", author=name, author_email=email)
            self._push(self._latest_stage_tag())
        return target

    def rollback(self, *, reason: str = "") -> tuple[ModelVersion, ModelVersion]:
        """Put back the version production held before the current one; (from, to)."""
        with self.locked():
            return self._rollback(reason=reason)

    def _rollback(self, *, reason: str) -> tuple[ModelVersion, ModelVersion]:
        current = self.production()
        if current is None:
            raise RegistryError(f"{self.model_name}: no version is in production, so there is nothing to roll back")
        registered = {v.version for v in self.versions()}
        earlier = [v for v in self.production_lineage()[:-1] if v in registered and v != current.version]
        if not earlier:
            raise RegistryError(f"{self.model_name}: production has only held {current.version}; there is no "
                                f"earlier version to roll back to (promote one with `foldstack registry promote`)")
        target = earlier[-1]
        self.promote(target, reason=reason or f"back from {current.version}", action="rollback")
        return current, self.get(target)

    def deregister(self, version: str, *, reason: str) -> ModelVersion:
        """Retire `version` with a GTO deregistration tag. Its tag and record stay (so its number is never
        given out again and `git tag -d` of the deregistration tag undoes this); it leaves every stage."""
        import gto.api
        from gto.exceptions import GTOException

        with self.locked():
            target = self.get(version)
            name, email = _identity(self.repo)
            try:
                gto.api.deregister(self.repo, self.model_name, version=target.version, message=f"deregister: {reason}",
                                   simple=False, force=True, author=name, author_email=email)
            except GTOException as exc:
                raise RegistryError(f"GTO could not deregister {self.model_name} {target.version}: {exc}") from exc
            self._push(self._newest_tag(f"{self.model_name}@{target.version}!"))
            return target

    def _newest_tag(self, prefix: str) -> str:
        names = [t.name for t in self._tags() if t.name.startswith(prefix)]
        return max(names, key=lambda n: (len(n), n)) if names else ""  # `...#10` after `...#9`

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
        all_versions, _ = self._state()
        problems = []
        for version in sorted(all_versions.values(), key=lambda v: _semver_key(v.version)):
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
        for entry in sorted(self.store.iterdir()) if self.store.is_dir() else []:
            if entry.name == LOCK_FILE:
                continue
            if entry.name.startswith("."):
                if ".tmp-" in entry.name or ".old-" in entry.name:
                    problems.append(self._temporary_problem(entry))
                continue
            if entry.name not in all_versions:  # deregistered versions' directories still belong to a tag
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

    def _repair(self, problem: StoreProblem, production: ModelVersion | None) -> StoreProblem:
        path = self.store / problem.name
        if problem.kind == "dangling tag":
            self.deregister(problem.name, reason=f"registry check --repair: {problem.detail}")
            was_production = production is not None and production.version == problem.name
            return dataclasses.replace(problem, repair="deregistered" + (
                "; it was production: no version is in production now" if was_production else ""))
        if not problem.removable:
            return dataclasses.replace(problem, repair="left alone")
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        return dataclasses.replace(problem, repair="removed")

    def _active_in(self, stage: str) -> list[str]:
        return list(_active_assignments(self._state()[1], stage))

    def _latest_stage_tag(self) -> str:
        events = self._state()[1]
        return events[-1].tag if events else ""

    def _push(self, tag: str) -> None:
        if not (self.push_tags and tag):
            return
        try:
            _git(self.repo, "push", "origin", f"refs/tags/{tag}")
        except RegistryError as exc:
            log.warning("tag %s was made locally but not pushed (%s); push it with `git push origin --tags`",
                        tag, exc)


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


def _active_assignments(events: list[StageEvent], stage: str) -> dict[str, int]:
    """{version: counter of its latest assignment} of the versions assigned to `stage` and not unassigned since."""
    active: dict[str, int] = {}
    for event in events:
        if event.stage != stage:
            continue
        if event.action == "assign":
            active[event.version] = event.counter
        else:
            active.pop(event.version, None)
    return active


def _head(repo: Path) -> str | None:
    try:
        return _git(repo, "rev-parse", "--verify", "-q", "HEAD").strip() or None
    except RegistryError:
        return None


def _parse_record(message: str) -> dict[str, Any]:
    for line in message.splitlines():
        if line.startswith(RECORD_PREFIX):
            try:
                return json.loads(line[len(RECORD_PREFIX):])
            except ValueError:
                log.warning("a registry tag holds an unreadable record: %.80s", line)
    return {}


# =================================================================================================== gate
@dataclass(frozen=True)
class GateDecision:
    """The champion/challenger comparison on one holdout and what it means for promotion."""

    metric: str
    tolerance: float
    outcome: str  # no_production | better | worse | tie | incomparable | is_production
    reason: str
    candidate_version: str | None = None
    candidate_score: float | None = None
    production_version: str | None = None
    production_score: float | None = None
    holdout_rows: int | None = None
    notes: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return self.outcome in ("no_production", "better")

    @property
    def improvement(self) -> float | None:
        """How much better the candidate is (positive = better), in the metric's own units."""
        if self.candidate_score is None or self.production_score is None:
            return None
        sign = -1.0 if self.metric in LOWER_IS_BETTER else 1.0
        return sign * (self.candidate_score - self.production_score)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "notes": list(self.notes), "passed": self.passed, "improvement": self.improvement,
                "lower_is_better": self.metric in LOWER_IS_BETTER}

    def markdown(self) -> str:
        def fmt(value: float | None) -> str:
            return "-" if value is None else f"{value:.6f}"

        lines = [f"# Promotion gate: {'PASS' if self.passed else 'no promotion'} ({self.outcome})", "",
                 self.reason, "",
                 f"metric `{self.metric}` ({'lower' if self.metric in LOWER_IS_BETTER else 'higher'} is better), "
                 f"tolerance {self.tolerance:g}, holdout rows {self.holdout_rows if self.holdout_rows else '-'}", "",
                 "| model | version | score |", "|---|---|---|",
                 f"| candidate | {self.candidate_version or '-'} | {fmt(self.candidate_score)} |",
                 f"| production | {self.production_version or '-'} | {fmt(self.production_score)} |"]
        if self.notes:
            lines += ["", *[f"- {note}" for note in self.notes]]
        return "\n".join(lines) + "\n"


def gate_decision(metric: str, candidate_score: float, production_score: float | None, tolerance: float, *,
                  candidate_version: str | None = None, production_version: str | None = None,
                  holdout_rows: int | None = None, notes: Iterable[str] = ()) -> GateDecision:
    """Compare scores: the candidate passes when there is no production model or it wins by more than
    `tolerance`; a difference within the tolerance is a tie, and a tie keeps production."""
    common = {"metric": metric, "tolerance": tolerance, "candidate_version": candidate_version,
              "candidate_score": candidate_score, "production_version": production_version,
              "production_score": production_score, "holdout_rows": holdout_rows, "notes": tuple(notes)}
    if production_score is None:
        return GateDecision(outcome="no_production", reason="there is no production model yet: the candidate "
                            "becomes the first", **common)
    if not (math.isfinite(candidate_score) and math.isfinite(production_score)):
        return GateDecision(outcome="incomparable", reason=f"{metric} could not be computed for both models on "
                            f"this holdout (candidate {candidate_score}, production {production_score}); "
                            f"production is kept", **common)
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    improvement = sign * (candidate_score - production_score)
    direction = "lower" if metric in LOWER_IS_BETTER else "higher"
    versus = f"{metric} {candidate_score:.6f} vs production {production_version or ''} {production_score:.6f}"
    if improvement > tolerance + _SCORE_EPSILON:
        return GateDecision(outcome="better", reason=f"the candidate wins: {versus} ({direction} is better, "
                            f"margin {improvement:.6f} > tolerance {tolerance:g})", **common)
    if improvement < -(tolerance + _SCORE_EPSILON):
        return GateDecision(outcome="worse", reason=f"the candidate loses: {versus} ({direction} is better, "
                            f"short by {-improvement:.6f}); production is kept", **common)
    return GateDecision(outcome="tie", reason=f"a tie within the tolerance {tolerance:g}: {versus}; production is "
                        f"kept (a candidate must win by more than the tolerance)", **common)


def score_bundle_on_holdout(bundle_path: Path, cfg: Config, metric: str) -> tuple[float, int, dict[str, Any]]:
    """(score, rows, manifest) of a bundle on the snapshot's holdout; the bundle is verified when loaded.

    A bundle trained on this very snapshot was scored on this holdout by its evaluate stage: its verified
    manifest already holds the score, so the models are not loaded and run again (the gate of a meta-only
    retrain would otherwise cost more than the retrain).
    """
    from foldstack.bundle import load_bundle, verify_bundle
    from foldstack.core.metrics import classification_report
    from foldstack.pipeline.stages import load_snapshot

    snapshot = load_snapshot(cfg)
    manifest = verify_bundle(bundle_path)
    recorded = manifest.get("metrics", {}).get(f"ensemble.{metric}")
    if (recorded is not None and manifest.get("data_hash") == snapshot.data_hash
            and [str(x) for x in manifest["labels"]] == snapshot.label_map.names):
        return float(recorded), len(snapshot.holdout), manifest
    bundle = load_bundle(bundle_path)
    if [str(x) for x in bundle.labels] != snapshot.label_map.names:
        raise _Incomparable(f"its labels {bundle.labels} differ from the holdout's {snapshot.label_map.names}")
    texts = snapshot.holdout["text"].tolist()
    proba = bundle.predict_proba(texts)  # normalised by the bundle, as its training data was
    report = classification_report(snapshot.holdout["label"].to_numpy(), proba, snapshot.label_map.names,
                                   cfg.evaluate.ece_bins)
    return float(report[metric]), len(texts), bundle.manifest


class _Incomparable(Exception):
    pass


def evaluate_gate(cfg: Config, candidate_path: Path, production_path: Path | None, *,
                  candidate_version: str | None = None, production_version: str | None = None) -> GateDecision:
    """Score the candidate and production bundles on the current snapshot's holdout and decide."""
    from foldstack.pipeline.stages import load_snapshot

    metric, tolerance = cfg.registry.gate_metric, cfg.registry.gate_tolerance
    snapshot = load_snapshot(cfg)
    try:
        candidate_score, rows, candidate_manifest = score_bundle_on_holdout(candidate_path, cfg, metric)
    except _Incomparable as exc:
        raise RegistryError(f"the candidate cannot be scored on this holdout: {exc}") from None
    if candidate_manifest.get("data_hash") != snapshot.data_hash:
        raise RegistryError(
            f"the candidate was trained on data {candidate_manifest.get('data_hash')} but the snapshot in "
            f"{cfg.resolve_path(cfg.runtime.artifacts_dir)} is data {snapshot.data_hash}: the gate must score it on "
            f"its own holdout; push it with the params it was trained with")
    common = {"candidate_version": candidate_version, "production_version": production_version,
              "holdout_rows": rows}
    if production_path is None:
        return gate_decision(metric, candidate_score, None, tolerance, **common)
    notes = []
    try:
        production_score, _, production_manifest = score_bundle_on_holdout(production_path, cfg, metric)
    except (_Incomparable, BundleError) as exc:
        return GateDecision(metric=metric, tolerance=tolerance, outcome="incomparable", candidate_score=candidate_score,
                            reason=f"production {production_version} cannot be scored on this holdout ({exc}); "
                                   f"production is kept; promote by hand if the candidate should replace it",
                            **common)
    if production_manifest.get("data_hash") != snapshot.data_hash:
        notes.append(f"production was trained on data {production_manifest.get('data_hash')}, the candidate on "
                     f"{snapshot.data_hash}: if those datasets overlap, production may have seen some of this "
                     f"holdout and its score is optimistic")
    return gate_decision(metric, candidate_score, production_score, tolerance, notes=notes, **common)


# ============================================================================================ W&B links
def _run_wandb_sync(run_dir: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "wandb", "sync", str(run_dir)], capture_output=True, text=True,
                          timeout=1800, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"`wandb sync {run_dir}` failed: {(done.stderr or done.stdout).strip()[-500:]}")


def _default_api() -> Any:
    import wandb

    return wandb.Api(timeout=60)


class WandbLinks:
    """Links of logged model artifacts into the W&B registry, with a ledger of the ones still pending.

    The ledger is one JSON file per link under `<tracking.dir>/foldstack-links/`, processed in creation
    order (so the `production` alias ends where the last promotion put it). A new entry is a new file, written
    once (atomically), so writers never meet; `sync` rewrites entries, and holds the ledger's lock
    (`foldstack-links/.lock`) while it does, so two syncs at once perform each link once. `api_factory` and
    `run_syncer` are W&B's `wandb.Api` and `wandb sync`; tests replace them because W&B cannot be reached from
    CI.
    """

    def __init__(self, cfg: Config, *, api_factory: Callable[[], Any] | None = None,
                 run_syncer: Callable[[Path], None] | None = None, sleep: Callable[[float], None] = time.sleep):
        self.ledger = cfg.resolve_path(cfg.tracking.dir) / "foldstack-links"
        self.target = registry_target(cfg)
        self.retries = cfg.registry.link_retries
        self.api_factory = api_factory or _default_api
        self.run_syncer = run_syncer or _run_wandb_sync
        self.sleep = sleep

    def _retry(self, what: str, action: Callable[[], Any]) -> Any:
        for attempt in range(self.retries + 1):
            try:
                return action()
            except Exception as exc:  # network and server errors have many types in wandb
                if attempt == self.retries:
                    raise
                delay = min(2.0 ** attempt, 30.0)
                log.warning("%s failed (%s); retrying in %.0fs (%d/%d)", what, exc, delay, attempt + 1, self.retries)
                self.sleep(delay)
        raise AssertionError("unreachable")

    def link_in_run(self, run: Any, artifact: Any, aliases: list[str]) -> str | None:
        """Online: link a just-logged artifact from its run. Returns None when linked, else the error."""
        try:
            self._retry(f"linking into {self.target}",
                        lambda: run.link_artifact(artifact, self.target, aliases=list(aliases)))
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    # -- ledger
    def record(self, *, version: str | None, run_path: str | None, run_dir: str | None, artifact_name: str,
               qualified_name: str | None, aliases: list[str], status: str, error: str | None = None) -> dict:
        entry = {"id": f"{time.time_ns():020d}-{uuid.uuid4().hex[:6]}", "created": _now(), "version": version,
                 "run_path": run_path, "run_dir": run_dir, "run_synced": run_dir is None,
                 "artifact_name": artifact_name, "qualified_name": qualified_name, "target": self.target,
                 "aliases": list(aliases), "status": status, "attempts": 0 if status == "pending" else 1,
                 "last_error": error, "linked_at": _now() if status == "linked" else None}
        write_json(self.ledger / f"{entry['id']}.json", entry)
        return entry

    def entries(self, status: str | None = None) -> list[dict[str, Any]]:
        if not self.ledger.is_dir():
            return []
        found = [read_json(p) for p in sorted(self.ledger.glob("*.json"))]
        return [e for e in found if status is None or e["status"] == status]

    def _save(self, entry: dict[str, Any]) -> None:
        write_json(self.ledger / f"{entry['id']}.json", entry)

    def reference_for(self, version: str) -> dict[str, Any] | None:
        """The newest ledger entry of a registry version: which run logged its artifact."""
        matches = [e for e in self.entries() if e.get("version") == version]
        return matches[-1] if matches else None

    @property
    def lock_file(self) -> Path:
        return self.ledger / ".lock"  # not *.json: never read as an entry

    def sync(self) -> list[dict[str, Any]]:
        """Upload offline runs and perform every pending link, oldest first; returns the processed entries.

        A failure leaves the entry pending (with the error) and moves on: nothing is lost, `sync` can rerun.
        """
        with exclusive_lock(self.lock_file, guarding=f"the W&B registry-link ledger {self.ledger}"):
            return self._sync_pending()

    def _sync_pending(self) -> list[dict[str, Any]]:
        processed = []
        synced_runs: set[str] = set()
        for entry in self.entries("pending"):
            entry["attempts"] += 1
            try:
                if entry.get("run_dir") and not entry.get("run_synced"):
                    if entry["run_dir"] not in synced_runs:
                        run_dir = Path(entry["run_dir"])
                        self._retry(f"wandb sync {run_dir}", functools.partial(self.run_syncer, run_dir))
                        synced_runs.add(entry["run_dir"])
                    entry["run_synced"] = True
                api = self.api_factory()
                artifact = self._find_artifact(api, entry)
                self._retry(f"linking {entry['qualified_name']} into {entry['target']}",
                            functools.partial(artifact.link, entry["target"], aliases=entry["aliases"]))
                entry.update(status="linked", linked_at=_now(), last_error=None)
            except Exception as exc:
                entry["last_error"] = f"{type(exc).__name__}: {exc}"
                log.warning("W&B link of %s (%s) is still pending: %s", entry.get("version"),
                            ", ".join(entry["aliases"]), entry["last_error"])
            self._save(entry)
            processed.append(entry)
        return processed

    def _find_artifact(self, api: Any, entry: dict[str, Any]) -> Any:
        if entry.get("qualified_name"):
            return api.artifact(entry["qualified_name"], type="model")
        if not entry.get("run_path"):
            raise RegistryError(f"pending link {entry['id']} names neither an artifact nor a run")
        run = api.run(entry["run_path"])
        for artifact in run.logged_artifacts():
            if artifact.type == "model" and artifact.name.split(":")[0] == entry["artifact_name"]:
                entry["qualified_name"] = artifact.qualified_name
                return artifact
        raise RegistryError(f"run {entry['run_path']} logged no model artifact {entry['artifact_name']!r} "
                            f"(was the offline run uploaded?)")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ================================================================================= the registration step
def _decision_dir(cfg: Config) -> Path:
    from foldstack.pipeline.stages import Layout

    return Layout.of(cfg).root / "registry"


def write_decision(cfg: Config, outcome: Mapping[str, Any], decision: GateDecision | None) -> Path:
    """artifacts/registry/decision.json (+ decision.md): the latest registration's version and gate."""
    directory = _decision_dir(cfg)
    write_json(directory / "decision.json", dict(outcome))
    text = decision.markdown() if decision else "# Promotion gate: not run\n\nthe git-native registry is off\n"
    header = (f"version {outcome.get('version') or '-'} of {cfg.registry.model_name}; production now "
              f"{outcome.get('production_version') or '-'}; promoted: {outcome.get('promoted')}\n\n")
    tmp = directory / f".decision.md.{uuid.uuid4().hex[:6]}"
    tmp.write_text(header + text, encoding="utf-8")
    os.replace(tmp, directory / "decision.md")
    return directory / "decision.json"


def register_bundle(cfg: Config, bundle_path: Path | str | None = None, *, log_pipeline: bool = True,
                    environ: Mapping[str, str] | None = None, links: WandbLinks | None = None) -> dict[str, Any]:
    """Verify, register, gate, maybe promote, and log to W&B one bundle (default: the pipeline's bundle).

    The one call behind `foldstack registry push` and the train flow's register step. Production moves only
    after the bundle verified, the version was registered and the gate passed (and `registry.auto_promote`);
    anything failing before that leaves production as it was. Returns a JSON-able summary:
    {version, created, promoted, production_version, previous_production, gate: {...}, decision_file,
     tracking: {mode, run_path, run_dir}, wandb_link: {status, target, aliases, error}}.
    """
    from foldstack.pipeline.stages import Layout
    from foldstack.ops.tracking import Tracker

    bundle_path = Path(bundle_path) if bundle_path else Layout.of(cfg).bundle
    verify_bundle(bundle_path)  # refuse a modified bundle before anything is written anywhere
    tracker = Tracker(cfg, job_type="train" if log_pipeline else "register", environ=environ).start()
    succeeded = False
    try:
        if log_pipeline:
            tracker.log_pipeline()
        outcome, decision, logged_path = _register_and_gate(cfg, bundle_path)
        tracker.update_summary({f"gate/{k}": v for k, v in (decision.to_dict() if decision else {}).items()
                                if v is not None and not isinstance(v, (list, tuple))}
                               | {"registry/version": outcome["version"], "registry/promoted": outcome["promoted"],
                                  "registry/production": outcome["production_version"]})
        outcome["tracking"] = {"mode": tracker.mode, "run_path": tracker.run_path,
                               "run_dir": str(tracker.run_dir) if tracker.run_dir else None}
        outcome["wandb_link"] = _push_to_wandb(cfg, tracker, outcome, logged_path, decision,
                                               links or WandbLinks(cfg))
        tracker.write_run_manifest({"registry": outcome})
        succeeded = True
    finally:
        tracker.finish(exit_code=0 if succeeded else 1)
    return outcome


def _register_and_gate(cfg: Config, bundle_path: Path) -> tuple[dict[str, Any], GateDecision | None, Path]:
    outcome: dict[str, Any] = {"model": cfg.registry.model_name, "version": None, "created": False,
                               "promoted": False, "production_version": None, "previous_production": None,
                               "gate": None}
    if not cfg.registry.git_registry:
        outcome["decision_file"] = str(write_decision(cfg, outcome, None))
        return outcome, None, bundle_path
    registry = GitModelRegistry.from_config(cfg)
    # The gate and the promotion decide on what production is now: another push must not move it meanwhile.
    with registry.locked():
        outcome, decision, candidate_path = _register_and_gate_locked(cfg, registry, bundle_path, outcome)
        # Written before the lock is let go, so that the file describes the newest registration.
        outcome["decision_file"] = str(write_decision(cfg, outcome, decision))
    return outcome, decision, candidate_path


def _register_and_gate_locked(cfg: Config, registry: GitModelRegistry, bundle_path: Path,
                              outcome: dict[str, Any]) -> tuple[dict[str, Any], GateDecision | None, Path]:
    version, created = registry.register(bundle_path)
    candidate_path = registry.bundle_path(version)
    production = registry.production()
    dvc = version.record.get("dvc") or {}
    outcome.update(version=version.version, tag=version.tag, created=created,
                   previous_production=production.version if production else None,
                   bytes={"dvc_md5": dvc.get("md5"), "remote": dvc.get("remote")})
    if production is not None and production.version == version.version:
        decision = GateDecision(metric=cfg.registry.gate_metric, tolerance=cfg.registry.gate_tolerance,
                                outcome="is_production", candidate_version=version.version,
                                production_version=production.version,
                                reason=f"{version.version} is already the production version (same bundle)")
    else:
        production_path = None
        if production is not None:
            try:
                production_path = registry.ensure_local(production)  # pulled if this clone lacks it
            except (BundleError, RegistryError) as exc:
                decision = GateDecision(metric=cfg.registry.gate_metric, tolerance=cfg.registry.gate_tolerance,
                                        outcome="incomparable", candidate_version=version.version,
                                        production_version=production.version,
                                        reason=f"production {production.version} cannot be loaded ({exc}); "
                                               f"production is kept; promote by hand after checking it")
                outcome.update(gate=decision.to_dict(), production_version=production.version)
                return outcome, decision, candidate_path
        decision = evaluate_gate(cfg, candidate_path, production_path, candidate_version=version.version,
                                 production_version=production.version if production else None)
    if decision.passed and cfg.registry.auto_promote:
        registry.promote(version.version, reason=decision.reason)
        outcome["promoted"] = True
    elif decision.passed:
        log.warning("%s passed the gate but registry.auto_promote is off: promote it with "
                    "`foldstack registry promote %s`", version.version, version.version)
    now = registry.production()
    outcome.update(gate=decision.to_dict(), production_version=now.version if now else None)
    return outcome, decision, candidate_path


def _push_to_wandb(cfg: Config, tracker: Tracker, outcome: Mapping[str, Any], bundle_path: Path,
                   decision: GateDecision | None, links: WandbLinks) -> dict[str, Any]:
    """Log the bundle artifact and link it into the W&B registry (now if online, else a pending link)."""
    version = outcome.get("version")
    link_aliases = ["candidate"] + (["production"] if outcome.get("promoted") else [])
    result: dict[str, Any] = {"status": "disabled", "target": links.target, "aliases": link_aliases, "error": None}
    if not tracker.active:
        return result
    artifact_aliases = ["latest", *link_aliases] + ([f"registry-{version}"] if version else [])
    reference = tracker.log_bundle(bundle_path, aliases=artifact_aliases, version=version,
                                   extra_metadata={"gate": decision.to_dict() if decision else None},
                                   immutable=version is not None)  # a stored version is never rewritten
    if tracker.mode == "online":
        error = links.link_in_run(tracker.run, reference["artifact"], link_aliases)
    else:
        error = "offline: link_artifact needs a connection to W&B"
    status = "linked" if error is None else "pending"
    links.record(version=version, run_path=tracker.run_path,
                 run_dir=str(tracker.run_dir) if tracker.mode == "offline" else None,
                 artifact_name=reference["name"], qualified_name=reference["qualified_name"], aliases=link_aliases,
                 status=status, error=error)
    if status == "pending":
        log.warning("the W&B registry link of %s to %s is pending (%s); run `foldstack registry sync` once "
                    "online", version or "the bundle", links.target, error)
    result.update(status=status, error=error)
    return result


# ======================================================================================= manual commands
def _move_wandb_production(cfg: Config, version: str, environ: Mapping[str, str] | None = None,
                           links: WandbLinks | None = None) -> dict[str, Any]:
    """After a manual promote/rollback: point W&B's `production` alias at the same version (or queue it)."""
    from foldstack.ops.tracking import resolve_mode

    links = links or WandbLinks(cfg)
    mode = resolve_mode(cfg.tracking, environ)
    if mode == "disabled":
        return {"status": "disabled"}
    reference = links.reference_for(version)
    if reference is None:
        return {"status": "unknown", "error": f"no W&B artifact was logged for {version} (tracking was off)"}
    entry = links.record(version=version, run_path=reference["run_path"], run_dir=reference["run_dir"],
                         artifact_name=reference["artifact_name"], qualified_name=reference.get("qualified_name"),
                         aliases=["production"], status="pending",
                         error=None if mode == "online" else "offline: waiting for `foldstack registry sync`")
    if mode == "online":
        done = {e["id"]: e for e in links.sync()}
        entry = done.get(entry["id"], entry)
    return {"status": entry["status"], "error": entry["last_error"]}


def promote_version(cfg: Config, version: str, *, reason: str = "promoted by hand",
                    environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """`foldstack registry promote VERSION`: move production (git tags) and W&B's production alias."""
    registry = GitModelRegistry.from_config(cfg)
    with registry.locked():  # `previous` is what this promotion replaced, not what another one did meanwhile
        previous = registry.production()
        target = registry.promote(version, reason=reason)
    unchanged = previous is not None and previous.version == target.version
    return {"version": target.version, "previous_production": previous.version if previous else None,
            "wandb": {"status": "unchanged"} if unchanged else _move_wandb_production(cfg, target.version, environ)}


def rollback_production(cfg: Config, *, reason: str = "", environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """`foldstack registry rollback`: production goes back to the version it held before the current one."""
    registry = GitModelRegistry.from_config(cfg)
    from_version, to_version = registry.rollback(reason=reason)
    return {"from": from_version.version, "to": to_version.version,
            "wandb": _move_wandb_production(cfg, to_version.version, environ)}


def resolve_model(ref: str | Path, cfg: Config | None = None, *, params: str | Path | None = None) -> Path:
    """A bundle directory for `ref`: a bundle path as is, else 'production', 'latest' or a version from the
    git-native registry of `cfg` (or of the params file `params`, default params.yaml). The returned path's
    manifest is the registered one; `load_bundle` then verifies every file."""
    path = Path(ref)
    if (path / MANIFEST).is_file():
        return path
    if path.is_dir():
        raise BundleError(f"{path}: not a bundle (no {MANIFEST})")
    if cfg is None:
        from foldstack.config import DEFAULT_PARAMS_FILE, load_config

        cfg = load_config(params or DEFAULT_PARAMS_FILE)
    registry = GitModelRegistry.from_config(cfg)
    return registry.ensure_local(registry.resolve(str(ref)))


def resolve_model_version(ref: str, cfg: Config) -> tuple[Path, str]:
    """(bundle path, version) of a registry reference; the version is 'vX.Y.Z' (or the bundle id for a path)."""
    path = Path(ref)
    if (path / MANIFEST).is_file():
        manifest = read_json(path / MANIFEST)
        return path, manifest.get("registry_version") or manifest.get("bundle_id", path.name)
    registry = GitModelRegistry.from_config(cfg)
    version = registry.resolve(ref)
    return registry.ensure_local(version), version.version


def sync_pending(cfg: Config, *, links: WandbLinks | None = None,
                 environ: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """`foldstack registry sync`: upload offline runs and perform the pending W&B registry links."""
    from foldstack.ops.tracking import credentials_present

    env = os.environ if environ is None else environ
    if links is None:  # the real W&B: say what is missing before trying every pending link
        if env.get("WANDB_MODE", "").strip().lower() == "disabled":
            raise RegistryError("W&B is disabled here (WANDB_MODE=disabled); unset it to sync")
        if not credentials_present(env):
            raise RegistryError("no W&B credentials: set WANDB_API_KEY or run `wandb login`, then sync again")
        links = WandbLinks(cfg)
    return links.sync()


__all__ = [
    "PRODUCTION", "GateDecision", "GitModelRegistry", "ModelVersion", "PullError", "RegistryError", "StageEvent",
    "StoreProblem",
    "WandbLinks",
    "evaluate_gate", "gate_decision", "promote_version", "register_bundle",
    "registry_target", "resolve_model", "resolve_model_version", "rollback_production", "score_bundle_on_holdout",
    "sync_pending", "write_decision",
]
