"""Links of logged model artifacts into the W&B model registry, and the ledger of the links still pending.

Online, the logged model artifact is linked into `wandb-registry-model/<collection>` with alias `candidate`
(and `production` when promoted), retried with backoff. Offline (or after the retries fail) the link is
written to a pending-link ledger under `tracking.dir` and into the run's manifest; `foldstack registry sync`
uploads the offline run (`wandb sync`) and performs the links later.
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from foldstack.common.files import exclusive_lock, read_json, write_json
from foldstack.ops.registry.gate import GateDecision
from foldstack.ops.registry.git import RegistryError
from foldstack.ops.registry.version_bytes import registry_target, wandb_api
from foldstack.ops.tracking import Tracker, credentials_present, resolve_mode

if TYPE_CHECKING:
    from foldstack.config import Config

log = logging.getLogger("foldstack.ops.registry")


def _run_wandb_sync(run_dir: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "wandb", "sync", str(run_dir)], capture_output=True, text=True,
                          timeout=1800, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"`wandb sync {run_dir}` failed: {(done.stderr or done.stdout).strip()[-500:]}")


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
        self.model_name = cfg.registry.model_name  # the ledger is shared: an ensemble's and its student's links
        self.retries = cfg.registry.link_retries
        self.api_factory = api_factory or wandb_api
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
        """The newest ledger entry of a registry version of this model: which run logged its artifact."""
        matches = [e for e in self.entries() if e.get("version") == version
                   and e.get("artifact_name", self.model_name) == self.model_name]
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


def push_to_wandb(cfg: Config, tracker: Tracker, outcome: Mapping[str, Any], bundle_path: Path,
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
        # Offline the link is expected to wait (nothing to act on now); an online link that failed is a warning.
        log.log(logging.INFO if tracker.mode == "offline" else logging.WARNING,
                "the W&B registry link of %s to %s is pending (%s); run `foldstack registry sync` once online",
                version or "the bundle", links.target, error)
    result.update(status=status, error=error)
    return result


def move_wandb_production(cfg: Config, version: str, environ: Mapping[str, str] | None = None,
                          links: WandbLinks | None = None) -> dict[str, Any]:
    """After a manual promote/rollback: point W&B's `production` alias at the same version (or queue it)."""
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


def sync_pending(cfg: Config, *, links: WandbLinks | None = None,
                 environ: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """`foldstack registry sync`: upload offline runs and perform the pending W&B registry links."""
    env = os.environ if environ is None else environ
    if links is None:  # the real W&B: say what is missing before trying every pending link
        if env.get("WANDB_MODE", "").strip().lower() == "disabled":
            raise RegistryError("W&B is disabled here (WANDB_MODE=disabled); unset it to sync")
        if not credentials_present(env):
            raise RegistryError("no W&B credentials: set WANDB_API_KEY or run `wandb login`, then sync again")
        links = WandbLinks(cfg)
    return links.sync()


__all__ = ["WandbLinks", "move_wandb_production", "push_to_wandb", "sync_pending"]
