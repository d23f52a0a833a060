"""The pipeline's stage functions: the one implementation behind the CLI, the Prefect tasks and dvc.yaml.

Each stage reads files, computes, and writes its box atomically (see docs/ARCHITECTURE.md). Stages take the
validated `Config` and return a small JSON-able summary; none imports an orchestrator.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from foldstack.core import crossfit
from foldstack.config import Config, MetaConfig
from foldstack.core.crossfit import FULL_FIT, fill_oof
from foldstack.core.data import Snapshot
from foldstack.errors import StageError
from foldstack.runtime.devices import resolve_device
from foldstack.common.faults import failpoint
from foldstack.core.folds import FoldAssignment, assign_folds
from foldstack.common.files import (atomic_directory, is_complete, load_array, read_json, remove_stale_temporaries,
                              save_array, write_json)

log = logging.getLogger("foldstack")

Reporter = Callable[[str, dict[str, Any]], None]


def _quiet(event: str, info: dict[str, Any]) -> None:
    log.info("%s %s", event, info)


@dataclass(frozen=True)
class Layout:
    """Where every box of the pipeline lives."""

    root: Path

    @classmethod
    def of(cls, cfg: Config) -> Layout:
        return cls(cfg.resolve_path(cfg.runtime.artifacts_dir))

    @property
    def snapshot(self) -> Path:
        return self.root / "snapshot"

    @property
    def folds(self) -> Path:
        return self.root / "folds"

    def base(self, name: str) -> Path:
        return self.root / "base" / name

    def fold_dir(self, name: str, repeat: int, fold: int) -> Path:
        return self.base(name) / crossfit.member_name(repeat, fold)

    @property
    def stack(self) -> Path:
        return self.root / "stack"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def bundle(self) -> Path:
        return self.root / "bundle"


def _require(path: Path, stage: str) -> None:
    if not (path.exists() and (path.is_file() or is_complete(path))):
        raise StageError(f"{path} does not exist yet: run the {stage!r} stage first")


def load_snapshot(cfg: Config) -> Snapshot:
    layout = Layout.of(cfg)
    _require(layout.snapshot, "validate")
    return Snapshot.load(layout.snapshot)


def load_folds(cfg: Config) -> FoldAssignment:
    layout = Layout.of(cfg)
    _require(layout.folds, "folds")
    return FoldAssignment.load(layout.folds)


# --------------------------------------------------------------------------------------------- validate
def validate(cfg: Config) -> dict[str, Any]:
    """Read and check the data (the Great Expectations gate), split off the holdout, write the snapshot."""
    from foldstack.pipeline.validation import run_gate

    # Before any work: a missing model directory would otherwise stop the run after the other base models
    # trained, and an artifacts directory that cannot be made with an OSError instead of naming its key.
    cfg.check_model_sources()
    cfg.check_writable_dirs("runtime.artifacts_dir", "runtime.cache_dir")
    snapshot, gate = run_gate(cfg)  # raises DataError, before anything is written, if a rule broke
    layout = Layout.of(cfg)
    with atomic_directory(layout.snapshot) as tmp:
        snapshot.save(tmp)
    return {**snapshot.summary(), "validation": gate.brief()}


# ------------------------------------------------------------------------------------------------ folds
def make_folds(cfg: Config) -> dict[str, Any]:
    snapshot = load_snapshot(cfg)
    assignment = assign_folds(snapshot.train["label"].to_numpy(), snapshot.train["group"].to_numpy(),
                              cfg.folds.k, cfg.folds.repeats, cfg.seed, snapshot.n_classes)
    with atomic_directory(Layout.of(cfg).folds) as tmp:
        assignment.save(tmp)
    failpoint("folds-written")
    return {"hash": assignment.hash, "k": assignment.k, "repeats": assignment.repeats,
            "n_rows": assignment.n_rows, "grouping": snapshot.grouping}


# ------------------------------------------------------------------------------------------- fold tasks
@dataclass(frozen=True)
class FoldTask:
    model: str
    repeat: int
    fold: int
    identity: str

    @property
    def label(self) -> str:
        return crossfit.unit_label(self.model, self.repeat, self.fold)


def fold_unit(cfg: Config, model: str, repeat: int, fold: int, folds_hash: str) -> crossfit.FoldUnit:
    return crossfit.FoldUnit.of(cfg.base_model(model), repeat, fold, seed=cfg.seed, folds_hash=folds_hash)


def fold_identity(cfg: Config, model: str, repeat: int, fold: int, data_hash: str, folds_hash: str) -> str:
    return crossfit.fold_identity(fold_unit(cfg, model, repeat, fold, folds_hash), data_hash, folds_hash)


def plan_fold_tasks(cfg: Config, models: list[str] | None = None) -> list[FoldTask]:
    """Every (model, repeat, fold) task with its identity, in a stable order."""
    snapshot_meta = read_json(Layout.of(cfg).snapshot / "snapshot.json")
    folds = load_folds(cfg)
    names = models or [m.name for m in cfg.base_models]
    pairs = folds.tasks() + ([(0, FULL_FIT)] if cfg.runtime.refit_full else [])
    return [FoldTask(name, r, f, fold_identity(cfg, name, r, f, snapshot_meta["data_hash"], folds.hash))
            for name in names for r, f in pairs]


def fold_task_done(cfg: Config, task: FoldTask) -> bool:
    directory = Layout.of(cfg).fold_dir(task.model, task.repeat, task.fold)
    if not is_complete(directory):
        return False
    try:
        return read_json(directory / "task.json").get("identity") == task.identity
    except (OSError, ValueError):
        return False


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

    device = resolve_device(device or cfg.runtime.device)
    started = time.perf_counter()
    fitted = crossfit.fit_unit(unit, snapshot.train["text"].tolist(), snapshot.train["label"].to_numpy(), folds,
                               n_classes=snapshot.n_classes, device=device,
                               cache_dir=cfg.resolve_path(cfg.runtime.cache_dir), base_dir=cfg.resolve_path("."),
                               holdout_texts=snapshot.holdout["text"].tolist())
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
            "fit_seconds": round(fitted.fit_seconds, 3), "seconds": round(time.perf_counter() - started, 3),
        })
    return {"task": task.label, "identity": task.identity, "skipped": False,
            "seconds": round(time.perf_counter() - started, 3), "device": device}


def _checked(proba: np.ndarray, n: int, n_classes: int, who: str) -> np.ndarray:
    from foldstack.models.base import check_proba

    return check_proba(proba, n, n_classes, who)


# ---------------------------------------------------------------------------------------------- collect
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


def train_base(cfg: Config, model: str, device: str | None = None, report: Reporter = _quiet) -> dict[str, Any]:
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
        _require(base / "oof.npy", f"train-base {spec.name}")
        names.append(spec.name)
        oofs.append(load_array(base / "oof.npy").mean(axis=0))
        holdouts.append(load_array(base / "holdout.npy"))
    return names, oofs, holdouts


# ------------------------------------------------------------------------------------------------ stack
def stack(cfg: Config) -> dict[str, Any]:
    """Choose (meta.kind auto) and fit the meta-learner on the OOF matrices; estimate its quality by CV on
    the OOF, keeping the folds' overlap groups whole; predict the holdout."""
    snapshot = load_snapshot(cfg)
    groups = load_folds(cfg).group
    names, oofs, holdouts = load_base_predictions(cfg)
    y = snapshot.train["label"].to_numpy()
    selection, meta = crossfit.fit_meta(cfg.meta, oofs, y, snapshot.n_classes, cfg.seed, groups)
    holdout_proba = _checked(meta.predict_proba(holdouts), len(snapshot.holdout), snapshot.n_classes, "meta")
    summary = {"kind": selection.config.kind, "requested": cfg.meta.kind, "reason": selection.reason,
               "base_models": names, "cv": selection.cv, "candidates": selection.candidates}
    with atomic_directory(Layout.of(cfg).stack) as tmp:
        (tmp / "meta").mkdir()
        meta.save(tmp / "meta")
        save_array(tmp / "holdout_proba.npy", holdout_proba)
        # The meta-learner's own out-of-fold predictions: what the leakage diagnostics compare to the holdout.
        save_array(tmp / "meta_cv_proba.npy", selection.held_out_proba)
        write_json(tmp / "meta_cv.json", summary)
    return summary


