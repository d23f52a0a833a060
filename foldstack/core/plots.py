"""Evaluation plots: PNG images for people, CSV tables for `dvc plots`.

`write_plots` draws, from holdout labels and each model's probabilities:
- `confusion.png` / `confusion.csv` (columns actual, predicted; one row per holdout row, label names) —
  the ensemble's confusion matrix;
- `roc.png` / `roc.csv` (columns model, fpr, tpr) — binary: the ensemble and every other model on the
  positive class; multiclass: the ensemble's one-vs-rest curve per class (model = "ensemble:<label>");
- `calibration.png` / `calibration.csv` (columns model, bin, confidence, accuracy, count) — reliability
  diagram of the top-class confidence, every model, equal-width bins.

Figures are built with matplotlib's object-oriented API on an Agg canvas (never pyplot), so no GUI backend
is touched and no global matplotlib state changes. Imports no prefect, wandb or dvc.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from foldstack.core.metrics import calibration_bins, validate_predictions

ENSEMBLE = "ensemble"
_DPI = 100


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _confusion(y_true: np.ndarray, proba: np.ndarray, labels: list[str], out_dir: Path) -> list[Path]:
    from sklearn.metrics import confusion_matrix

    predicted = proba.argmax(axis=1)
    names = np.asarray(labels, dtype=object)
    csv_path = out_dir / "confusion.csv"
    pd.DataFrame({"actual": names[y_true], "predicted": names[predicted]}).to_csv(csv_path, index=False)

    counts = confusion_matrix(y_true, predicted, labels=list(range(len(labels))))
    size = min(3.0 + 0.45 * len(labels), 12.0)
    figure = _new_figure(size, size)
    ax = figure.add_subplot()
    image = ax.imshow(counts, cmap="Blues")
    figure.colorbar(image, ax=ax, shrink=0.8)
    ticks = np.arange(len(labels))
    ax.set_xticks(ticks, labels, rotation=45, ha="right")
    ax.set_yticks(ticks, labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(f"{ENSEMBLE} (n={len(y_true)})", fontsize=10)
    if len(labels) <= 20:  # beyond that the numbers are unreadable anyway
        threshold = counts.max() / 2 if counts.size else 0
        for (row, col), count in np.ndenumerate(counts):
            color = "white" if count > threshold else "black"
            ax.text(col, row, str(count), ha="center", va="center", color=color, fontsize=8)
    png_path = out_dir / "confusion.png"
    figure.savefig(png_path)
    return [png_path, csv_path]


def _roc(
    y_true: np.ndarray, probas_by_model: dict[str, np.ndarray], labels: list[str], out_dir: Path
) -> list[Path]:
    from sklearn.metrics import roc_auc_score, roc_curve

    # (curve name, binary truth, score) for every curve that can be drawn: a curve needs both positives
    # and negatives in y_true, so a class absent from the holdout gets none.
    curves: list[tuple[str, np.ndarray, np.ndarray]] = []
    if len(labels) == 2:
        if np.unique(y_true).size == 2:
            for model, proba in probas_by_model.items():
                curves.append((model, y_true == 1, proba[:, 1]))
        title = f"ROC, positive class {labels[1]!r}"
    else:
        ensemble = probas_by_model[ENSEMBLE]
        for c, label in enumerate(labels):
            is_class = y_true == c
            if 0 < is_class.sum() < len(y_true):
                curves.append((f"{ENSEMBLE}:{label}", is_class, ensemble[:, c]))
        title = f"{ENSEMBLE}: one-vs-rest ROC per class"

    frames = []
    figure = _new_figure(6.0, 5.0)
    ax = figure.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=1)
    for name, truth, score in curves:
        fpr, tpr, _ = roc_curve(truth, score)
        frames.append(pd.DataFrame({"model": name, "fpr": fpr, "tpr": tpr}))
        emphasis = 2.2 if name.startswith(ENSEMBLE) and len(labels) == 2 else 1.2
        ax.plot(fpr, tpr, linewidth=emphasis, label=f"{name} (AUC {roc_auc_score(truth, score):.3f})")
    if not curves:
        title += " — not drawable: y_true holds a single class"
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    if curves:
        ax.legend(loc="lower right", fontsize=7)
    png_path = out_dir / "roc.png"
    figure.savefig(png_path)

    csv_path = out_dir / "roc.csv"
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["model", "fpr", "tpr"])
    table.to_csv(csv_path, index=False, float_format="%.6g")
    return [png_path, csv_path]


def _calibration(
    y_true: np.ndarray, probas_by_model: dict[str, np.ndarray], ece_bins: int, out_dir: Path
) -> list[Path]:
    frames = []
    figure = _new_figure(6.0, 5.0)
    ax = figure.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=1, label="perfectly calibrated")
    for model, proba in probas_by_model.items():
        table = calibration_bins(y_true, proba, ece_bins)
        frames.append(table[["bin", "confidence", "accuracy", "count"]].assign(model=model))
        emphasis = 2.2 if model == ENSEMBLE else 1.0
        ax.plot(table["confidence"], table["accuracy"], marker="o", markersize=3, linewidth=emphasis, label=model)
    # A little margin so markers at exactly 0 or 1 are not cut in half.
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("mean top-class confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability diagram ({ece_bins} bins)")
    ax.legend(loc="upper left", fontsize=7)
    png_path = out_dir / "calibration.png"
    figure.savefig(png_path)

    csv_path = out_dir / "calibration.csv"
    columns = ["model", "bin", "confidence", "accuracy", "count"]
    pd.concat(frames, ignore_index=True)[columns].to_csv(csv_path, index=False, float_format="%.6g")
    return [png_path, csv_path]


def write_plots(
    y_true: np.ndarray,
    probas_by_model: dict[str, np.ndarray],
    labels: list[str],
    out_dir: Path | str,
    ece_bins: int = 15,
) -> list[Path]:
    """Write the confusion, ROC and calibration plots (PNG + CSV) into `out_dir`; return the paths written.

    `probas_by_model` maps a model name to its (n_rows, n_classes) probabilities on the same rows as
    `y_true`; it must hold the meta-learner under the name "ensemble".
    """
    labels = [str(label) for label in labels]
    if ENSEMBLE not in probas_by_model:
        raise ValueError(
            f"write_plots: probas_by_model needs the meta-learner under {ENSEMBLE!r}; "
            f"got {sorted(probas_by_model)}"
        )
    checked: dict[str, np.ndarray] = {}
    for model, proba in probas_by_model.items():
        try:
            y_checked, checked[model] = validate_predictions(y_true, proba, len(labels))
        except ValueError as exc:
            raise ValueError(f"write_plots: model {model!r}: {exc}") from None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = _confusion(y_checked, checked[ENSEMBLE], labels, out_dir)
    written += _roc(y_checked, checked, labels, out_dir)
    written += _calibration(y_checked, checked, ece_bins, out_dir)
    return written
