"""Classification metrics of probability predictions, their flat (DVC) form, and the leaderboard.

A report is computed from integer labels `y_true` (codes 0..C-1) and a (n, C) probability matrix. Every
metric that takes a label set is given the full `range(C)`, so a class missing from a (small) holdout does not
change the matrix shapes or crash the computation; where a metric cannot be computed for such a class (ROC
AUC needs positives and negatives) it is left out and a note says so.
Imports no prefect, wandb or dvc.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

# The scalar metrics of a report, in the order they are shown; flat_metrics exports exactly these.
SCALAR_METRICS: tuple[str, ...] = ("accuracy", "macro_f1", "log_loss", "roc_auc", "ece", "brier")
LEADERBOARD_COLUMNS: tuple[str, ...] = ("model", "role", "accuracy", "macro_f1", "log_loss", "roc_auc", "ece")
ROLES: tuple[str, ...] = ("base", "baseline", "ensemble", "student")


def validate_predictions(
    y_true: np.ndarray, proba: np.ndarray, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Labels as int64 and probabilities as float64, checked for shape, range and finiteness."""
    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape[1] != n_classes:
        raise ValueError(f"proba has shape {proba.shape}; expected (n_rows, {n_classes}) for {n_classes} labels")
    if y_true.shape != (proba.shape[0],):
        raise ValueError(f"y_true has shape {y_true.shape}; expected ({proba.shape[0]},) to match proba")
    if y_true.size == 0:
        raise ValueError("no rows to evaluate: y_true is empty")
    if not np.issubdtype(y_true.dtype, np.integer):
        raise ValueError(f"y_true must hold integer class codes, got dtype {y_true.dtype}")
    if y_true.min() < 0 or y_true.max() >= n_classes:
        raise ValueError(f"y_true holds codes outside 0..{n_classes - 1} (min {y_true.min()}, max {y_true.max()})")
    if not np.all(np.isfinite(proba)):
        raise ValueError("proba holds NaN or infinite values")
    return y_true.astype(np.int64), proba


