"""Where a registered version's bytes travel: the DVC project's cache and default remote, else the W&B model
registry (online only); and the check that fetched bytes are exactly the registered bundle.

The DVC side itself (hashing a directory into the cache, pushing and fetching its objects) is
foldstack.ops.registry.store; without a DVC remote a version's bytes stay in the local store and `foldstack
registry upload` sends them once one is configured.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from foldstack.bundle import MANIFEST, verify_bundle
from foldstack.common.files import sha256_file, sha256_json
from foldstack.errors import BundleError
from foldstack.ops.registry.store import DirHash, DvcBytes, RemoteBytesError, one_line
from foldstack.ops.registry.tags import ModelVersion
from foldstack.ops.tracking import resolve_mode

if TYPE_CHECKING:
    from foldstack.config import Config

log = logging.getLogger("foldstack.ops.registry")


class VersionBytes:
    """Where one registry's versions' bytes travel: the DVC project's cache and default remote, else the W&B
    model registry. Errors are RemoteBytesErrors; those of `fetch` complete "<model> <version>: its bundle is
    not in the local store and ..."."""

    _said_local_only: set[str] = set()  # stores whose "bytes are local only" note this process has shown

    def __init__(self, model_name: str, store: Path, dvc: DvcBytes, wandb: WandbBytes | None = None):
        self.model_name = model_name
        self.store = Path(store)
        self.dvc = dvc
        self.wandb = wandb

    # ------------------------------------------------------------------------------------------- register
    def save(self, version: str, path: Path) -> tuple[DirHash, str | None]:
        """Version a stored directory with DVC before its tag: hash it into the project's cache and push it to
        the default remote; (its DVC hash, the remote or None when there is none). A failed push raises."""
        try:
            dir_hash = self.dvc.hash_directory(path)
            remote = self.dvc.default_remote()
        except Exception as exc:  # DVC's errors have many types (a broken config, an unreadable cache)
            raise RemoteBytesError(f"DVC could not version {path}: {one_line(exc)}") from None
        if remote is None:
            if str(self.store) not in self._said_local_only:
                self._said_local_only.add(str(self.store))
                hint = self.dvc.no_remote_hint()
                log.warning("%s %s: no DVC remote is configured, so its bytes are only in %s on this machine and "
                            "another clone cannot pull it. %s%s; then `foldstack registry upload` sends the versions "
                            "registered meanwhile", self.model_name, version, self.store, hint[0].upper(), hint[1:])
            return dir_hash, None
        try:
            self.dvc.push(dir_hash, remote)
        except RemoteBytesError as exc:
            raise RemoteBytesError(f"{self.model_name} {version} was not registered: {exc}; a version is tagged "
                                   f"only once its bytes are on the remote, so push the bundle again when the remote "
                                   f"is reachable") from None
        return dir_hash, remote

    def upload(self, version: ModelVersion, path: Path, remote: str | None = None) -> tuple[str, str, bool]:
        """Send one stored version to the DVC remote unless it is there already: (version, what happened, ok).
        Bytes whose DVC hash is not the registered one are not sent."""
        remote = remote or self.dvc.default_remote()
        if remote is None:
            raise RemoteBytesError(f"nowhere to upload to: {self.dvc.no_remote_hint()}")
        dir_hash = DirHash.from_record(version.record)
        if dir_hash is None:
            return (version.version, "registered without a DVC hash (an older foldstack): push its bundle again as "
                                     "a new version to make it travel", False)
        if self.dvc.on_remote(dir_hash, remote, reading=False):
            return version.version, f"already on the DVC remote {remote!r}", True
        if not (path / "manifest.json").is_file():
            return version.version, f"neither in this store ({path}) nor on the DVC remote {remote!r}", False
        actual = self.dvc.hash_directory(path)
        if actual != dir_hash:
            return (version.version, f"{path} is not the registered bytes (DVC hash {actual.md5}, registered "
                                     f"{dir_hash.md5}): `foldstack registry check` verifies it", False)
        sent = self.dvc.push(dir_hash, remote)
        return version.version, f"pushed {sent} objects to the DVC remote {remote!r}", True

    # ----------------------------------------------------------------------------------------------- pull
    def fetch(self, version: ModelVersion, target: Path, remote: str | None = None) -> str:
        """Fetch `version`'s bytes into `target` (which must not exist) from the DVC remote (`remote`, default the
        project's default remote), or from the W&B registry when no DVC remote is configured and W&B is online;
        then verify them against the registration. Returns where they came from."""
        dir_hash = DirHash.from_record(version.record)
        pushed_to = (version.record.get("dvc") or {}).get("remote")
        try:
            remote = remote or self.dvc.default_remote()
        except Exception as exc:  # a DVC project whose config cannot be read
            raise RemoteBytesError(f"DVC cannot read the project {self.dvc.root}: {one_line(exc)}") from None
        if remote is not None and dir_hash is not None:
            log.warning("%s %s is not in the local store: fetching it from the DVC remote %r", self.model_name,
                        version.version, remote)
            try:
                source = f"the DVC remote {self.dvc.fetch(dir_hash, target, remote)}"
            except RemoteBytesError as exc:
                raise RemoteBytesError(f"cannot be pulled: {exc}{self._relative_remote_hint(remote)}") from None
            self.verify(version, target, source)
            return source
        if dir_hash is None:
            why = "it was registered without DVC versioning (by an older foldstack), so no DVC remote has it"
        elif pushed_to:
            why = (f"no DVC remote is configured here to pull it from (the registering machine pushed it to its "
                   f"remote {pushed_to!r}: `dvc remote add -d {pushed_to} <that url>`, or `dvc remote modify --local "
                   f"{pushed_to} url <that url>`); {self.dvc.no_remote_hint()}")
        else:
            why = ("it was registered without a DVC remote, so its bytes are only on the machine that registered it "
                   "(there: `dvc remote add -d storage <url>`, then `foldstack registry upload`)")
        note = "the W&B model registry was not asked (no params say where)" if self.wandb is None else \
            self.wandb.skipped
        if note is None:
            try:
                source = self.wandb.fetch(version.version, target)
            except RemoteBytesError as exc:
                note = str(exc)
            else:
                self.verify(version, target, source)
                return source
        raise RemoteBytesError(f"{why}; {note}")

    def verify(self, version: ModelVersion, target: Path, source: str) -> None:
        """Refuse fetched bytes unless they are exactly the registered bundle of `version`: its manifest (sha256
        in the record), every file the manifest lists (sha256), and the version it names."""
        record = version.record
        try:
            manifest = target / MANIFEST
            if not manifest.is_file():
                raise BundleError(f"it has no {MANIFEST}")
            expected = record.get("manifest_sha256")
            if expected and sha256_file(manifest) != expected:
                raise BundleError(f"its {MANIFEST} is not the one registered (sha256 {expected[:12]}...)")
            copied = verify_bundle(target)
            if record.get("content_digest") and sha256_json(copied["files"]) != record["content_digest"]:
                raise BundleError("its files are not the ones registered")
            if copied.get("registry_version") != version.version:
                raise BundleError(f"it names version {copied.get('registry_version')}")
        except BundleError as exc:
            raise RemoteBytesError(f"its copy from {source} does not match its registration ({exc}); refused, "
                                   f"nothing was written to the store") from None

    def remote_state(self, version: ModelVersion, detail: str) -> tuple[str, str] | None:
        """For `registry check`, a version whose bytes are not in this store (a clone that has not pulled it):
        None when the DVC remote holds them, (`missing`, why) when they were never pushed anywhere, and
        (`unavailable`, why) when they were but this checkout's remote
        cannot be asked or lacks them (`unavailable`: pushed once, so not known to be lost, and never repaired)."""
        dir_hash = DirHash.from_record(version.record)
        pushed_to = (version.record.get("dvc") or {}).get("remote")
        if dir_hash is None or not pushed_to:
            return "missing", detail  # never pushed anywhere: the bytes were only ever in this store
        try:
            remote = self.dvc.default_remote()
        except Exception as exc:
            return "unverified", f"{detail}, and DVC cannot read its project: {one_line(exc)}"
        if remote is None:
            return "unavailable", (f"{detail}; it was pushed to the DVC remote {pushed_to!r} and no DVC remote is "
                                   f"configured here to look for it")
        try:
            if self.dvc.on_remote(dir_hash, remote):
                return None
        except RemoteBytesError as exc:
            return "unavailable", f"{detail}; whether the DVC remote holds it is unknown: {exc}"
        # Pushed somewhere, but not to the remote this checkout names (another remote, or a relative URL that
        # each clone resolves to its own directory): not lost for sure, so never deregistered for it.
        return "unavailable", (f"{detail}, nor on the DVC remote {remote!r} here (the registering machine pushed "
                               f"it to its remote {pushed_to!r}: is this the same one?)")

    def _relative_remote_hint(self, remote: str) -> str:
        """Said when a pull failed from a remote whose URL is relative: then every clone has a remote of its own."""
        if self.dvc.root is None:
            return ""
        from configobj import ConfigObj

        urls = []
        for name in ("config", "config.local"):  # as DVC reads them: the local file wins
            path = self.dvc.root / ".dvc" / name
            try:
                section = ConfigObj(str(path)).get(f'remote "{remote}"', {}) if path.is_file() else {}
            except Exception:
                return ""
            urls.append(section.get("url"))
        url = urls[1] or urls[0]
        if not url or "://" in url or os.path.isabs(url):
            return ""
        return (f" (its URL {url!r} in .dvc/config is relative, so every clone has a remote of its own: point this "
                f"one at the registering machine's with `dvc remote modify --local {remote} url <path or url>`)")


