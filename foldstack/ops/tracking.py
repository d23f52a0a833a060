"""Experiment tracking with Weights & Biases: one W&B run per pipeline run, logged by one process.

Everything logged is read back from the pipeline's files (params, snapshot, fold tasks, OOF summaries, metrics,
leaderboard, plots, bundle) after the stages wrote them, so tracking never runs inside a parallel fold worker
and a tracking failure cannot corrupt a stage. `Tracker.start` refuses to log from a worker process.

Modes (`tracking.mode` in params.yaml, resolved by `resolve_mode`):
- `online`  : a W&B API key is configured (`WANDB_API_KEY`, or `wandb login` wrote it to ~/.netrc);
- `offline` : the default without a key; the run is written under `tracking.dir` (inside the project) and
              uploaded later with `wandb sync` (`foldstack registry sync` does that, then the pending links);
- `disabled`: nothing is written (tests). `WANDB_MODE=disabled` in the environment always wins.
`auto` picks online when credentials are present, else offline (or what `WANDB_MODE` says). An online run
that cannot reach W&B falls back to offline with a warning: a network failure never loses the run.

Each run is named `<job type>-<data hash>-<MMDD-HHMM>` and tagged with the model's name, `meta:<kind>` and, in a
Prefect flow run, `prefect:<flow run id>`; the flow run (id, name, UI page) is in its config under `prefect`.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import netrc
import os
import subprocess
import sys
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import numpy as np

from foldstack.errors import FoldstackError
from foldstack.common.files import load_array, read_json, write_json
from foldstack.common.version import __version__
from foldstack.pipeline.stages import Layout, load_snapshot

if TYPE_CHECKING:
    from foldstack.config import Config, TrackingConfig

log = logging.getLogger("foldstack.ops.tracking")

MODES = ("online", "offline", "disabled")
RUN_MANIFEST = "foldstack-run.json"  # foldstack's own record inside the W&B run's files directory
ARTIFACT_MANIFEST = "foldstack-artifact-manifest.json"


class TrackingError(FoldstackError):
    """Experiment tracking cannot be set up as configured."""


# ------------------------------------------------------------------------------------------------ modes
def credentials_present(environ: Mapping[str, str] | None = None) -> bool:
    """True when W&B could authenticate: an API key in the environment or a netrc entry for the W&B host."""
    env = os.environ if environ is None else environ
    if env.get("WANDB_API_KEY", "").strip():
        return True
    host = urlparse(env.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
    try:
        entry = netrc.netrc(env.get("NETRC") or None).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def resolve_mode(tracking: TrackingConfig, environ: Mapping[str, str] | None = None) -> str:
    """The mode a run is logged in: `online`, `offline` or `disabled` (see the module docstring)."""
    env = os.environ if environ is None else environ
    env_mode = env.get("WANDB_MODE", "").strip().lower()
    # The environment's kill switch beats params: tests and CI must never write or reach W&B.
    if env_mode == "disabled" or env.get("WANDB_DISABLED", "").strip().lower() in ("1", "true", "yes"):
        return "disabled"
    requested = tracking.mode
    if requested == "auto":
        if env_mode in ("offline", "dryrun"):
            return "offline"
        requested = "online" if credentials_present(env) else "offline"
    if requested == "online" and not credentials_present(env):
        log.warning("tracking.mode is online but no W&B credentials were found (WANDB_API_KEY or `wandb login`); "
                    "logging offline instead; upload later with `foldstack registry sync`")
        return "offline"
    return requested


# ----------------------------------------------------------------------------------------- provenance
def git_state(directory: Path) -> dict[str, Any]:
    """The code's git commit and whether the working tree has uncommitted changes (None outside git)."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(directory), *args], capture_output=True, text=True,
                                  timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "--verify", "-q", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"git_commit": commit, "git_dirty": bool(status) if status is not None else None}


