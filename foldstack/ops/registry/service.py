"""The registry's calls behind the commands: register a bundle (verify, register, gate, maybe promote, log to
W&B), promote or roll back by hand, and resolve a reference ('production', 'latest', a version or a bundle
directory, or the distilled student: 'student', 'student@latest', ...) to a verified bundle's directory.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from foldstack.bundle import MANIFEST, verify_bundle
from foldstack.common.files import read_json
from foldstack.config import DEFAULT_PARAMS_FILE, Config, load_config
from foldstack.errors import BundleError
from foldstack.ops.registry.gate import GateDecision, evaluate_gate, write_decision
from foldstack.ops.registry.git import RegistryError
from foldstack.ops.registry.git_registry import GitModelRegistry
from foldstack.ops.registry.models import (ENSEMBLE, NO_STUDENT, STUDENT, bundle_role, decision_name, local_bundle,
                                           model_config, pipeline_student, student_ref)
from foldstack.ops.registry.tags import ModelVersion
from foldstack.ops.registry.wandb_links import WandbLinks, move_wandb_production, push_to_wandb
from foldstack.ops.tracking import Tracker
from foldstack.pipeline.stages import Layout

log = logging.getLogger("foldstack.ops.registry")


def register_bundle(cfg: Config, bundle_path: Path | str | None = None, *, log_pipeline: bool = True,
                    environ: Mapping[str, str] | None = None, links: WandbLinks | None = None) -> dict[str, Any]:
    """Verify, register, gate, maybe promote, and log to W&B one bundle (default: the pipeline's bundle).

    The one call behind `foldstack registry push` and the train flow's register step, for the ensemble and its
    student alike: the bundle's manifest says which it is (`role`), and a student bundle is registered, gated
    against and promoted as `<registry.model_name>-student` (`foldstack.ops.registry.models`), with the same
    gate settings, its decision in `artifacts/registry/student-decision.{json,md}`.
    Production moves only after the bundle verified, the version was registered and the gate passed (and
    `registry.auto_promote`); anything failing before that leaves production as it was. Returns a JSON-able
    summary: {model, role, version, created, promoted, production_version, previous_production, gate: {...},
    decision_file, tracking: {mode, run_path, run_dir}, wandb_link: {status, target, aliases, error}}.
    """
    bundle_path = Path(bundle_path) if bundle_path else Layout.of(cfg).bundle
    manifest = verify_bundle(bundle_path)  # refuse a modified bundle before anything is written anywhere
    role = bundle_role(manifest)
    cfg = model_config(cfg, role)  # the registry name (and W&B collection) of this bundle's model
    tracker = Tracker(cfg, job_type="train" if log_pipeline else "register", environ=environ).start()
    succeeded = False
    try:
        if log_pipeline:
            tracker.log_pipeline()
        outcome, decision, logged_path = _register_and_gate(cfg, bundle_path, role)
        tracker.update_summary({f"gate/{k}": v for k, v in (decision.to_dict() if decision else {}).items()
                                if v is not None and not isinstance(v, (list, tuple))}
                               | {"registry/version": outcome["version"], "registry/promoted": outcome["promoted"],
                                  "registry/production": outcome["production_version"]})
        outcome["tracking"] = {"mode": tracker.mode, "run_path": tracker.run_path,
                               "run_dir": str(tracker.run_dir) if tracker.run_dir else None}
        outcome["wandb_link"] = push_to_wandb(cfg, tracker, outcome, logged_path, decision,
                                              links or WandbLinks(cfg))
        tracker.write_run_manifest({"registry": outcome})
        succeeded = True
    finally:
        tracker.finish(exit_code=0 if succeeded else 1)
    return outcome


def register_models(cfg: Config, bundle_path: Path | str | None = None, *, student: bool = True,
                    log_pipeline: bool = True, environ: Mapping[str, str] | None = None,
                    links: WandbLinks | None = None) -> Iterator[dict[str, Any]]:
    """`register_bundle` of the ensemble's bundle, then - when `student`, `distill.enabled`, the bundle pushed is
    the pipeline's own and the distill stage wrote its student - of the student's: one outcome each, yielded as
    each is done (the register stage and `registry push`). The student is registered after the ensemble, so a
    failure to register the ensemble registers no student."""
    yield register_bundle(cfg, bundle_path, log_pipeline=log_pipeline, environ=environ, links=links)
    pipeline_bundle = bundle_path is None or Path(bundle_path).resolve() == Layout.of(cfg).bundle.resolve()
    student_bundle = pipeline_student(cfg) if student and pipeline_bundle else None
    if student and pipeline_bundle and cfg.distill.enabled and student_bundle is None:
        log.warning("distill.enabled but there is no student bundle in %s (has the distill stage run?): only the "
                    "ensemble was registered", local_bundle(cfg, STUDENT))
    if student_bundle is not None:
        yield register_bundle(cfg, student_bundle, log_pipeline=False, environ=environ, links=links)


def _register_and_gate(cfg: Config, bundle_path: Path,
                       role: str = ENSEMBLE) -> tuple[dict[str, Any], GateDecision | None, Path]:
    outcome: dict[str, Any] = {"model": cfg.registry.model_name, "role": role, "version": None, "created": False,
                               "promoted": False, "production_version": None, "previous_production": None,
                               "gate": None}
    name = decision_name(role)
    if not cfg.registry.git_registry:
        outcome["decision_file"] = str(write_decision(cfg, outcome, None, name=name))
        return outcome, None, bundle_path
    registry = GitModelRegistry.from_config(cfg)
    # The gate and the promotion decide on what production is now: another push must not move it meanwhile.
    with registry.locked():
        outcome, decision, candidate_path = _register_and_gate_locked(cfg, registry, bundle_path, outcome)
        # Written before the lock is let go, so that the file describes the newest registration.
        outcome["decision_file"] = str(write_decision(cfg, outcome, decision, name=name))
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


def promote_version(cfg: Config, version: str, *, reason: str = "promoted by hand",
                    environ: Mapping[str, str] | None = None, role: str = ENSEMBLE) -> dict[str, Any]:
    """`foldstack registry promote VERSION`: move production (git tags) and W&B's production alias (of the
    ensemble, or of its student with role='student')."""
    cfg = model_config(cfg, role)
    registry = GitModelRegistry.from_config(cfg)
    with registry.locked():  # `previous` is what this promotion replaced, not what another one did meanwhile
        previous = registry.production()
        target = registry.promote(version, reason=reason)
    unchanged = previous is not None and previous.version == target.version
    return {"model": cfg.registry.model_name, "version": target.version,
            "previous_production": previous.version if previous else None,
            "wandb": {"status": "unchanged"} if unchanged else move_wandb_production(cfg, target.version, environ)}


def rollback_production(cfg: Config, *, reason: str = "", environ: Mapping[str, str] | None = None,
                        role: str = ENSEMBLE) -> dict[str, Any]:
    """`foldstack registry rollback`: production goes back to the version it held before the current one."""
    cfg = model_config(cfg, role)
    registry = GitModelRegistry.from_config(cfg)
    from_version, to_version = registry.rollback(reason=reason)
    return {"model": cfg.registry.model_name, "from": from_version.version, "to": to_version.version,
            "wandb": move_wandb_production(cfg, to_version.version, environ)}


def resolve_model(ref: str | Path, cfg: Config | None = None, *, params: str | Path | None = None) -> Path:
    """A bundle directory for `ref`: a bundle path as is, else 'production', 'latest' or a version from the
    git-native registry of `cfg` (or of the params file `params`, default params.yaml), or the student:
    'student' (its production version, else - nothing of it registered - the pipeline's
    artifacts/student/bundle), 'student@production', 'student@latest', 'student@v0.2.0'. The returned path's
    manifest is the registered one; `load_bundle` then verifies every file."""
    return _locate(ref, cfg, params=params, refuse_other_directories=True)[0]


def resolve_model_version(ref: str, cfg: Config) -> tuple[Path, str]:
    """(bundle path, version) of a registry reference (`resolve_model`'s); the version is 'vX.Y.Z' (or, for a
    bundle path, the version its manifest names, else its bundle id). A directory that is not a bundle is taken
    for a stage's name, as any other reference."""
    path, version = _locate(ref, cfg, params=None, refuse_other_directories=False)
    if version is not None:
        return path, version.version
    manifest = read_json(path / MANIFEST)
    return path, manifest.get("registry_version") or manifest.get("bundle_id", path.name)