# --------------------------------------------------------------------------------------------- evaluate
def holdout_reports(cfg: Config) -> tuple[dict[str, dict], dict[str, str], dict[str, np.ndarray]]:
    """Metrics on the holdout of every base model, every baseline and the ensemble."""
    _require(Layout.of(cfg).stack, "stack")
    names, oofs, holdouts = load_base_predictions(cfg)
    return _holdout_reports(cfg, load_snapshot(cfg), names, oofs, holdouts)


def _holdout_reports(cfg: Config, snapshot: Snapshot, names: list[str], oofs: list[np.ndarray],
                     holdouts: list[np.ndarray]) -> tuple[dict[str, dict], dict[str, str], dict[str, np.ndarray]]:
    from foldstack.core.meta import make_meta
    from foldstack.core.metrics import classification_report

    layout = Layout.of(cfg)
    y_train = snapshot.train["label"].to_numpy()
    y = snapshot.holdout["label"].to_numpy()
    labels = snapshot.label_map.names
    probas: dict[str, np.ndarray] = dict(zip(names, holdouts, strict=True))
    roles = {name: "base" for name in names}
    for baseline in cfg.evaluate.baselines:
        meta_cfg = MetaConfig(kind=baseline)
        probas[f"baseline:{baseline}"] = make_meta(meta_cfg, snapshot.n_classes, cfg.seed).fit(
            oofs, y_train).predict_proba(holdouts)
        roles[f"baseline:{baseline}"] = "baseline"
    probas["ensemble"] = load_array(layout.stack / "holdout_proba.npy")
    roles["ensemble"] = "ensemble"
    reports = {name: classification_report(y, p, labels, cfg.evaluate.ece_bins) for name, p in probas.items()}
    return reports, roles, probas


