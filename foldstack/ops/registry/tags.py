"""A model's versions and stages as GTO git tags: reading them in GTO's order, and writing them.

A registered version is an annotated GTO tag `<model_name>@vX.Y.Z` on a record commit of its own (GTO allows
one version per commit), whose message carries the version's record; the `production` stage is a GTO
assignment tag `<model_name>#production#N`. Stage state is read in the order of GTO's tag counter (not tag
timestamps, which have one-second resolution). Nothing here holds the registry's lock: its callers do
(foldstack.ops.registry.service).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import gto.api
from gto.constants import Action
from gto.exceptions import GTOException
from gto.tag import parse_name
from gto.versions import SemVer

from foldstack.common.files import sha256_file
from foldstack.ops.registry.git import RegistryError, git_identity, head_commit, run_git
from foldstack.ops.registry.models import ENSEMBLE, bundle_role
from foldstack.ops.registry.store import DirHash, pointer_path, pointer_text

log = logging.getLogger("foldstack.ops.registry")

PRODUCTION = "production"
RECORD_PREFIX = "foldstack-record: "  # the line of a version tag's message that holds its JSON record


def semver_key(version: str) -> tuple:
    parsed = SemVer.parse(version)
    # A release sorts after its pre-releases (1.0.0 > 1.0.0-rc1).
    return (parsed.major, parsed.minor, parsed.patch, parsed.prerelease is None, parsed.prerelease or "")


def normalise_version(text: str) -> str | None:
    """'1.2.0' or 'v1.2.0' -> 'v1.2.0'; None when `text` is not a semantic version."""
    candidate = text if text[:1] in ("v", "V") else f"v{text}"
    candidate = "v" + candidate[1:]
    return candidate if SemVer.is_valid(candidate) else None


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
        metrics = self.record.get("metrics", {})  # keyed `ensemble.<metric>`, a student's `student.<metric>`
        value = metrics.get(f"ensemble.{name}", metrics.get(f"student.{name}"))
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


class ModelTags:
    """The GTO tags of one model in one repository: its versions and stages, read and written."""

    def __init__(self, repo: Path, model_name: str, *, version_bump: str = "minor", push_tags: bool = False):
        self.repo = Path(repo)
        self.model_name = model_name
        self.version_bump = version_bump
        self.push_tags = push_tags

    # ------------------------------------------------------------------------------------------ reading
    def _tags(self) -> list[_Tag]:
        out = run_git(self.repo, "for-each-ref", "refs/tags",
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

    def state(self) -> tuple[dict[str, ModelVersion], list[StageEvent]]:
        """({version: ModelVersion} including deregistered ones, stage events in GTO's counter order)."""
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
        versions, _ = self.state()
        chosen = [v for v in versions.values() if include_deregistered or not v.deregistered]
        return sorted(chosen, key=lambda v: semver_key(v.version), reverse=True)

    def stage_events(self, stage: str = PRODUCTION) -> list[StageEvent]:
        return [e for e in self.state()[1] if e.stage == stage]

    def stage_version(self, stage: str = PRODUCTION) -> ModelVersion | None:
        """The version in `stage`: the last one assigned (by tag counter) and not unassigned since."""
        versions, events = self.state()
        live = {v: c for v, c in _active_assignments(events, stage).items()
                if v in versions and not versions[v].deregistered}
        return versions[max(live, key=live.get)] if live else None

    def get(self, version: str) -> ModelVersion:
        wanted = normalise_version(version)
        if wanted is None:
            raise RegistryError(f"{version!r} is not a version (expected vMAJOR.MINOR.PATCH, e.g. v0.2.0)")
        versions, _ = self.state()
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

    # ------------------------------------------------------------------------------------------- writing
    def bump(self, version: str) -> str:
        return SemVer(version).bump(**{f"bump_{self.version_bump}": True}).version

    def next_version(self) -> str:
        existing = self.versions(include_deregistered=True)  # never reuse a deregistered version's number
        if not existing:
            return {"major": "v1.0.0", "minor": "v0.1.0", "patch": "v0.0.1"}[self.version_bump]
        return self.bump(existing[0].version)

    def register(self, version: str, manifest: Mapping[str, Any], content_digest: str, stored_manifest: Path,
                 bundle_path: Path, dir_hash: DirHash | None = None, remote: str | None = None) -> str:
        """Make the version's record commit (with the bytes' DVC pointer) and its GTO tag; returns the tag."""
        role = bundle_role(manifest)
        prefix = f"{role}."  # a student's manifest holds its own scores only, unprefixed
        metrics = {k if role == ENSEMBLE else prefix + k: v for k, v in manifest.get("metrics", {}).items()}
        metrics = {k: v for k, v in metrics.items()
                   if k.startswith(prefix) and isinstance(v, (int, float)) and math.isfinite(v)}
        record = {
            "bundle_id": manifest["bundle_id"], "role": role, "content_digest": content_digest,
            "manifest_sha256": sha256_file(stored_manifest), "data_hash": manifest.get("data_hash"),
            "fold_hash": manifest.get("fold_hash"), "labels": manifest.get("labels"),
            "base_models": [m["name"] for m in manifest.get("base_models", [])],
            "meta": manifest.get("meta", {}).get("kind"), "metrics": metrics,
            "foldstack_version": manifest.get("foldstack_version"), "source_commit": head_commit(self.repo),
            "registered_from": str(bundle_path.resolve()),
            "registered_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        files = {}
        if dir_hash is not None:
            record["dvc"] = dir_hash.record(remote)
            files[pointer_path(self.model_name, version)] = pointer_text(self.model_name, version, dir_hash)
        commit = self._record_commit(version, record, files)
        name, email = git_identity(self.repo)
        summary = ", ".join(f"{m} {metrics[prefix + m]:.4f}" for m in ("log_loss", "accuracy", "macro_f1")
                            if prefix + m in metrics)
        message = (f"foldstack: register {self.model_name} {version} (bundle {manifest['bundle_id']}"
                   f"{'; ' + summary if summary else ''})\n\n{RECORD_PREFIX}{json.dumps(record, sort_keys=True)}")
        try:
            gto.api.register(self.repo, self.model_name, ref=commit, version=version, message=message,
                             author=name, author_email=email)
        except GTOException as exc:
            raise RegistryError(f"GTO could not register {self.model_name} {version}: {exc}") from exc
        return f"{self.model_name}@{version}"

    def _record_commit(self, version: str, record: dict[str, Any], files: Mapping[str, str] | None = None) -> str:
        """A commit of HEAD's tree (plus `files`: {path: text}) with HEAD as parent, for this version alone (GTO:
        one version per commit)."""
        name, email = git_identity(self.repo)
        env = {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email, "GIT_COMMITTER_NAME": name,
               "GIT_COMMITTER_EMAIL": email}
        head = head_commit(self.repo)  # None in a repository without commits yet: the record commit has no parent
        tree = self._tree_with(head, files or {})
        message = (f"foldstack registry: {self.model_name} {version}\n\n"
                   f"bundle {record['bundle_id']} (sha256 of files {record['content_digest'][:16]}), "
                   f"data {record.get('data_hash')}\n")
        args = ["commit-tree", tree, "-m", message] + (["-p", head] if head else [])
        return run_git(self.repo, *args, env=env).strip()

    def _tree_with(self, head: str | None, files: Mapping[str, str]) -> str:
        """HEAD's tree (empty without HEAD) with `files` added, written through a private index: neither the
        repository's index nor its working tree is touched."""
        if not files:
            return run_git(self.repo, "rev-parse", f"{head}^{{tree}}").strip() if head else \
                run_git(self.repo, "mktree", input_text="").strip()
        with tempfile.TemporaryDirectory(prefix="foldstack-index-") as scratch:
            env = {"GIT_INDEX_FILE": str(Path(scratch) / "index")}
            run_git(self.repo, "read-tree", *([head] if head else ["--empty"]), env=env)
            for path, text in files.items():
                blob = run_git(self.repo, "hash-object", "-w", "--stdin", input_text=text).strip()
                run_git(self.repo, "update-index", "--add", "--cacheinfo", f"100644,{blob},{path}", env=env)
            return run_git(self.repo, "write-tree", env=env).strip()

    def assign(self, version: str, stage: str, message: str) -> None:
        """Assign `stage` to `version`, then unassign every other version still in it."""
        name, email = git_identity(self.repo)
        try:
            gto.api.assign(self.repo, self.model_name, stage, version=version, message=message,
                           simple=False, force=True, author=name, author_email=email)
        except GTOException as exc:
            raise RegistryError(f"GTO could not assign {stage} to {version}: {exc}") from exc
        self.push(self._latest_stage_tag())
        for other in _active_assignments(self.state()[1], stage):
            if other == version:
                continue
            gto.api.unassign(self.repo, self.model_name, stage=stage, version=other, force=True,
                             message=f"superseded by {version}", author=name, author_email=email)
            self.push(self._latest_stage_tag())

    def deregister(self, version: str, *, reason: str) -> None:
        name, email = git_identity(self.repo)
        try:
            gto.api.deregister(self.repo, self.model_name, version=version, message=f"deregister: {reason}",
                               simple=False, force=True, author=name, author_email=email)
        except GTOException as exc:
            raise RegistryError(f"GTO could not deregister {self.model_name} {version}: {exc}") from exc
        self.push(self._newest_tag(f"{self.model_name}@{version}!"))

    def _newest_tag(self, prefix: str) -> str:
        names = [t.name for t in self._tags() if t.name.startswith(prefix)]
        return max(names, key=lambda n: (len(n), n)) if names else ""  # `...#10` after `...#9`

    def _latest_stage_tag(self) -> str:
        events = self.state()[1]
        return events[-1].tag if events else ""

    def push(self, tag: str) -> None:
        if not (self.push_tags and tag):
            return
        try:
            run_git(self.repo, "push", "origin", f"refs/tags/{tag}")
        except RegistryError as exc:
            log.warning("tag %s was made locally but not pushed (%s); push it with `git push origin --tags`",
                        tag, exc)


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


def _parse_record(message: str) -> dict[str, Any]:
    for line in message.splitlines():
        if line.startswith(RECORD_PREFIX):
            try:
                return json.loads(line[len(RECORD_PREFIX):])
            except ValueError:
                log.warning("a registry tag holds an unreadable record: %.80s", line)
    return {}
