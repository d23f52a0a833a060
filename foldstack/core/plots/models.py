"""The model-comparison plots: holdout metrics with bootstrap intervals, the base models' OOF error
correlation (diversity) and the meta-learner's weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from foldstack.core.plots.figure import (
    ENSEMBLE, ENSEMBLE_COLOR, OTHER_COLOR, annotate_cells, new_figure, note_figure, save,
)

CONFIDENCE = 0.95


def row_scores(y_true: np.ndarray, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's correctness (1/0) and log loss; the log loss is sklearn's (clip to float eps, renormalise),
    so the mean equals the log loss in reports.json."""
    eps = np.finfo(proba.dtype).eps
    clipped = np.clip(proba, eps, 1 - eps)
    clipped = clipped / clipped.sum(axis=1, keepdims=True)
    rows = np.arange(len(y_true))
    return (proba.argmax(axis=1) == y_true).astype(np.float64), -np.log(clipped[rows, y_true])


def bootstrap_intervals(y_true: np.ndarray, probas_by_model: dict[str, np.ndarray], n_bootstrap: int,
                        seed: int) -> pd.DataFrame:
    """Accuracy and log loss per model with percentile bootstrap intervals (CONFIDENCE), the holdout rows
    resampled with replacement, the same resamples for every model (so the models' intervals are comparable).
    Columns: model, metric, value, lower, upper, n_rows, n_bootstrap."""
    models = list(probas_by_model)
    scores = {"accuracy": [], "log_loss": []}
    for model in models:
        correct, losses = row_scores(y_true, probas_by_model[model])
        scores["accuracy"].append(correct)
        scores["log_loss"].append(losses)
    stacked = {metric: np.stack(rows) for metric, rows in scores.items()}  # (n_models, n_rows)
    rng = np.random.default_rng(seed)
    n = len(y_true)
    draws = {metric: np.empty((n_bootstrap, len(models))) for metric in stacked}
    for b in range(n_bootstrap):
        weights = np.bincount(rng.integers(0, n, n), minlength=n) / n  # a resample as row multiplicities
        for metric, values in stacked.items():
            draws[metric][b] = values @ weights
    tail = (1 - CONFIDENCE) / 2 * 100
    rows = []
    for metric, values in stacked.items():
        lower, upper = np.percentile(draws[metric], [tail, 100 - tail], axis=0)
        rows += [{"model": model, "metric": metric, "value": float(values[i].mean()), "lower": float(lower[i]),
                  "upper": float(upper[i]), "n_rows": n, "n_bootstrap": n_bootstrap} for i, model in enumerate(models)]
    return pd.DataFrame(rows)


def metrics_comparison(y_true: np.ndarray, probas_by_model: dict[str, np.ndarray], out_dir: Path,
                       n_bootstrap: int, seed: int) -> list[Path]:
    """Accuracy and log loss per model, each with its 95% bootstrap interval; models sorted by log loss."""
    table = bootstrap_intervals(y_true, probas_by_model, n_bootstrap, seed)
    order = table[table["metric"] == "log_loss"].sort_values("value", ascending=False)["model"].tolist()
    figure = new_figure(150 + 38 * len(order))
    titles = {"accuracy": "accuracy (higher is better)", "log_loss": "log loss (lower is better)"}
    for ax, metric in zip(figure.subplots(1, 2, sharey=True), titles, strict=True):
        rows = table[table["metric"] == metric].set_index("model").loc[order]
        positions = np.arange(len(order))
        for y, (model, row) in zip(positions, rows.iterrows(), strict=True):
            color = ENSEMBLE_COLOR if model == ENSEMBLE else OTHER_COLOR
            ax.errorbar(row["value"], y, xerr=[[row["value"] - row["lower"]], [row["upper"] - row["value"]]],
                        fmt="o", color=color, capsize=4, markersize=6)
            ax.annotate(f"{row['value']:.3f}", (row["value"], y), xytext=(0, 7), textcoords="offset points",
                        ha="center", fontsize=8)
        ax.set_yticks(positions, order)
        ax.set_ylim(-0.7, len(order) - 0.4)
        ax.set_title(titles[metric], fontsize=11)
        ax.grid(axis="x", alpha=0.3)
    figure.suptitle(f"holdout metrics per model, {CONFIDENCE:.0%} bootstrap intervals "
                    f"(n={len(y_true)}, {n_bootstrap} resamples)", fontsize=13)
    csv_path = out_dir / "metrics.csv"
    table.to_csv(csv_path, index=False, float_format="%.6g")
    return [save(figure, out_dir / "metrics.png"), csv_path]


def error_correlation(y_train: np.ndarray, oof_by_model: dict[str, np.ndarray]) -> pd.DataFrame:
    """Pearson correlation of the base models' per-row OOF errors (1 - p(true class)), long form:
    model_a, model_b, correlation (NaN where a model's errors are constant; 1 on the diagonal)."""
    names = list(oof_by_model)
    rows = np.arange(len(y_train))
    errors = np.stack([1.0 - np.asarray(oof, dtype=np.float64)[rows, y_train] for oof in oof_by_model.values()])
    with np.errstate(invalid="ignore", divide="ignore"):
        matrix = np.atleast_2d(np.corrcoef(errors))
    np.fill_diagonal(matrix, 1.0)
    a, b = np.meshgrid(range(len(names)), range(len(names)), indexing="ij")
    return pd.DataFrame({"model_a": np.asarray(names, dtype=object)[a.ravel()],
                         "model_b": np.asarray(names, dtype=object)[b.ravel()], "correlation": matrix.ravel()})