def evaluate(cfg: Config) -> dict[str, Any]:
    """Holdout metrics of every model, the leakage diagnostics (OOF vs holdout), the leaderboard and plots."""
    from foldstack.core import leakage
    from foldstack.core.metrics import flat_metrics, leaderboard, leaderboard_markdown

    layout = Layout.of(cfg)
    _require(layout.stack, "stack")
    snapshot = load_snapshot(cfg)
    names, oofs, holdouts = load_base_predictions(cfg)  # read once: the reports and the diagnostics share them
    reports, roles, probas = _holdout_reports(cfg, snapshot, names, oofs, holdouts)
    stacked = read_json(layout.stack / "meta_cv.json")
    diagnosis = leakage.diagnose(dict(zip(names, oofs, strict=True)), snapshot.train["label"].to_numpy(),
                                 probas, snapshot.holdout["label"].to_numpy(),
                                 load_array(layout.stack / "meta_cv_proba.npy"), probas["ensemble"])
    for warning in diagnosis["warnings"]:
        log.warning("LEAKAGE? %s", warning)
    board = leaderboard(reports, roles)
    flat = flat_metrics(reports)
    flat.update({f"meta_cv.{k}": float(v) for k, v in stacked["cv"].items() if isinstance(v, (int, float))})
    flat.update(leakage.flat(diagnosis))
    grouping = snapshot.grouping
    flat.update({f"grouping.{k}": float(grouping[k]) for k in
                 ("n_groups", "largest_group", "largest_group_share", "rows_in_multi_row_groups") if k in grouping})
    markdown = "\n".join([leaderboard_markdown(board), _meta_choice_markdown(stacked, reports),
                          leakage.markdown(diagnosis)])
    with atomic_directory(layout.eval) as tmp:
        write_json(tmp / "metrics.json", flat)
        write_json(tmp / "reports.json", reports)
        write_json(tmp / "leakage.json", diagnosis)
        board.to_csv(tmp / "leaderboard.csv", index=False)
        (tmp / "leaderboard.md").write_text(markdown)
        if cfg.evaluate.plots:
            from foldstack.core.plots import write_plots

            write_plots(snapshot.holdout["label"].to_numpy(), probas, snapshot.label_map.names, tmp / "plots",
                        cfg.evaluate.ece_bins)
    return {"metrics": flat, "leaderboard": board.to_dict(orient="records"), "leakage": diagnosis,
            "meta": {k: stacked.get(k) for k in ("kind", "requested", "reason")}}