def calibration_bins(y_true: np.ndarray, proba: np.ndarray, n_bins: int = 15) -> pd.DataFrame:
    """Reliability table of the top-class confidence in `n_bins` equal-width bins over (0, 1].

    One row per non-empty bin: `bin` (index), `lower`, `upper`, `confidence` (mean top-class probability),
    `accuracy` (fraction whose top class is right), `count`. Bins are right-closed, (lower, upper], so a
    confidence of exactly 1 falls in the last bin.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=np.float64)
    confidence = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y_true
    bin_index = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    counts = np.bincount(bin_index, minlength=n_bins)
    confidence_sum = np.bincount(bin_index, weights=confidence, minlength=n_bins)
    correct_sum = np.bincount(bin_index, weights=correct.astype(np.float64), minlength=n_bins)
    used = np.flatnonzero(counts)
    return pd.DataFrame(
        {
            "bin": used,
            "lower": used / n_bins,
            "upper": (used + 1) / n_bins,
            "confidence": confidence_sum[used] / counts[used],
            "accuracy": correct_sum[used] / counts[used],
            "count": counts[used],
        }
    )


def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray, n_bins: int = 15) -> float:
    """ECE: the count-weighted mean gap |accuracy - confidence| over equal-width confidence bins."""
    table = calibration_bins(y_true, proba, n_bins)
    weights = table["count"].to_numpy() / table["count"].sum()
    return float(np.sum(weights * np.abs(table["accuracy"].to_numpy() - table["confidence"].to_numpy())))


def _roc_auc(y_true: np.ndarray, proba: np.ndarray, labels: list[str], notes: list[str]) -> float:
    """Binary: AUC of P(class 1). Multiclass: unweighted mean of the one-vs-rest AUCs (sklearn's "ovr"
    macro), over the classes that have both positives and negatives in y_true."""
    from sklearn.metrics import roc_auc_score

    n_classes = proba.shape[1]
    present = np.bincount(y_true, minlength=n_classes) > 0
    if n_classes == 2:
        if not present.all():
            missing = [labels[c] for c in range(2) if not present[c]]
            notes.append(f"roc_auc is NaN: class {missing[0]!r} is absent from y_true")
            return math.nan
        return float(roc_auc_score(y_true, proba[:, 1]))
    if present.sum() < 2:
        notes.append("roc_auc is NaN: y_true holds a single class")
        return math.nan
    aucs = [roc_auc_score(y_true == c, proba[:, c]) for c in range(n_classes) if present[c]]
    absent = [labels[c] for c in range(n_classes) if not present[c]]
    if absent:
        notes.append(f"roc_auc averages over the classes present; absent from y_true: {absent}")
    return float(np.mean(aucs))


def classification_report(
    y_true: np.ndarray, proba: np.ndarray, labels: list[str], ece_bins: int = 15
) -> dict[str, Any]:
    """All metrics of one model's probabilities.

    Returns scalars `accuracy`, `macro_f1`, `log_loss`, `roc_auc` (NaN when not computable, see `notes`),
    `ece`, `brier` (sklearn's: mean squared error of P(class 1) for binary, of the whole probability vector
    for multiclass), `n_rows`; `per_class` {label: {precision, recall, f1, support}}; `confusion_matrix`
    (rows = actual, columns = predicted, in `labels` order); `labels`; `notes`.

    `macro_f1` averages over the classes that occur in y_true or in the predictions (sklearn's default), so a
    class absent from both — common in a small holdout — does not count as an F1 of 0.
    """
    from sklearn.metrics import (
        accuracy_score,
        brier_score_loss,
        confusion_matrix,
        f1_score,
        log_loss,
        precision_recall_fscore_support,
    )

    labels = [str(label) for label in labels]
    n_classes = len(labels)
    if n_classes < 2:
        raise ValueError(f"classification needs at least 2 labels, got {labels}")
    y_true, proba = validate_predictions(y_true, proba, n_classes)
    all_codes = list(range(n_classes))
    predicted = proba.argmax(axis=1)
    notes: list[str] = []

    absent = [labels[c] for c in all_codes if not np.any(y_true == c)]
    if absent:
        notes.append(f"classes absent from y_true (their recall and f1 are 0 by convention): {absent}")

    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, predicted, labels=all_codes, zero_division=0
    )
    per_class = {
        labels[c]: {
            "precision": float(precision[c]),
            "recall": float(recall[c]),
            "f1": float(f1[c]),
            "support": int(support[c]),
        }
        for c in all_codes
    }
    return {
        "accuracy": float(accuracy_score(y_true, predicted)),
        "macro_f1": float(f1_score(y_true, predicted, average="macro", zero_division=0)),
        "log_loss": float(log_loss(y_true, proba, labels=all_codes)),
        "roc_auc": _roc_auc(y_true, proba, labels, notes),
        "ece": expected_calibration_error(y_true, proba, ece_bins),
        "brier": float(brier_score_loss(y_true, proba, labels=all_codes)),
        "n_rows": int(len(y_true)),
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(y_true, predicted, labels=all_codes).tolist(),
        "labels": labels,
        "notes": notes,
    }


def flat_metrics(reports: dict[str, dict[str, Any]]) -> dict[str, float]:
    """{"<model>.<metric>": value} over the scalar metrics of every report, for DVC's metrics.json.

    Non-finite values (a NaN roc_auc) are left out: NaN is not valid JSON, and `dvc metrics diff` would
    choke on it; the report's `notes` say why it is missing.
    """
    flat: dict[str, float] = {}
    for model, report in reports.items():
        for metric in SCALAR_METRICS:
            value = report.get(metric)
            if value is None:
                continue
            value = float(value)
            if math.isfinite(value):
                flat[f"{model}.{metric}"] = value
    return flat


def leaderboard(reports: dict[str, dict[str, Any]], kinds: dict[str, str]) -> pd.DataFrame:
    """One row per model — model, role, accuracy, macro_f1, log_loss, roc_auc, ece — best log loss first.

    `kinds` maps each model name to its role: "base" (a base model's holdout predictions), "baseline" (mean,
    vote), "ensemble" (the meta-learner) or "student" (the ensemble distilled into one model).
    """
    rows = []
    for model, report in reports.items():
        role = kinds.get(model)
        if role is None:
            raise ValueError(f"leaderboard: no role given for model {model!r} (roles: {', '.join(ROLES)})")
        if role not in ROLES:
            raise ValueError(f"leaderboard: role {role!r} of model {model!r} is not one of {', '.join(ROLES)}")
        row = {"model": model, "role": role}
        for metric in LEADERBOARD_COLUMNS[2:]:
            row[metric] = float(report.get(metric, math.nan))
        rows.append(row)
    table = pd.DataFrame(rows, columns=list(LEADERBOARD_COLUMNS))
    # Model name breaks ties so the order is stable from run to run.
    return table.sort_values(["log_loss", "model"], kind="stable", na_position="last").reset_index(drop=True)


def _markdown_cell(value: Any) -> str:
    if isinstance(value, float | np.floating):
        return "n/a" if not math.isfinite(value) else f"{value:.4f}"
    # A pipe would end the cell early.
    return str(value).replace("|", "\\|")


def leaderboard_markdown(df: pd.DataFrame) -> str:
    """The leaderboard as a GitHub-flavoured markdown table (numbers to 4 decimals, NaN as n/a)."""
    header = "| " + " | ".join(str(c) for c in df.columns) + " |"
    numeric = [pd.api.types.is_numeric_dtype(df[c]) for c in df.columns]
    rule = "|" + "|".join("---:" if is_num else "---" for is_num in numeric) + "|"
    lines = [header, rule]
    for record in df.itertuples(index=False):
        lines.append("| " + " | ".join(_markdown_cell(v) for v in record) + " |")
    return "\n".join(lines) + "\n"
