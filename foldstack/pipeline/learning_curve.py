"""The learning curve: the ensemble and its base models refit on fractions of the training rows, every one
scored on the same untouched holdout (`foldstack learning-curve`, or the evaluate stage with
`evaluate.learning_curve: true`).

Each fraction is a seeded, stratified subsample of whole overlap groups (the snapshot's `group` column; a
group is never split), nested: a smaller fraction's rows are a subset of a larger one's. On it the pipeline's
own machinery runs in memory (`foldstack.core.crossfit`, as the fold tasks and `FoldStackClassifier` use it):
the folds of those rows, every (base model, fold) fit with its seed, each base model's holdout predictions as
the mean of its fold models, and the meta-learner on their OOF. Fraction 1.0 is the pipeline itself: when the
pipeline's fold tasks are finished with the current identities, its `base/*/holdout.npy` and
`stack/holdout_proba.npy` are read instead of refitting, and its numbers are those of eval/reports.json.

Writes eval/learning_curve/: learning_curve.csv (fraction, rows, model, role, accuracy, log_loss),
learning_curve.json and learning_curve.png (log loss and accuracy against training rows: the ensemble and the
best base model).
"""

from __future__ import annotations

import functools
import math
import multiprocessing
import time
from concurrent.futures import as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import ValidationError

from foldstack.common.files import atomic_directory, derive_seed, is_complete, load_array, read_json, write_json
from foldstack.config import Config, EvaluateConfig
from foldstack.config.base import describe_errors
from foldstack.core import crossfit
from foldstack.core.data import Snapshot
from foldstack.core.folds import assign_folds
from foldstack.core.metrics import classification_report
from foldstack.errors import ConfigError, DataError, FoldstackError
from foldstack.pipeline.base_models import load_base_predictions
from foldstack.pipeline.identities import fold_task_done, plan_fold_tasks
from foldstack.pipeline.layout import Layout, Reporter, load_snapshot, log_report
from foldstack.runtime.devices import resolve_device
from foldstack.runtime.pools import ProcessPool

ENSEMBLE = "ensemble"
COLUMNS = ["fraction", "rows", "model", "role", "accuracy", "log_loss"]


@dataclass(frozen=True)
class Point:
    """The holdout probabilities of every model trained on one fraction of the training rows."""

    fraction: float
    rows: int
    probas: dict[str, np.ndarray]  # base model names in params order, then "ensemble"
    seconds: float
    reused: bool


def learning_curve_dir(cfg: Config) -> Path:
    return Layout.of(cfg).eval / "learning_curve"


def check_fractions(fractions: list[float]) -> list[float]:
    """The fractions as `evaluate.learning_curve_fractions` accepts them, else a one-line ConfigError."""
    try:
        return EvaluateConfig(learning_curve_fractions=fractions).learning_curve_fractions
    except ValidationError as exc:
        raise ConfigError(f"learning curve: {describe_errors(exc).removeprefix('learning_curve_fractions: ')}") from None