def _meta_choice_markdown(stacked: dict[str, Any], reports: dict[str, dict]) -> str:
    """Which meta-learner was fitted and why; with `auto`, every candidate's CV score."""
    line = f"**Meta-learner:** {stacked['kind']}"
    if stacked.get("requested") == "auto":
        line = f"**Meta-learner:** `auto` chose **{stacked['kind']}**: {stacked.get('reason', '')}"
    lines = [line + ".", ""]
    if stacked.get("candidates"):
        lines += ["| candidate | CV log loss on OOF | minus best | paired SE | CV accuracy |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {kind} | {c['log_loss']:.4f} | {c['log_loss_minus_best']:+.4f} | {c['paired_se']:.4f} | "
                  f"{c['accuracy']:.4f} |" for kind, c in stacked["candidates"].items()]
        lines.append("")
    mean = reports.get("baseline:weighted_mean")
    if mean is not None:
        ensemble = reports["ensemble"]
        lines.append(f"On the holdout the ensemble's log loss is {ensemble['log_loss'] - mean['log_loss']:+.4f} and "
                     f"its accuracy {ensemble['accuracy'] - mean['accuracy']:+.4f} against the plain mean of its "
                     f"base models.")
        lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- bundle
def make_bundle(cfg: Config) -> dict[str, Any]:
    from foldstack.bundle import write_bundle

    path = write_bundle(cfg, Layout.of(cfg))
    return {"bundle": str(path)}


# --------------------------------------------------------------------------------------------- pipeline
@dataclass
class PipelineResult:
    bundle: Path
    metrics: dict[str, float]
    leaderboard: list[dict[str, Any]]
    trained: int
    skipped: int


def run_fold_tasks(cfg: Config, tasks: list[FoldTask], report: Reporter = _quiet,
                   max_workers: int | None = None) -> list[dict[str, Any]]:
    """Run fold tasks in-process or in a process pool (runtime.max_workers); returns their results."""
    workers = min(max_workers or cfg.runtime.max_workers, max(1, len(tasks)))
    results = []
    if workers <= 1:
        for task in tasks:
            results.append(train_fold(cfg, task.model, task.repeat, task.fold))
            report("fold_done", results[-1])
        return results
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                             initializer=_limit_threads, initargs=(1,)) as pool:
        futures = {pool.submit(train_fold, cfg, t.model, t.repeat, t.fold): t for t in tasks}
        for future in as_completed(futures):
            results.append(future.result())
            report("fold_done", results[-1])
    return results


def _limit_threads(n: int) -> None:
    """Each worker process gets a share of the cores instead of every worker using all of them."""
    import os

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    # A fresh worker reads OMP_NUM_THREADS when it first imports torch; importing torch here only to set
    # it would cost seconds per worker for scikit-learn-only tasks.
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


def run_pipeline(cfg: Config, report: Reporter = _quiet) -> PipelineResult:
    """The whole pipeline in-process (the `foldstack train` command)."""
    report("stage", {"stage": "validate"})
    summary = validate(cfg)
    report("validated", summary)
    report("stage", {"stage": "folds"})
    report("folds", make_folds(cfg))
    tasks = plan_fold_tasks(cfg)
    pending = [t for t in tasks if not fold_task_done(cfg, t)]
    report("plan", {"total": len(tasks), "pending": len(pending), "skipped": len(tasks) - len(pending),
                    "skipped_tasks": [t.label for t in tasks if t not in pending]})
    run_fold_tasks(cfg, pending, report)
    for spec in cfg.base_models:
        report("collected", collect_oof(cfg, spec.name))
    report("stage", {"stage": "stack"})
    report("stacked", stack(cfg))
    report("stage", {"stage": "evaluate"})
    evaluation = evaluate(cfg)
    report("stage", {"stage": "bundle"})
    bundle = make_bundle(cfg)
    return PipelineResult(bundle=Path(bundle["bundle"]), metrics=evaluation["metrics"],
                          leaderboard=evaluation["leaderboard"], trained=len(pending),
                          skipped=len(tasks) - len(pending))
