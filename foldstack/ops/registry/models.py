"""The models a project registers: the ensemble, and (with `distill.enabled`) its distilled student.

Each is a model of its own in the registry, with its own versions, production stage, store directory, gate
decision file and W&B collection:

    role      registry name              local bundle                decision file
    ensemble  <registry.model_name>      artifacts/bundle            artifacts/registry/decision.{json,md}
    student   <model_name>-student       artifacts/student/bundle    artifacts/registry/student-decision.{json,md}

A bundle's role is read from its manifest (`role: student`; no role: the ensemble), so a student bundle is
never registered as a version of the ensemble. Everything else about the two (registering, the gate,
promotion, pulling, serving) is the same code, given `model_config(cfg, role)`: the params with the role's
registry name and W&B collection.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from foldstack.ops.registry.git import RegistryError
from foldstack.pipeline.layout import Layout

if TYPE_CHECKING:
    from foldstack.config import Config

ENSEMBLE = "ensemble"
STUDENT = "student"
ROLES = (ENSEMBLE, STUDENT)
_SUFFIX = {ENSEMBLE: "", STUDENT: "-student"}
_DECISION = {ENSEMBLE: "decision", STUDENT: "student-decision"}


def bundle_role(manifest: Mapping[str, Any]) -> str:
    """The role a bundle's manifest declares (no `role`: an ensemble bundle, as every bundle before students)."""
    role = manifest.get("role") or ENSEMBLE
    if role not in ROLES:
        raise RegistryError(f"the bundle's manifest has role {role!r}; the registry knows {', '.join(ROLES)}")
    return role


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise RegistryError(f"no model role {role!r}; roles: {', '.join(ROLES)}")
    return role


def model_config(cfg: Config, role: str = ENSEMBLE) -> Config:
    """`cfg` with the registry name and W&B collection of `role`'s model; the ensemble's is `cfg` itself.

    The student's name is validated as `registry.model_name` is (GTO tags `<name>@vX.Y.Z`, a W&B artifact name).
    """
    if _check_role(role) == ENSEMBLE:
        return cfg
    registry = type(cfg.registry).model_validate(
        {**cfg.registry.model_dump(), "model_name": cfg.registry.model_name + _SUFFIX[role],
         "wandb_collection": cfg.registry.wandb_collection + _SUFFIX[role]})
    return cfg.model_copy(update={"registry": registry})


def registered_name(cfg: Config, role: str = ENSEMBLE) -> str:
    return model_config(cfg, role).registry.model_name


def local_bundle(cfg: Config, role: str = ENSEMBLE) -> Path:
    """Where the pipeline writes `role`'s bundle."""
    layout = Layout.of(cfg)
    return layout.bundle if _check_role(role) == ENSEMBLE else layout.student / "bundle"


def decision_name(role: str = ENSEMBLE) -> str:
    """The stem of `role`'s gate decision files under artifacts/registry/."""
    return _DECISION[_check_role(role)]


def pipeline_student(cfg: Config) -> Path | None:
    """The student bundle the pipeline wrote, when `distill.enabled` and it is there; else None."""
    path = local_bundle(cfg, STUDENT)
    return path if cfg.distill.enabled and (path / "manifest.json").is_file() else None


def student_ref(ref: str) -> str | None:
    """The registry reference inside a student reference - 'student' and 'student@production' -> 'production',
    'student@latest' -> 'latest', 'student@v0.2.0' -> 'v0.2.0' - or None when `ref` does not name the student."""
    head, at, tail = ref.partition("@")
    if head != STUDENT:
        return None
    if at and not tail:
        raise RegistryError(f"{ref!r}: give what follows the @ (student@production, student@latest, student@v0.2.0)")
    return tail or "production"


def holdout_metric_key(manifest: Mapping[str, Any], metric: str) -> str:
    """The key of the bundle's own holdout score of `metric` in its manifest's metrics: an ensemble bundle
    records every model of the run (`ensemble.log_loss`, `tfidf_lr.log_loss`, ...), a student only itself."""
    return metric if bundle_role(manifest) == STUDENT else f"ensemble.{metric}"


NO_STUDENT = "no student: set distill.enabled: true and run the pipeline"

__all__ = ["ENSEMBLE", "NO_STUDENT", "ROLES", "STUDENT", "bundle_role", "decision_name", "local_bundle",
           "holdout_metric_key", "model_config", "pipeline_student", "registered_name", "student_ref"]