def _locate(ref: str | Path, cfg: Config | None, *, params: str | Path | None,
            refuse_other_directories: bool) -> tuple[Path, ModelVersion | None]:
    """(bundle directory, registered version; None for a bundle path), pulled first if this store lacks it."""
    path = Path(ref)
    if (path / MANIFEST).is_file():
        return path, None
    inner = student_ref(str(ref))
    if refuse_other_directories and path.is_dir() and inner is None:
        raise BundleError(f"{path}: not a bundle (no {MANIFEST})")
    cfg = cfg if cfg is not None else load_config(params or DEFAULT_PARAMS_FILE)
    if inner is not None:
        return _locate_student(cfg, inner, plain=str(ref) == STUDENT)
    registry = GitModelRegistry.from_config(cfg)
    version = registry.resolve(str(ref))
    return registry.ensure_local(version), version


def _locate_student(cfg: Config, ref: str, *, plain: bool) -> tuple[Path, ModelVersion | None]:
    """The student's `ref` in its own registry model. Plain 'student' is its production version, as
    'production' is the ensemble's; while nothing of the student is registered (or the git-native registry is
    off) it is the student bundle the pipeline wrote."""
    local = local_bundle(cfg, STUDENT)
    registry, why = None, "the git-native registry is off"
    if cfg.registry.git_registry:
        try:
            registry = GitModelRegistry.from_config(model_config(cfg, STUDENT))
        except RegistryError as exc:  # not in a git repository: no registry to hold a student either
            if not plain:
                raise
            why = str(exc)
    if registry is not None and plain and not registry.versions():
        registry, why = None, f"nothing is registered as {registry.model_name}"
    if registry is None:
        if plain and (local / MANIFEST).is_file():
            return local, None
        raise RegistryError(f"{NO_STUDENT} ({why}; there is no {local})")
    version = registry.resolve(ref)
    return registry.ensure_local(version), version


__all__ = ["promote_version", "register_bundle", "register_models", "resolve_model", "resolve_model_version",
           "rollback_production"]
__all__ = ["promote_version", "register_bundle", "resolve_model", "resolve_model_version", "rollback_production"]