def diversity(y_train: np.ndarray, oof_by_model: dict[str, np.ndarray], out_dir: Path) -> list[Path]:
    """Heatmap of the base models' OOF error correlation: low off-diagonal values mean diverse models,
    which is what stacking gains from."""
    table = error_correlation(y_train, oof_by_model)
    names = list(oof_by_model)
    matrix = table["correlation"].to_numpy().reshape(len(names), len(names))
    figure = new_figure(min(200 + 90 * len(names), 1400))
    level, ax = figure.subplots(1, 2, width_ratios=[1, 1.4])
    rows = np.arange(len(y_train))
    mean_error = [float(np.mean(1.0 - np.asarray(oof)[rows, y_train])) for oof in oof_by_model.values()]
    level.barh(np.arange(len(names)), mean_error, color=OTHER_COLOR)
    level.set_yticks(np.arange(len(names)), names)
    level.invert_yaxis()
    level.set_xlabel("mean OOF error, 1 - p(true class)")
    level.set_title("each model's error level", fontsize=11)
    image = ax.imshow(matrix, cmap="RdBu_r", vmin=-1, vmax=1)
    figure.colorbar(image, ax=ax, shrink=0.8, label="correlation of OOF errors")
    ticks = np.arange(len(names))
    ax.set_xticks(ticks, names, rotation=45, ha="right")
    ax.set_yticks(ticks, names)
    if len(names) <= 25:
        annotate_cells(ax, matrix, ".2f", 0.6)
    figure.suptitle(f"base models' OOF error correlation, error = 1 - p(true class) (n={len(y_train)} "
                    f"training rows; lower = more diverse)", fontsize=13)
    csv_path = out_dir / "diversity.csv"
    table.to_csv(csv_path, index=False, float_format="%.6g")
    return [save(figure, out_dir / "diversity.png"), csv_path]


def meta_weight_table(meta: Any, base_names: list[str], labels: list[str]) -> tuple[pd.DataFrame | None, str]:
    """(table of model, class, weight — or None —, what the weights are / why there are none).

    logreg: per model and class, the coefficient on that model's own evidence (log-odds, or probability
    without `logit`) for the class; binary: one coefficient per model, for the positive class.
    weighted_mean and ensemble_selection: one weight per model (class "all"). Other kinds (vote): none."""
    kind = getattr(meta, "kind", type(meta).__name__)
    if hasattr(meta, "coef_"):
        coef = np.asarray(meta.coef_, dtype=np.float64)
        width = 1 if len(labels) == 2 else len(labels)
        block = width * (2 if meta.logit and meta.passthrough else 1)
        if coef.shape[1] != block * len(base_names):
            return None, f"{kind}: {coef.shape[1]} coefficients do not match {len(base_names)} base models"
        rows = []
        for m, model in enumerate(base_names):
            if len(labels) == 2:
                rows.append({"model": model, "class": labels[1], "weight": coef[0, m * block]})
                continue
            for r, c in enumerate(meta.classes_):
                rows.append({"model": model, "class": labels[c], "weight": coef[r, m * block + c]})
        evidence = "log-odds" if meta.logit else "probability"
        return pd.DataFrame(rows), f"{kind}: coefficient on each model's own {evidence} for the class"
    if hasattr(meta, "weights_"):
        weights = np.asarray(meta.weights_, dtype=np.float64)
        if len(weights) != len(base_names):
            return None, f"{kind}: {len(weights)} weights do not match {len(base_names)} base models"
        return (pd.DataFrame({"model": base_names, "class": "all", "weight": weights}),
                f"{kind}: weight of each model in the weighted mean of probabilities")
    return None, f"the {kind!r} meta-learner has no per-model weights to show"


def meta_weights(meta: Any, base_names: list[str], labels: list[str], out_dir: Path) -> list[Path]:
    """The meta-learner's weights: a bar per model (one weight each) or a model x class heatmap (logreg,
    multiclass). A kind without weights gets a PNG that says so and a CSV with the columns only."""
    table, meaning = meta_weight_table(meta, base_names, labels)
    csv_path = out_dir / "meta_weights.csv"
    png_path = out_dir / "meta_weights.png"
    if table is None:
        pd.DataFrame(columns=["model", "class", "weight"]).to_csv(csv_path, index=False)
        return [note_figure(png_path, "meta-learner weights", meaning), csv_path]
    table.to_csv(csv_path, index=False, float_format="%.6g")
    classes = list(dict.fromkeys(table["class"]))
    figure = new_figure(150 + 45 * len(base_names))
    ax = figure.add_subplot()
    if len(classes) == 1:
        colors = [ENSEMBLE_COLOR if w < 0 else OTHER_COLOR for w in table["weight"]]
        ax.barh(np.arange(len(base_names)), table["weight"], color=colors)
        ax.set_yticks(np.arange(len(base_names)), base_names)
        ax.axvline(0, color="grey", linewidth=1)
        ax.set_xlabel(f"weight (class {classes[0]})")
        ax.invert_yaxis()
    else:
        matrix = table.pivot(index="model", columns="class", values="weight").loc[base_names, classes].to_numpy()
        limit = float(np.abs(matrix).max()) or 1.0
        image = ax.imshow(matrix, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
        figure.colorbar(image, ax=ax, label="weight")
        ax.set_xticks(np.arange(len(classes)), classes, rotation=45, ha="right")
        ax.set_yticks(np.arange(len(base_names)), base_names)
        if matrix.size <= 400:
            annotate_cells(ax, matrix, ".2f", limit * 0.6)
    ax.set_title(f"meta-learner weights — {meaning}", fontsize=12)
    return [save(figure, png_path), csv_path]
