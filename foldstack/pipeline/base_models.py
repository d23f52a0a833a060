"""The base models' stages: one fold task's fit (`train_fold`), and the OOF matrix of each model assembled
from its folds (`collect_oof`)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from foldstack.common.files import atomic_directory, load_array, remove_stale_temporaries, save_array, write_json
from foldstack.config import Config
from foldstack.core import crossfit
from foldstack.core.crossfit import FULL_FIT, fill_oof
from foldstack.errors import StageError
from foldstack.pipeline.embedding_stats import EMBEDDING, embedding_counters
from foldstack.pipeline.identities import FoldTask, fold_task_done, fold_unit, plan_fold_tasks
from foldstack.pipeline.layout import Layout, Reporter, load_folds, load_snapshot, log_report, require
from foldstack.runtime.devices import resolve_device


def train_fold(cfg: Config, model: str, repeat: int, fold: int, device: str | None = None) -> dict[str, Any]:
    """Fit one base model on one fold's training part; predict its validation part and the holdout.

    Skips the work when a finished directory with the same identity exists (resume).
    """
    layout = Layout.of(cfg)
    snapshot = load_snapshot(cfg)
    folds = load_folds(cfg)
    unit = fold_unit(cfg, model, repeat, fold, folds.hash)
    task = FoldTask(model, repeat, fold, crossfit.fold_identity(unit, snapshot.data_hash, folds.hash))
    directory = layout.fold_dir(model, repeat, fold)
    if fold_task_done(cfg, task):
        return {"task": task.label, "identity": task.identity, "skipped": True, "seconds": 0.0}

    # A device handed over by the orchestrator is a lease it already made (cuda:i from the GPU slots): passed on
    # as it is, for the model to use. Without one, runtime.device is resolved here (auto -> cuda or cpu).
    device = device or resolve_device(cfg.runtime.device)
    started = time.perf_counter()
    fitted = crossfit.fit_unit(unit, snapshot.train["text"].tolist(), snapshot.train["label"].to_numpy(), folds,
                               n_classes=snapshot.n_classes, device=device,
                               cache_dir=cfg.resolve_path(cfg.runtime.cache_dir), base_dir=cfg.resolve_path("."),
                               holdout_texts=snapshot.holdout["text"].tolist())
    # Results, not identity inputs: texts encoded / from the cache and encode seconds, for kinds that embed.
    embedding = embedding_counters(fitted.model)
    extra = {EMBEDDING: embedding} if embedding is not None else {}
    remove_stale_temporaries(directory.parent)
    with atomic_directory(directory) as tmp:
        (tmp / "model").mkdir()
        fitted.model.save(tmp / "model")
        save_array(tmp / "val_rows.npy", fitted.val_rows.astype(np.int64))
        save_array(tmp / "val_proba.npy", fitted.val_proba)
        save_array(tmp / "holdout_proba.npy", fitted.holdout_proba)
        write_json(tmp / "task.json", {
            "identity": task.identity, "model": model, "kind": unit.spec.kind, "repeat": repeat, "fold": fold,
            "n_train": fitted.n_train, "n_val": int(len(fitted.val_rows)), "device": device, "seed": unit.seed,
            "fit_seconds": round(fitted.fit_seconds, 3), "seconds": round(time.perf_counter() - started, 3), **extra,
        })
    return {"task": task.label, "identity": task.identity, "skipped": False,
            "seconds": round(time.perf_counter() - started, 3), "device": device, **extra}


def collect_oof(cfg: Config, model: str) -> dict[str, Any]:
    """Assemble OOF[model] (NaN until filled, each row exactly once per repeat) and its holdout mean."""
    layout = Layout.of(cfg)
    snapshot = load_snapshot(cfg)
    folds = load_folds(cfg)
    holdout_sum = np.zeros((len(snapshot.holdout), snapshot.n_classes))
    tasks = [t for t in plan_fold_tasks(cfg, [model]) if t.fold != FULL_FIT]
    pieces = []
    for task in tasks:
        if not fold_task_done(cfg, task):
            raise StageError(f"fold task {task.label} has not finished (or is stale): run train-base {model}")
        directory = layout.fold_dir(model, task.repeat, task.fold)
        rows = load_array(directory / "val_rows.npy")
        if not np.array_equal(rows, folds.split(task.repeat, task.fold)[1]):
            raise StageError(f"{directory}: its validation rows differ from the fold assignment")
        pieces.append((task.repeat, rows, load_array(directory / "val_proba.npy")))
        holdout_sum += load_array(directory / "holdout_proba.npy")
    oof = fill_oof(folds.repeats, folds.n_rows, snapshot.n_classes, pieces, model)
    holdout = holdout_sum / len(tasks)
    if cfg.runtime.refit_full:  # predict with the model refit on all rows instead of the fold mean
        holdout = load_array(layout.fold_dir(model, 0, FULL_FIT) / "holdout_proba.npy")
    base = layout.base(model)
    save_array(base / "oof.npy", oof)
    save_array(base / "holdout.npy", holdout)
    y = snapshot.train["label"].to_numpy()
    oof_mean = oof.mean(axis=0)
    summary = {"model": model, "n_tasks": len(tasks), "coverage": 1.0,
               "oof_accuracy": float((oof_mean.argmax(1) == y).mean()),
               "holdout_from": "full refit" if cfg.runtime.refit_full else f"mean of {len(tasks)} fold models"}
    write_json(base / "summary.json", summary)
    return summary


def train_base(cfg: Config, model: str, device: str | None = None, report: Reporter = log_report) -> dict[str, Any]:
    """Every fold of one base model, one after another, then collect (the DVC `train@model` stage)."""
    for task in plan_fold_tasks(cfg, [model]):
        result = train_fold(cfg, task.model, task.repeat, task.fold, device)
        report("fold_done", result)
    return collect_oof(cfg, model)


def load_base_predictions(cfg: Config) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """(model names, OOF matrices averaged over repeats, holdout matrices) in params order."""
    layout = Layout.of(cfg)
    names, oofs, holdouts = [], [], []
    for spec in cfg.base_models:
        base = layout.base(spec.name)
        require(base / "oof.npy", f"train-base {spec.name}")
        names.append(spec.name)
        oofs.append(load_array(base / "oof.npy").mean(axis=0))
        holdouts.append(load_array(base / "holdout.npy"))
    return names, oofs, holdouts
