"""Leakage diagnostics: is each out-of-fold estimate as honest as the untouched holdout says it should be?

An OOF prediction of a row comes from a model that never trained on it, so a model's OOF score and its
holdout score estimate the same thing and should agree within noise. When the OOF score is better beyond
noise, something let the folds see their validation rows: overlapping texts split between folds (grouping
off, or overlap below its thresholds), or a holdout unlike the training rows. The meta-learner's own CV
estimate on the OOF is checked against its holdout score in the same way.

The standard error of a gap is that of a difference of two independent means (OOF rows and holdout rows are
disjoint): sqrt(var_oof / n_oof + var_holdout / n_holdout) over per-row correctness or per-row log loss.
Imports no prefect, wandb or dvc.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# Beyond noise: a gap of more than this many standard errors (about one false alarm in 700 per model).
Z_OPTIMISTIC = 3.0
LIKELY_CAUSES = ("overlapping texts split between folds (check folds.grouping: containment and near-duplicates, "
                 "min_contained_tokens, jaccard_threshold), or a holdout file unlike the training rows")


def _per_row(proba: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    correct = (proba.argmax(axis=1) == y).astype(np.float64)
    losses = -np.log(np.clip(proba[np.arange(len(y)), y], 1e-15, 1.0))
    return correct, losses


def _gap(inside: np.ndarray, outside: np.ndarray) -> tuple[float, float]:
    """(mean(inside) - mean(outside), its standard error)."""
    def var_of_mean(values: np.ndarray) -> float:
        return float(values.var(ddof=1) / len(values)) if len(values) > 1 else 0.0

    return float(inside.mean() - outside.mean()), math.sqrt(var_of_mean(inside) + var_of_mean(outside))


def compare(name: str, oof_proba: np.ndarray, y_train: np.ndarray, holdout_proba: np.ndarray,
            y_holdout: np.ndarray, *, estimate: str = "OOF") -> dict[str, Any]:
    """One model's OOF (or CV) score against its holdout score, with the gaps' standard errors.

    Gaps are signed so that positive means the out-of-fold estimate is optimistic: accuracy OOF - holdout,
    log loss holdout - OOF.
    """
    oof_correct, oof_loss = _per_row(oof_proba, y_train)
    holdout_correct, holdout_loss = _per_row(holdout_proba, y_holdout)
    accuracy_gap, accuracy_se = _gap(oof_correct, holdout_correct)
    loss_gap, loss_se = _gap(holdout_loss, oof_loss)
    optimistic = (accuracy_gap > Z_OPTIMISTIC * accuracy_se and accuracy_se > 0) or \
        (loss_gap > Z_OPTIMISTIC * loss_se and loss_se > 0)
    return {
        "model": name, "estimate": estimate,
        "oof_accuracy": float(oof_correct.mean()), "holdout_accuracy": float(holdout_correct.mean()),
        "accuracy_gap": accuracy_gap, "accuracy_gap_se": accuracy_se,
        "oof_log_loss": float(oof_loss.mean()), "holdout_log_loss": float(holdout_loss.mean()),
        "log_loss_gap": loss_gap, "log_loss_gap_se": loss_se,
        "optimistic": bool(optimistic),
    }


def diagnose(oofs: dict[str, np.ndarray], y_train: np.ndarray, holdouts: dict[str, np.ndarray],
             y_holdout: np.ndarray, ensemble_cv: np.ndarray | None = None,
             ensemble_holdout: np.ndarray | None = None) -> dict[str, Any]:
    """Every base model's OOF vs holdout, and the ensemble's CV-on-OOF estimate vs its holdout score."""
    rows = [compare(name, oofs[name], y_train, holdouts[name], y_holdout) for name in oofs]
    if ensemble_cv is not None and ensemble_holdout is not None:
        rows.append(compare("ensemble", ensemble_cv, y_train, ensemble_holdout, y_holdout,
                            estimate="meta-learner CV on OOF"))
    warnings = [_warning(row) for row in rows if row["optimistic"]]
    return {"z": Z_OPTIMISTIC, "rows": rows, "warnings": warnings}


def _warning(row: dict[str, Any]) -> str:
    return (f"{row['model']}: its {row['estimate']} estimate is optimistic beyond noise: accuracy "
            f"{row['oof_accuracy']:.4f} vs {row['holdout_accuracy']:.4f} on the holdout (gap "
            f"{row['accuracy_gap']:+.4f}, SE {row['accuracy_gap_se']:.4f}), log loss {row['oof_log_loss']:.4f} vs "
            f"{row['holdout_log_loss']:.4f} (gap {row['log_loss_gap']:+.4f}, SE {row['log_loss_gap_se']:.4f}). "
            f"Likely cause: {LIKELY_CAUSES}")


def flat(diagnosis: dict[str, Any]) -> dict[str, float]:
    """The numbers for metrics.json: leakage.<model>.<number>, and how many estimates are optimistic."""
    out: dict[str, float] = {"leakage.n_optimistic": float(len(diagnosis["warnings"]))}
    for row in diagnosis["rows"]:
        for key in ("oof_accuracy", "accuracy_gap", "accuracy_gap_se", "oof_log_loss", "log_loss_gap",
                    "log_loss_gap_se"):
            out[f"leakage.{row['model']}.{key}"] = float(row[key])
        out[f"leakage.{row['model']}.optimistic"] = float(row["optimistic"])
    return out


def markdown(diagnosis: dict[str, Any]) -> str:
    """A table of every estimate against the holdout, with a prominent warning for each optimistic one."""
    lines = ["### Leakage diagnostics: out-of-fold estimate vs holdout", "",
             "Positive gaps mean the out-of-fold estimate is better than the holdout (optimistic); beyond "
             f"{diagnosis['z']:g} standard errors is flagged.", "",
             "| model | estimate | OOF acc | holdout acc | gap ± SE | OOF log loss | holdout log loss | gap ± SE | "
             "verdict |", "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for row in diagnosis["rows"]:
        verdict = "**optimistic**" if row["optimistic"] else "ok"
        lines.append(f"| {row['model']} | {row['estimate']} | {row['oof_accuracy']:.4f} | "
                     f"{row['holdout_accuracy']:.4f} | {row['accuracy_gap']:+.4f} ± {row['accuracy_gap_se']:.4f} | "
                     f"{row['oof_log_loss']:.4f} | {row['holdout_log_loss']:.4f} | "
                     f"{row['log_loss_gap']:+.4f} ± {row['log_loss_gap_se']:.4f} | {verdict} |")
    for warning in diagnosis["warnings"]:
        lines += ["", f"> **WARNING** {warning}"]
    return "\n".join(lines) + "\n"
