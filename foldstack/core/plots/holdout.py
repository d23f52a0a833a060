"""The holdout plots: confusion matrix, ROC, precision-recall and reliability, from holdout labels and
each model's probabilities (the rows `write_plots` checked)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from foldstack.core.metrics import calibration_bins
from foldstack.core.plots.figure import ENSEMBLE, ENSEMBLE_COLOR, OTHER_COLOR, annotate_cells, new_figure, save


def confusion(y_true: np.ndarray, proba: np.ndarray, labels: list[str], out_dir: Path) -> list[Path]:
    """The ensemble's confusion matrix, normalised by actual class (rows sum to 1) beside the counts."""
    from sklearn.metrics import confusion_matrix  # deferred: sklearn

    predicted = proba.argmax(axis=1)
    names = np.asarray(labels, dtype=object)
    rows_csv = out_dir / "confusion.csv"  # dvc.yaml's confusion template reads this one: keep its columns
    pd.DataFrame({"actual": names[y_true], "predicted": names[predicted]}).to_csv(rows_csv, index=False)

    counts = confusion_matrix(y_true, predicted, labels=list(range(len(labels))))
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.full(counts.shape, np.nan), where=totals > 0)
    actual, pred = np.meshgrid(range(len(labels)), range(len(labels)), indexing="ij")
    matrix_csv = out_dir / "confusion_matrix.csv"
    pd.DataFrame({"actual": names[actual.ravel()], "predicted": names[pred.ravel()],
                  "count": counts.ravel(), "share": shares.ravel()}).to_csv(matrix_csv, index=False,
                                                                            float_format="%.6g")

    figure = new_figure(min(200 + 90 * len(labels), 1400))
    panels = [(shares, "share of the actual class (rows sum to 1)", ".2f", 0.5, (0, 1)),
              (counts, f"counts (n={len(y_true)})", "d", counts.max() / 2 if counts.size else 0, None)]
    ticks = np.arange(len(labels))
    for ax, (values, title, fmt, threshold, limits) in zip(figure.subplots(1, 2), panels, strict=True):
        image = ax.imshow(values, cmap="Blues", vmin=limits[0] if limits else None,
                          vmax=limits[1] if limits else None)
        figure.colorbar(image, ax=ax, shrink=0.8)
        ax.set_xticks(ticks, labels, rotation=45, ha="right")
        ax.set_yticks(ticks, labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual")
        ax.set_title(title, fontsize=11)
        if len(labels) <= 20:  # beyond that the numbers are unreadable anyway
            annotate_cells(ax, values.astype(np.float64), fmt if fmt != "d" else ".0f", threshold)
    figure.suptitle(f"{ENSEMBLE}: confusion matrix on the holdout", fontsize=13)
    return [save(figure, out_dir / "confusion.png"), rows_csv, matrix_csv]


def _roc_curves(y_true, probas_by_model, labels) -> tuple[list[tuple[str, np.ndarray, np.ndarray]], str]:
    """(curve name, binary truth, score) for every drawable curve: a curve needs both positives and negatives
    in y_true, so a class absent from the holdout gets none."""
    curves = []
    if len(labels) == 2:
        if np.unique(y_true).size == 2:
            curves = [(model, y_true == 1, proba[:, 1]) for model, proba in probas_by_model.items()]
        return curves, f"ROC, positive class {labels[1]!r}"
    ensemble = probas_by_model[ENSEMBLE]
    for c, label in enumerate(labels):
        is_class = y_true == c
        if 0 < is_class.sum() < len(y_true):
            curves.append((f"{ENSEMBLE}:{label}", is_class, ensemble[:, c]))
    return curves, f"{ENSEMBLE}: one-vs-rest ROC per class"


def roc(y_true: np.ndarray, probas_by_model: dict[str, np.ndarray], labels: list[str], out_dir: Path) -> list[Path]:
    """Binary: every model on the positive class; multiclass: the ensemble's one-vs-rest curve per class."""
    from sklearn.metrics import roc_auc_score, roc_curve  # deferred: sklearn

    curves, title = _roc_curves(y_true, probas_by_model, labels)
    frames = []
    figure = new_figure(700)
    ax = figure.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=1)
    for name, truth, score in curves:
        fpr, tpr, _ = roc_curve(truth, score)
        frames.append(pd.DataFrame({"model": name, "fpr": fpr, "tpr": tpr}))
        emphasis = 2.5 if name.startswith(ENSEMBLE) and len(labels) == 2 else 1.3
        ax.plot(fpr, tpr, linewidth=emphasis, label=f"{name} (AUC {roc_auc_score(truth, score):.3f})")
    if not curves:
        title += " — not drawable: y_true holds a single class"
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title, fontsize=13)
    ax.set_aspect("equal")
    if curves:
        ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=9)
    csv_path = out_dir / "roc.csv"
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["model", "fpr", "tpr"])
    table.to_csv(csv_path, index=False, float_format="%.6g")
    return [save(figure, out_dir / "roc.png"), csv_path]