def registry_target(cfg: Config) -> str:
    """The W&B registry collection a model is linked into: wandb-registry-<registry>/<collection>."""
    return f"wandb-registry-{cfg.registry.wandb_registry}/{cfg.registry.wandb_collection}"


class WandbBytes:
    """A registered version's bytes from the W&B model registry: the linked version of the collection
    `wandb-registry-<registry>/<collection>` whose metadata names the version, or the logged artifact's
    `registry-<version>` alias. Only when W&B is online; `skipped` says why not otherwise."""

    def __init__(self, cfg: Config, environ: Mapping[str, str] | None = None, api_factory: Any = None):
        self.cfg = cfg
        self.target = registry_target(cfg)
        self.environ = environ
        self.api_factory = api_factory

    @property
    def mode(self) -> str:
        return resolve_mode(self.cfg.tracking, self.environ)

    @property
    def skipped(self) -> str | None:
        """None when the W&B registry can be asked, else a note saying why it was not."""
        mode = self.mode
        if mode == "online":
            return None
        return (f"W&B is {mode} here, so the W&B model registry ({self.target}) was not asked (it needs a "
                f"connection and WANDB_API_KEY)")

    def fetch(self, version: str, target: Path) -> str:
        """Download `version` into `target` (which must not exist); returns the artifact's name."""
        if self.skipped:
            raise RemoteBytesError(self.skipped)
        try:
            api = self.api_factory() if self.api_factory else wandb_api()
            artifact = self._find(api, version)
            artifact.download(root=str(target))
        except RemoteBytesError:
            raise
        except Exception as exc:
            raise RemoteBytesError(f"cannot fetch {version} from the W&B model registry {self.target}: "
                                   f"{one_line(exc)}") from None
        return f"W&B {getattr(artifact, 'qualified_name', self.target)}"

    def _find(self, api: Any, version: str) -> Any:
        for artifact in api.artifacts("model", self.target):
            if (artifact.metadata or {}).get("registry_version") == version:
                return artifact  # the linked version in the registry collection
        project = "/".join(p for p in (self.cfg.tracking.entity, self.cfg.tracking.project) if p)
        try:
            return api.artifact(f"{project}/{self.cfg.registry.model_name}:registry-{version}", type="model")
        except Exception:
            raise RemoteBytesError(f"the W&B model registry {self.target} has no version whose metadata names "
                                   f"{version}, and {project} has no artifact alias registry-{version}") from None


def wandb_api() -> Any:
    import wandb

    return wandb.Api(timeout=60)


__all__ = ["VersionBytes", "WandbBytes", "registry_target", "wandb_api"]
