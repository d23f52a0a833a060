"""Evaluation plots: PNG images for people (every one WIDTH_PX = 1200 px wide at 100 dpi), CSV tables
for `dvc plots` and for anyone who wants the numbers.

`write_plots` draws, into one folder, from the holdout labels and each model's probabilities:
- `metrics.png` / `metrics.csv` (model, metric, value, lower, upper, n_rows, n_bootstrap) — accuracy and log
  loss per model with 95% percentile bootstrap intervals (seeded; the same resamples for every model);
- `confusion.png` — the ensemble's confusion matrix normalised by actual class (rows sum to 1) beside the
  counts; `confusion.csv` (actual, predicted; one row per holdout row, label names: dvc.yaml's confusion
  template) and `confusion_matrix.csv` (actual, predicted, count, share);
- `roc.png` / `roc.csv` (model, fpr, tpr) — binary: every model on the positive class; multiclass: the
  ensemble's one-vs-rest curve per class (model = "ensemble:<label>");
- `pr.png` / `pr.csv` (class, recall, precision, average_precision, prevalence) — the ensemble's
  one-vs-rest precision-recall curve per class;
- `calibration.png` / `calibration.csv` (model, bin, confidence, accuracy, count, lower, upper, share) —
  reliability of the top-class confidence, one panel per model, with the rows in each bin;
and, when given the base models' OOF matrices and the fitted meta-learner (the evaluate stage gives both):
- `diversity.png` / `diversity.csv` (model_a, model_b, correlation) — correlation of the base models'
  per-row OOF errors (1 - p(true class));
- `meta_weights.png` / `meta_weights.csv` (model, class, weight) — the meta-learner's weights (logreg:
  coefficients per model and class; weighted_mean, ensemble_selection: one weight per model, class "all");
  a kind without weights (vote) gets a PNG saying so and a CSV with the columns only.

Imports no prefect, wandb or dvc; matplotlib and sklearn only inside the drawing functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from foldstack.core.metrics import validate_predictions
from foldstack.core.plots import holdout, models
from foldstack.core.plots.figure import DPI, ENSEMBLE, WIDTH_PX

__all__ = ["DPI", "ENSEMBLE", "PNG_NAMES", "WIDTH_PX", "write_plots"]

# Every PNG the evaluate stage writes, in reading order (the HTML report and dvc.yaml name these).
PNG_NAMES = ("metrics.png", "confusion.png", "roc.png", "pr.png", "calibration.png", "diversity.png",
             "meta_weights.png")


def write_plots(
    y_true: np.ndarray,
    probas_by_model: dict[str, np.ndarray],
    labels: list[str],
    out_dir: Path | str,
    ece_bins: int = 15,
    *,
    oof: tuple[np.ndarray, dict[str, np.ndarray]] | None = None,
    meta: Any = None,
    n_bootstrap: int = 300,
    seed: int = 0,
) -> list[Path]:
    """Write the plots (PNG + CSV) into `out_dir`; return the paths written.

    `probas_by_model` maps a model name to its (n_rows, n_classes) probabilities on the same rows as
    `y_true`; it must hold the meta-learner under the name "ensemble". `oof` = (training labels, {base model:
    its OOF matrix}) adds diversity.png; `meta` (a fitted meta-learner whose base models are `oof`'s, in
    that order) adds meta_weights.png. `seed` and `n_bootstrap` drive metrics.png's intervals.
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
    written = models.metrics_comparison(y_checked, checked, out_dir, n_bootstrap, seed)
    written += holdout.confusion(y_checked, checked[ENSEMBLE], labels, out_dir)
    written += holdout.roc(y_checked, checked, labels, out_dir)
    written += holdout.precision_recall(y_checked, checked[ENSEMBLE], labels, out_dir)
    written += holdout.calibration(y_checked, checked, ece_bins, out_dir)
    if oof is not None:
        y_train, oof_by_model = oof
        written += models.diversity(np.asarray(y_train), oof_by_model, out_dir)
        if meta is not None:
            written += models.meta_weights(meta, list(oof_by_model), labels, out_dir)
    return written