def fold_metrics(cfg: Config) -> list[dict[str, Any]]:
    """Accuracy and log loss of every finished fold task on its own validation rows (from the stage files)."""
    layout = Layout.of(cfg)
    snapshot = load_snapshot(cfg)
    y = snapshot.train["label"].to_numpy()
    rows = []
    for spec in cfg.base_models:
        for task_dir in sorted(layout.base(spec.name).glob("fold-r*-k*")):
            task_file = task_dir / "task.json"
            if not (task_file.is_file() and (task_dir / "val_proba.npy").is_file()):
                continue
            task = read_json(task_file)
            val_rows = load_array(task_dir / "val_rows.npy")
            proba = load_array(task_dir / "val_proba.npy")
            if not len(val_rows):
                continue
            truth = y[val_rows]
            picked = np.clip(proba[np.arange(len(truth)), truth], 1e-15, 1.0)
            rows.append({
                "model": spec.name, "kind": spec.kind, "repeat": int(task["repeat"]), "fold": int(task["fold"]),
                "n_train": int(task["n_train"]), "n_val": int(task["n_val"]),
                "accuracy": float((proba.argmax(axis=1) == truth).mean()),
                "log_loss": float(-np.log(picked).mean()),
                "fit_seconds": float(task.get("fit_seconds", math.nan)),
            })
    return rows


def prefect_flow_run() -> dict[str, str]:
    """The Prefect flow run this process is in (id, name, its UI page when the server has a UI); {} outside
    one. Prefect is only asked when something here imported it already: outside a flow it is not loaded."""
    if "prefect" not in sys.modules:
        return {}
    try:
        from prefect.runtime import flow_run
        from prefect.settings import get_current_settings

        run_id = flow_run.get_id()
        ui_url = (get_current_settings().ui_url or "").rstrip("/")
    except Exception:  # no context, or a Prefect without these: the run is simply not linked
        return {}
    if not run_id:
        return {}
    info = {"flow_run_id": str(run_id), "flow_run_name": str(flow_run.get_name() or "")}
    if ui_url:
        info["flow_run_url"] = f"{ui_url}/runs/flow-run/{run_id}"
    return info


def run_name(job_type: str, data_hash: str | None, now: datetime | None = None) -> str:
    """`<job type>-<data hash, 8>-<MMDD-HHMM>`: which data, and when, readable in W&B's run list."""
    stamp = (now or datetime.now()).strftime("%m%d-%H%M")
    return "-".join(part for part in (job_type, (data_hash or "")[:8], stamp) if part)


def run_tags(cfg: Config, prefect: Mapping[str, str]) -> list[str]:
    """The model's name, the meta-learner kind and the Prefect flow run (when there is one)."""
    tags = [cfg.registry.model_name, f"meta:{cfg.meta.kind}"]
    if prefect.get("flow_run_id"):
        tags.append(f"prefect:{prefect['flow_run_id']}")
    return [tag[:64] for tag in tags]  # W&B's limit per tag


