"""The bundle stage: assemble the bundle (foldstack.bundle's format) from the other stages' outputs."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from foldstack.bundle import write_manifest
from foldstack.bundle.model_card import write_model_card
from foldstack.common.files import atomic_directory, read_json
from foldstack.config import Config
from foldstack.core.crossfit import FULL_FIT
from foldstack.pipeline.identities import plan_fold_tasks
from foldstack.pipeline.layout import Layout, load_folds, load_snapshot


def write_bundle(cfg: Config, layout: Layout) -> Path:
    """Assemble the bundle from the stage outputs (base fold models, meta-learner, metrics)."""
    snapshot = load_snapshot(cfg)
    folds = load_folds(cfg)
    metrics_path = layout.eval / "metrics.json"
    metrics = read_json(metrics_path) if metrics_path.is_file() else {}
    tasks = plan_fold_tasks(cfg)
    use_full = cfg.runtime.refit_full
    with atomic_directory(layout.bundle) as tmp:
        base_entries = []
        for spec in cfg.base_models:
            members = []
            for task in tasks:
                if task.model != spec.name or (task.fold == FULL_FIT) != use_full:
                    continue
                source = layout.fold_dir(spec.name, task.repeat, task.fold)
                member = source.name
                shutil.copytree(source / "model", tmp / "base" / spec.name / member)
                members.append(member)
            base_entries.append({"name": spec.name, "kind": spec.kind, "params": spec.params,
                                 "members": members, "combine": "full refit" if use_full else "mean of fold models"})
        shutil.copytree(layout.stack / "meta", tmp / "meta")
        stacked = read_json(layout.stack / "meta_cv.json")
        # The fitted kind: with meta.kind auto, the one the CV chose.
        meta = {"kind": stacked["kind"], "requested": cfg.meta.kind, "path": "meta"}
        # Before the manifest, which hashes it: foldstack.load verifies the card like any model file.
        write_model_card(tmp, data={"path": cfg.data.path, **snapshot.summary()}, reports=_reports(layout),
                         base_models=base_entries, meta={**meta, "reason": stacked.get("reason")})
        write_manifest(
            tmp, labels=snapshot.label_map.to_json(), params=cfg.model_dump(mode="json"),
            data_hash=snapshot.data_hash, fold_hash=folds.hash, base_models=base_entries, meta=meta,
            metrics=metrics,
        )
    return layout.bundle


def _reports(layout: Layout) -> dict[str, Any]:
    """eval/reports.json (every model's holdout report), or nothing when evaluate has not run."""
    path = layout.eval / "reports.json"
    return read_json(path) if path.is_file() else {}


def make_bundle(cfg: Config) -> dict[str, Any]:
    path = write_bundle(cfg, Layout.of(cfg))
    return {"bundle": str(path)}
