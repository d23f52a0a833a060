"""The distill stage: one student trained on the ensemble's honest soft targets, scored on the same holdout.

    artifacts/student/
        bundle/         a bundle like the ensemble's (hash-verified manifest, `role: student`): one base model,
                        the student, under a one-model mean; registered as `<registry.model_name>-student`
        holdout_proba.npy
        metrics.json    the student's holdout metrics (flat), what `evaluate` adds as `student.<metric>`
        summary.json    what was distilled: kind, alpha, temperature, rows, augmented copies, seconds

Targets (`foldstack.core.distill`): for a training row, the meta-learner's cross-validated prediction on the OOF
matrix (`stack/meta_cv_proba.npy`), mixed with the row's label by `distill.alpha`. Augmented copies of a row
(`distill.augment`) are labelled by each base model's fold members that never saw that row (the fold that held
it out, in every repeat), combined by the fitted meta-learner: the meta-learner itself saw the row's OOF
probabilities (never its text), a handful of weights that cannot memorise it. A copy that overlaps a training
text of another overlap group (by the folds' own grouping rules) is dropped: a member that never saw the source
may have seen that other text.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from foldstack.bundle import write_manifest
from foldstack.bundle.model_card import write_model_card
from foldstack.common.files import atomic_directory, derive_seed, load_array, save_array, write_json
from foldstack.config import Config
from foldstack.config.meta import WeightedMeanMetaConfig
from foldstack.core.crossfit import FULL_FIT
from foldstack.core.distill import augment_texts, copies_within_their_source_group, soft_targets
from foldstack.core.grouping import group_texts
from foldstack.core.meta import load_meta, make_meta
from foldstack.core.metrics import classification_report
from foldstack.errors import StageError
from foldstack.models import make_model, model_class
from foldstack.models.base import ModelContext, check_proba
from foldstack.pipeline.identities import plan_fold_tasks
from foldstack.core.data import Snapshot
from foldstack.core.folds import FoldAssignment
from foldstack.pipeline.layout import Layout, load_folds, load_snapshot, require
from foldstack.runtime.devices import resolve_device

STUDENT_NAME = "student"
STUDENT_MEMBER = "full"  # one model fitted on every training row (and its augmented copies)
SCALAR_METRICS = ("accuracy", "macro_f1", "log_loss", "roc_auc", "ece", "brier")


def honest_teacher_proba(cfg: Config, texts: list[str], sources: np.ndarray, snapshot: Snapshot,
                         folds: FoldAssignment) -> np.ndarray:
    """The ensemble's probabilities for `texts` derived from training rows `sources`, from fold members that never
    saw their source row: per base model, the mean over repeats of the member whose validation part held it."""
    layout = Layout.of(cfg)
    per_model = []
    for spec in cfg.base_models:
        proba = np.zeros((len(texts), snapshot.n_classes))
        cls = model_class(spec.kind)
        for task in plan_fold_tasks(cfg, [spec.name]):
            if task.fold == FULL_FIT:
                continue
            held_out = np.isin(sources, folds.split(task.repeat, task.fold)[1])
            if not held_out.any():
                continue
            member = cls.load(layout.fold_dir(spec.name, task.repeat, task.fold) / "model",
                              device=resolve_device(cfg.runtime.device), cache_dir=cfg.resolve_path(cfg.runtime.cache_dir))
            picked = [texts[i] for i in np.flatnonzero(held_out)]
            proba[held_out] += check_proba(member.predict_proba(picked), len(picked), snapshot.n_classes, spec.name)
        per_model.append(proba / folds.repeats)
    meta = load_meta(layout.stack / "meta")
    return check_proba(meta.predict_proba(per_model), len(texts), snapshot.n_classes, "teacher")


def distill(cfg: Config) -> dict[str, Any]:
    """Train the student on every training row with honest soft targets; score it on the holdout; write
    `artifacts/student/` (bundle included). With `distill.enabled: false` nothing is trained and the box holds
    only a summary saying so (a DVC stage must write its output either way)."""
    layout = Layout.of(cfg)
    if not cfg.distill.enabled:
        with atomic_directory(layout.student) as tmp:
            write_json(tmp / "summary.json", {"enabled": False})
        return {"enabled": False}
    require(layout.stack, "stack")
    started = time.perf_counter()
    snapshot = load_snapshot(cfg)
    folds = load_folds(cfg)
    d = cfg.distill
    texts = snapshot.train["text"].tolist()
    y = snapshot.train["label"].to_numpy()
    teacher = load_array(layout.stack / "meta_cv_proba.npy")
    if teacher.shape != (len(texts), snapshot.n_classes) or not np.all(np.isfinite(teacher)):
        raise StageError(f"{layout.stack / 'meta_cv_proba.npy'}: not one out-of-fold prediction per training row; "
                         "rerun the stack stage")
    targets = soft_targets(teacher, y, snapshot.n_classes, alpha=d.alpha, temperature=d.temperature)
    n_augmented = 0
    if d.augment.methods:
        extra, sources = augment_texts(texts, methods=d.augment.methods, copies=d.augment.copies,
                                       seed=derive_seed(cfg.seed, "distill-augment"),
                                       min_words=cfg.folds.grouping.min_contained_tokens)
        joint = group_texts(texts + extra, cfg.folds.grouping).groups
        keep = copies_within_their_source_group(joint, folds.group, sources)
        extra, sources = [text for text, kept in zip(extra, keep, strict=True) if kept], sources[keep]
        if extra:
            extra_targets = soft_targets(honest_teacher_proba(cfg, extra, sources, snapshot, folds), None, snapshot.n_classes,
                                         alpha=0.0, temperature=d.temperature)
            texts, targets, n_augmented = texts + extra, np.vstack([targets, extra_targets]), len(extra)
    context = ModelContext(n_classes=snapshot.n_classes, device=resolve_device(cfg.runtime.device),
                           seed=derive_seed(cfg.seed, "distill-student"),
                           cache_dir=cfg.resolve_path(cfg.runtime.cache_dir), base_dir=cfg.resolve_path("."))
    student = make_model(d.student.kind, d.student.params, context).fit_soft(texts, targets)
    holdout_texts = snapshot.holdout["text"].tolist()
    holdout_proba = check_proba(student.predict_proba(holdout_texts), len(holdout_texts), snapshot.n_classes,
                                STUDENT_NAME)
    report = classification_report(snapshot.holdout["label"].to_numpy(), holdout_proba,
                                   [str(label) for label in snapshot.label_map.labels], cfg.evaluate.ece_bins)
    metrics = {name: report[name] for name in SCALAR_METRICS if name in report}
    summary = {"enabled": True, "kind": d.student.kind, "alpha": d.alpha, "temperature": d.temperature,
               "augment": d.augment.model_dump(mode="json"), "rows": int(len(y)), "augmented_rows": n_augmented,
               "seconds": round(time.perf_counter() - started, 3), "metrics": metrics}
    with atomic_directory(layout.student) as tmp:
        _write_student_bundle(cfg, tmp / "bundle", student, report, summary, snapshot, folds, holdout_proba)
        save_array(tmp / "holdout_proba.npy", holdout_proba)
        write_json(tmp / "metrics.json", metrics)
        write_json(tmp / "summary.json", summary)
    return summary


def _write_student_bundle(cfg: Config, directory: Path, student: Any, report: dict[str, Any],
                          summary: dict[str, Any], snapshot: Snapshot, folds: FoldAssignment,
                          holdout_proba: np.ndarray) -> None:
    """The student as a bundle of the ensemble's format: one base model under a one-model mean (the identity), so
    loading, verification, serving and the registry treat it like any bundle."""
    student.save(directory / "base" / STUDENT_NAME / STUDENT_MEMBER)
    identity = make_meta(WeightedMeanMetaConfig(), snapshot.n_classes, cfg.seed)
    # The uniform mean learns nothing but the number of models (one): any row fits it.
    identity.fit([holdout_proba[:1]], np.asarray([0]))
    (directory / "meta").mkdir(parents=True)
    identity.save(directory / "meta")
    entry = {"name": STUDENT_NAME, "kind": cfg.distill.student.kind, "params": cfg.distill.student.params,
             "members": [STUDENT_MEMBER], "combine": "distilled student"}
    write_model_card(directory, data={"path": cfg.data.path, **snapshot.summary()}, reports={STUDENT_NAME: report},
                     base_models=[entry], meta={"kind": "weighted_mean", "reason": "one model: the mean is the identity"},
                     model=STUDENT_NAME, title=f"foldstack distilled student ({cfg.distill.student.kind})")
    write_manifest(
        directory, labels=snapshot.label_map.to_json(), params=cfg.model_dump(mode="json"),
        data_hash=snapshot.data_hash, fold_hash=folds.hash, base_models=[entry],
        meta={"kind": "weighted_mean", "requested": "weighted_mean", "path": "meta"},
        metrics=summary["metrics"], role="student",
        distill={k: summary[k] for k in ("kind", "alpha", "temperature", "augment", "rows", "augmented_rows")},
    )