def _finite_scalars(values: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


# -------------------------------------------------------------------------------------------- tracker
class Tracker:
    """One W&B run: `start()`, log what the pipeline wrote, the bundle, the registry outcome; `finish()`.

    In `disabled` mode (or when refused in a worker process) every method is a cheap no-op and wandb is not
    even imported, so callers never branch on the mode.
    """

    def __init__(self, cfg: Config, *, job_type: str = "train", run_name: str | None = None,
                 environ: Mapping[str, str] | None = None):
        self.cfg = cfg
        self.job_type = job_type
        self.run_name = run_name
        self.mode = resolve_mode(cfg.tracking, environ)
        self.run: Any = None
        self.provenance: dict[str, Any] = {}
        self.tags: list[str] = []

    # -- lifecycle
    @property
    def active(self) -> bool:
        return self.run is not None

    @property
    def directory(self) -> Path:
        return self.cfg.resolve_path(self.cfg.tracking.dir)

    @property
    def run_dir(self) -> Path | None:
        """The run's local directory (`.../offline-run-*` or `.../run-*`), the unit `wandb sync` uploads."""
        return Path(self.run.dir).parent if self.run is not None else None

    @property
    def run_path(self) -> str | None:
        """entity/project/run_id; project/run_id offline without an entity (W&B's default entity on sync)."""
        if self.run is None:
            return None
        entity = self.cfg.tracking.entity or getattr(self.run, "entity", "") or ""
        return "/".join(part for part in (entity, self.cfg.tracking.project, self.run.id) if part)

    def __enter__(self) -> Tracker:
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish(exit_code=0 if exc_type is None else 1)

    def start(self) -> Tracker:
        if self.mode == "disabled" or self.run is not None:
            return self
        if multiprocessing.current_process().name != "MainProcess":
            # Parallel fold workers must not each open a run; the orchestrating process logs for them.
            log.warning("W&B tracking is only done by the orchestrating process; not logging from %s",
                        multiprocessing.current_process().name)
            self.mode = "disabled"
            return self
        self.provenance = self._provenance()
        prefect = prefect_flow_run()
        config = {**self.cfg.model_dump(mode="json"), "provenance": self.provenance,
                  **({"prefect": prefect} if prefect else {})}
        self.run_name = self.run_name or run_name(self.job_type, self.provenance.get("data_hash"))
        self.tags = run_tags(self.cfg, prefect)
        try:
            self.run = self._init(self.mode, config)
        except Exception as exc:  # wandb raises several types (CommError, UsageError, TimeoutError) when offline
            if self.mode != "online":
                raise TrackingError(f"could not start a {self.mode} W&B run under {self.directory}: {exc}") from exc
            log.warning("could not reach W&B (%s); logging this run offline instead; upload it later with "
                        "`foldstack registry sync`", exc)
            self.mode = "offline"
            self.run = self._init("offline", config)
        self.run.summary.update({k: v for k, v in self.provenance.items() if v is not None})
        return self

    def _init(self, mode: str, config: dict[str, Any]) -> Any:
        import wandb

        self.directory.mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings(
            silent=True, console="off", save_code=False, x_disable_stats=True,
            # foldstack records the commit itself (provenance); W&B's own probe warns outside a repo.
            disable_git=True, init_timeout=self.cfg.tracking.init_timeout_seconds,
        )
        return wandb.init(project=self.cfg.tracking.project, entity=self.cfg.tracking.entity,
                          dir=str(self.directory), mode=mode, job_type=self.job_type, name=self.run_name,
                          tags=self.tags, config=config, settings=settings, reinit="create_new")

    def finish(self, exit_code: int = 0) -> None:
        if self.run is None:
            return
        run, self.run = self.run, None
        run.finish(exit_code=exit_code)

    def _provenance(self) -> dict[str, Any]:
        layout = Layout.of(self.cfg)
        info: dict[str, Any] = {"foldstack_version": __version__, **git_state(self.cfg.resolve_path("."))}
        snapshot_json = layout.snapshot / "snapshot.json"
        folds_json = layout.folds / "folds.json"
        info["data_hash"] = read_json(snapshot_json).get("data_hash") if snapshot_json.is_file() else None
        info["fold_hash"] = read_json(folds_json).get("hash") if folds_json.is_file() else None
        return info

    # -- logging
    def log_pipeline(self) -> dict[str, int]:
        """Log what the stages wrote: per-fold and per-model metrics, meta-learner CV, leaderboard, plots.

        Returns how many of each were logged (all zero when inactive). Missing boxes are skipped: a partial
        pipeline is still worth its record.
        """
        counts = {"folds": 0, "models": 0, "plots": 0, "leaderboard_rows": 0}
        if self.run is None:
            return counts
        import pandas as pd
        import wandb

        layout = Layout.of(self.cfg)
        payload: dict[str, Any] = {}
        if (layout.snapshot / "snapshot.json").is_file():
            folds = fold_metrics(self.cfg)
            if folds:
                payload["folds"] = wandb.Table(dataframe=pd.DataFrame(folds))
                counts["folds"] = len(folds)
        for spec in self.cfg.base_models:
            summary_file = layout.base(spec.name) / "summary.json"
            if summary_file.is_file():
                self.run.summary.update({f"oof/{spec.name}/{k}": v for k, v in
                                         _finite_scalars(read_json(summary_file)).items()})
        meta_cv = layout.stack / "meta_cv.json"
        if meta_cv.is_file():
            self.run.summary.update({f"meta_cv/{k}": v for k, v in _finite_scalars(read_json(meta_cv)["cv"]).items()})
        reports_file = layout.eval / "reports.json"
        if reports_file.is_file():
            for model, report in read_json(reports_file).items():
                self.run.summary.update({f"holdout/{model}/{k}": v for k, v in _finite_scalars(report).items()})
                counts["models"] += 1
        board_file = layout.eval / "leaderboard.csv"
        if board_file.is_file():
            board = pd.read_csv(board_file)
            payload["leaderboard"] = wandb.Table(dataframe=board)
            counts["leaderboard_rows"] = len(board)
        if self.cfg.tracking.log_plots and (layout.eval / "plots").is_dir():
            for png in sorted((layout.eval / "plots").glob("*.png")):
                payload[f"plots/{png.stem}"] = wandb.Image(str(png))
                counts["plots"] += 1
        if payload:
            self.run.log(payload)
        return counts

    def log_bundle(self, bundle_path: Path, *, aliases: list[str], version: str | None = None,
                   extra_metadata: Mapping[str, Any] | None = None, immutable: bool = False) -> dict[str, Any] | None:
        """Log the bundle as a W&B `model` Artifact with metadata (metrics, labels, data hash) and aliases.

        `immutable=True` (a registered version's directory, never rewritten) lets W&B reference the files in
        place instead of copying them into its staging area. Returns a reference to the logged artifact:
        {"artifact": the Artifact object, "name", "aliases", "qualified_name" (online only, once uploaded)}.
        """
        if self.run is None:
            return None
        import wandb

        manifest = read_json(Path(bundle_path) / "manifest.json")
        metadata = {
            "metrics": _finite_scalars(manifest.get("metrics", {})), "labels": manifest.get("labels"),
            "data_hash": manifest.get("data_hash"), "fold_hash": manifest.get("fold_hash"),
            "bundle_id": manifest.get("bundle_id"), "foldstack_version": manifest.get("foldstack_version"),
            "base_models": [m["name"] for m in manifest.get("base_models", [])],
            "meta": manifest.get("meta", {}).get("kind"), "registry_version": version,
            **dict(extra_metadata or {}),
        }
        artifact = wandb.Artifact(self.cfg.registry.model_name, type="model", metadata=metadata,
                                  description=f"foldstack stacked ensemble {version or manifest.get('bundle_id')}")
        artifact.add_dir(str(bundle_path), policy="immutable" if immutable else "mutable")
        # The artifact manifest (file digests) beside the run, readable without W&B's binary log.
        write_json(Path(self.run.dir) / ARTIFACT_MANIFEST, artifact.manifest.to_manifest_json())
        logged = self.run.log_artifact(artifact, aliases=list(dict.fromkeys(aliases)))
        reference: dict[str, Any] = {"artifact": logged, "name": self.cfg.registry.model_name,
                                     "aliases": list(aliases), "qualified_name": None}
        if self.mode == "online":
            try:
                logged.wait(timeout=int(self.cfg.tracking.init_timeout_seconds * 4))
                reference["qualified_name"] = logged.qualified_name
            except Exception as exc:  # the upload continues in the background; the link step retries
                log.warning("the model artifact is still uploading (%s)", exc)
        return reference

    def update_summary(self, values: Mapping[str, Any]) -> None:
        if self.run is not None:
            self.run.summary.update(dict(values))

    def write_run_manifest(self, record: Mapping[str, Any]) -> Path | None:
        """foldstack's record of this run (registry version, gate, pending links) in the run's files."""
        if self.run is None:
            return None
        path = Path(self.run.dir) / RUN_MANIFEST
        existing = read_json(path) if path.is_file() else {}
        write_json(path, {**existing, "run_id": self.run.id, "run_path": self.run_path, "mode": self.mode,
                          "run_dir": str(self.run_dir), **dict(record)})
        return path


def track_pipeline_run(cfg: Config, *, job_type: str = "train",
                       environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Log a finished pipeline run (no bundle registration) in one W&B run; returns where it went."""
    with Tracker(cfg, job_type=job_type, environ=environ) as tracker:
        counts = tracker.log_pipeline()
        return {"mode": tracker.mode, "run_dir": str(tracker.run_dir) if tracker.run_dir else None,
                "run_path": tracker.run_path, **counts}