def precision_recall(y_true: np.ndarray, proba: np.ndarray, labels: list[str], out_dir: Path) -> list[Path]:
    """The ensemble's one-vs-rest precision-recall curve per class present in the holdout, with its average
    precision; the dotted line of each colour is that class's share of the holdout (a random ranking's
    precision)."""
    from sklearn.metrics import average_precision_score, precision_recall_curve  # deferred: sklearn

    frames = []
    figure = new_figure(700)
    ax = figure.add_subplot()
    for c, label in enumerate(labels):
        is_class = y_true == c
        if not 0 < is_class.sum() < len(y_true):
            continue
        precision, recall, _ = precision_recall_curve(is_class, proba[:, c])
        ap = average_precision_score(is_class, proba[:, c])
        frames.append(pd.DataFrame({"class": label, "recall": recall, "precision": precision,
                                    "average_precision": ap, "prevalence": is_class.mean()}))
        (line,) = ax.step(recall, precision, where="post", linewidth=1.6, label=f"{label} (AP {ap:.3f})")
        ax.axhline(is_class.mean(), linestyle=":", linewidth=1, color=line.get_color())
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    title = f"{ENSEMBLE}: precision-recall per class (one vs rest)"
    ax.set_title(title if frames else title + " — not drawable: y_true holds a single class", fontsize=13)
    if frames:
        ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=9)
    columns = ["class", "recall", "precision", "average_precision", "prevalence"]
    csv_path = out_dir / "pr.csv"
    (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)).to_csv(
        csv_path, index=False, float_format="%.6g")
    return [save(figure, out_dir / "pr.png"), csv_path]


def calibration(y_true: np.ndarray, probas_by_model: dict[str, np.ndarray], ece_bins: int,
                out_dir: Path) -> list[Path]:
    """Reliability of the top-class confidence, one panel per model, with each bin's share of the holdout
    as grey bars (its count written above when there are at most 20 bins)."""
    n_models = len(probas_by_model)
    n_cols = min(n_models, 3 if n_models <= 6 else 4)
    n_rows = -(-n_models // n_cols)
    figure = new_figure(120 + 300 * n_rows)
    axes = np.atleast_1d(figure.subplots(n_rows, n_cols, sharex=True, sharey=True, squeeze=False)).ravel()
    frames = []
    for ax, (model, proba) in zip(axes, probas_by_model.items()):
        table = calibration_bins(y_true, proba, ece_bins)
        table["share"] = table["count"] / len(y_true)
        frames.append(table.assign(model=model))
        ece = float((table["share"] * (table["confidence"] - table["accuracy"]).abs()).sum())
        centers = (table["lower"] + table["upper"]) / 2
        ax.bar(centers, table["share"], width=1.0 / ece_bins * 0.9, color="lightgrey", label="share of rows")
        if ece_bins <= 20:
            for x, share, count in zip(centers, table["share"], table["count"], strict=True):
                ax.text(x, share + 0.01, str(count), ha="center", va="bottom", fontsize=7, color="dimgrey")
        ax.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=1)
        color = ENSEMBLE_COLOR if model == ENSEMBLE else OTHER_COLOR
        ax.plot(table["confidence"], table["accuracy"], marker="o", markersize=4, color=color, label="accuracy")
        ax.set_title(f"{model} (ECE {ece:.3f})", fontsize=10)
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.08)
    for ax in axes[n_models:]:
        ax.set_axis_off()
    axes[0].legend(loc="upper left", fontsize=8)
    figure.supxlabel("mean top-class confidence in the bin")
    figure.supylabel("accuracy  /  share of holdout rows")
    figure.suptitle(f"reliability per model ({ece_bins} equal-width bins, n={len(y_true)})", fontsize=13)
    csv_path = out_dir / "calibration.csv"
    columns = ["model", "bin", "confidence", "accuracy", "count", "lower", "upper", "share"]
    pd.concat(frames, ignore_index=True)[columns].to_csv(csv_path, index=False, float_format="%.6g")
    return [save(figure, out_dir / "calibration.png"), csv_path]