# ------------------------------------------------------------------------------------------ the rows
def _group_order(labels: np.ndarray, groups: np.ndarray, seed: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per class (a group's most common label): its groups in a seeded random order, and their row counts."""
    frame = pd.DataFrame({"label": labels, "group": groups})
    sizes = frame.groupby("group").size()
    group_label = frame.groupby("group")["label"].agg(lambda s: s.value_counts().index[0])
    rng = np.random.default_rng(derive_seed(seed, "learning-curve"))
    order = {}
    for label in sorted(group_label.unique()):
        ids = group_label.index[group_label == label].to_numpy()
        ids = ids[rng.permutation(len(ids))]
        order[int(label)] = (ids, sizes.loc[ids].to_numpy())
    return order


def subsample(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted row indices of `fraction` of the rows: whole groups, each class's share kept (stratified), the
    same seeded group order for every fraction (so the samples are nested); 1.0 is every row."""
    chosen = []
    for ids, sizes in _group_order(labels, groups, seed).values():
        target = math.ceil(fraction * sizes.sum() - 1e-9)
        n_groups = int(np.searchsorted(np.cumsum(sizes), target) + 1)
        chosen.append(ids[:n_groups])
    return np.flatnonzero(np.isin(groups, np.concatenate(chosen)))


def smallest_fraction(labels: np.ndarray, groups: np.ndarray, k: int, seed: int) -> float:
    """The least fraction (rounded up to 0.001) whose subsample gives every class at least k overlap groups,
    and so k rows: one in each fold."""
    need = 0.0
    for ids, sizes in _group_order(labels, groups, seed).values():
        if len(ids) < k:
            return math.inf
        need = max(need, (int(sizes[: k - 1].sum()) + 1) / sizes.sum())
    return min(1.0, math.ceil(need * 1000 - 1e-9) / 1000)


def _check_sizes(snapshot: Snapshot, fractions: list[float], k: int, seed: int) -> None:
    labels, groups = snapshot.train["label"].to_numpy(), snapshot.train["group"].to_numpy()
    least = smallest_fraction(labels, groups, k, seed)
    for fraction in fractions:
        if fraction < least:
            counts = np.bincount(labels[subsample(labels, groups, fraction, seed)], minlength=snapshot.n_classes)
            c = int(counts.argmin())
            raise DataError(f"learning curve: fraction {fraction:g} gives class {snapshot.label_map.names[c]!r} "
                            f"{counts[c]} training row(s) (of {len(labels)} in all), too few for folds.k={k} "
                            f"(each class needs k rows, one per fold); the smallest fraction is {least:g}")


# --------------------------------------------------------------------------------------- the fits
def _fit(unit: crossfit.FoldUnit, texts: list[str], codes: np.ndarray, folds: Any, settings: dict[str, Any],
         holdout_texts: list[str]) -> tuple[crossfit.FoldUnit, np.ndarray, np.ndarray, np.ndarray]:
    """One (base model, fold) fit, as a fold task makes it; returns no model, only its predictions."""
    fitted = crossfit.fit_unit(unit, texts, codes, folds, holdout_texts=holdout_texts, **settings)
    return unit, fitted.val_rows, fitted.val_proba, fitted.holdout_proba


def _spawn() -> multiprocessing.context.BaseContext:
    return multiprocessing.get_context("spawn")


def fit_fraction(cfg: Config, snapshot: Snapshot, rows: np.ndarray, pool: ProcessPool | None) -> dict[str, np.ndarray]:
    """The pipeline on `rows` of the training data, in memory: folds, every fold fit, the meta-learner;
    returns each base model's and the ensemble's holdout probabilities."""
    train = snapshot.train.iloc[rows]
    texts, codes, groups = train["text"].tolist(), train["label"].to_numpy(), train["group"].to_numpy()
    n_classes = snapshot.n_classes
    try:
        folds = assign_folds(codes, groups, cfg.folds.k, cfg.folds.repeats, cfg.seed, n_classes)
    except DataError as exc:
        raise DataError(f"learning curve on {len(rows)} training rows: {exc}") from None
    units = crossfit.plan_units(cfg.base_models, folds, cfg.seed)
    settings = {"n_classes": n_classes, "device": resolve_device(cfg.runtime.device),
                "cache_dir": cfg.resolve_path(cfg.runtime.cache_dir), "base_dir": cfg.resolve_path(".")}
    fit = functools.partial(_fit, texts=texts, codes=codes, folds=folds, settings=settings,
                            holdout_texts=snapshot.holdout["text"].tolist())
    if pool is None:
        results = [fit(unit) for unit in units]
    else:
        results = [pool.result(future) for future in as_completed([pool.submit(fit, unit) for unit in units])]
    oofs, holdouts = [], []
    for spec in cfg.base_models:
        own = sorted((r for r in results if r[0].spec.name == spec.name), key=lambda r: (r[0].repeat, r[0].fold))
        pieces = [(unit.repeat, val_rows, val_proba) for unit, val_rows, val_proba, _ in own]
        oofs.append(crossfit.fill_oof(folds.repeats, len(rows), n_classes, pieces, spec.name).mean(axis=0))
        holdouts.append(np.mean([holdout for *_, holdout in own], axis=0))
    _, meta = crossfit.fit_meta(cfg.meta, oofs, codes, n_classes, cfg.seed, groups)
    probas = {spec.name: holdout for spec, holdout in zip(cfg.base_models, holdouts, strict=True)}
    probas[ENSEMBLE] = meta.predict_proba(holdouts)
    return probas


def pipeline_probas(cfg: Config) -> dict[str, np.ndarray] | None:
    """The pipeline's own holdout probabilities on every training row, when its artifacts are current: every
    fold task finished with this config's identity, and the stack fitted on these base models."""
    layout = Layout.of(cfg)
    try:
        tasks = plan_fold_tasks(cfg)
    except (OSError, ValueError, KeyError, FoldstackError):  # no folds box yet, an unreadable task file
        return None
    names = [spec.name for spec in cfg.base_models]
    stack_done = is_complete(layout.stack) and (layout.stack / "holdout_proba.npy").is_file()
    if not (stack_done and all(fold_task_done(cfg, t) for t in tasks)
            and all((layout.base(name) / "holdout.npy").is_file() for name in names)):
        return None
    stacked = read_json(layout.stack / "meta_cv.json")
    if stacked.get("base_models") != names or stacked.get("requested") != cfg.meta.kind:
        return None
    found, _, holdouts = load_base_predictions(cfg)
    probas = dict(zip(found, holdouts, strict=True))
    probas[ENSEMBLE] = load_array(layout.stack / "holdout_proba.npy")
    return probas


def _workers(cfg: Config) -> ProcessPool | None:
    n_units = len(cfg.base_models) * cfg.folds.k * cfg.folds.repeats
    workers = min(cfg.runtime.max_workers, n_units)
    return ProcessPool(workers, threads=1, context=_spawn) if workers > 1 else None


# ------------------------------------------------------------------------------------ the curve
def learning_curve_points(cfg: Config, fractions: list[float] | None = None,
                          report: Reporter = log_report) -> tuple[Snapshot, list[Point]]:
    """Every model's holdout probabilities at each fraction (default `evaluate.learning_curve_fractions`);
    reports `learning_curve_point` after each one."""
    fractions = check_fractions(list(fractions if fractions is not None else cfg.evaluate.learning_curve_fractions))
    snapshot = load_snapshot(cfg)
    labels, groups = snapshot.train["label"].to_numpy(), snapshot.train["group"].to_numpy()
    _check_sizes(snapshot, fractions, cfg.folds.k, cfg.seed)  # before any fit: a bad fraction fails at once
    y = snapshot.holdout["label"].to_numpy()
    points: list[Point] = []
    pool = None
    try:
        for fraction in fractions:
            started = time.perf_counter()
            rows = subsample(labels, groups, fraction, cfg.seed)
            probas = pipeline_probas(cfg) if len(rows) == len(labels) else None
            reused = probas is not None
            if probas is None:
                pool = pool or _workers(cfg)
                probas = fit_fraction(cfg, snapshot, rows, pool)
            points.append(Point(fraction, len(rows), probas, time.perf_counter() - started, reused))
            ensemble = classification_report(y, probas[ENSEMBLE], snapshot.label_map.names, cfg.evaluate.ece_bins)
            report("learning_curve_point", {"fraction": fraction, "rows": len(rows), "reused": reused,
                                            "seconds": round(points[-1].seconds, 3),
                                            "ensemble_log_loss": ensemble["log_loss"],
                                            "ensemble_accuracy": ensemble["accuracy"]})
    finally:
        if pool is not None:
            pool.shutdown()
    return snapshot, points


def curve_table(cfg: Config, snapshot: Snapshot, points: list[Point]) -> pd.DataFrame:
    """One row per (fraction, model): its holdout accuracy and log loss, as eval/reports.json computes them."""
    y, labels = snapshot.holdout["label"].to_numpy(), snapshot.label_map.names
    records = []
    for point in points:
        for model, proba in point.probas.items():
            scores = classification_report(y, proba, labels, cfg.evaluate.ece_bins)
            records.append({"fraction": point.fraction, "rows": point.rows, "model": model,
                            "role": ENSEMBLE if model == ENSEMBLE else "base",
                            "accuracy": scores["accuracy"], "log_loss": scores["log_loss"]})
    return pd.DataFrame.from_records(records, columns=COLUMNS)


def best_base(table: pd.DataFrame) -> str:
    """The base model of least holdout log loss on the most rows."""
    base = table[(table["role"] == "base") & (table["rows"] == table["rows"].max())]
    return str(base.sort_values(["log_loss", "model"]).iloc[0]["model"])


def write_learning_curve(cfg: Config, fractions: list[float] | None = None,
                         report: Reporter = log_report) -> dict[str, Any]:
    """Compute the learning curve and write eval/learning_curve/ (csv, json, png) atomically; returns the
    json's content."""
    snapshot, points = learning_curve_points(cfg, fractions, report)
    table = curve_table(cfg, snapshot, points)
    best = best_base(table)
    summary = {
        "fractions": [p.fraction for p in points], "train_rows": len(snapshot.train),
        "holdout_rows": len(snapshot.holdout), "k": cfg.folds.k, "repeats": cfg.folds.repeats, "seed": cfg.seed,
        "best_base": best, "data_hash": snapshot.data_hash,
        "points": [{"fraction": p.fraction, "rows": p.rows, "seconds": round(p.seconds, 3),
                    "source": "pipeline artifacts" if p.reused else "refit on the subsample"} for p in points],
        "rows": table.to_dict(orient="records"),
    }
    with atomic_directory(learning_curve_dir(cfg)) as tmp:
        table.to_csv(tmp / "learning_curve.csv", index=False)
        write_json(tmp / "learning_curve.json", summary)
        plot_learning_curve(table, best, tmp / "learning_curve.png")
    return summary


def plot_learning_curve(table: pd.DataFrame, best: str, path: Path) -> Path:
    """Holdout log loss and accuracy against training rows: the ensemble and the best base model."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2)
    for ax, metric, title in zip(axes, ("log_loss", "accuracy"), ("holdout log loss (lower is better)",
                                                                   "holdout accuracy (higher is better)"),
                                 strict=True):
        for model, style in ((ENSEMBLE, "o-"), (best, "s--")):
            line = table[table["model"] == model].sort_values("rows")
            label = model if model == ENSEMBLE else f"{model} (best base model)"
            ax.plot(line["rows"], line[metric], style, label=label)
        ax.set_xlabel("training rows")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend()
    figure.savefig(path)
    return path
