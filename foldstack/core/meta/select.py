"""`auto` and the meta-learner's own quality: cross-validation on the OOF matrices.

`cross_validated_proba` gives held-out meta-learner predictions for every OOF row; `select_meta` resolves
`meta.kind` (for `auto`: the candidate kind of best CV log loss, the simpler one on a tie) and estimates the
chosen kind's quality. `auto` compares each of its `candidates` built with the params the auto section gives
it (`meta: {kind: auto, logreg: {C: 0.5}}`), that kind's defaults where none are given, and auto's `cv_folds`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from foldstack.config import AutoMetaConfig, MetaConfig
from foldstack.core.meta.arrays import check_probas, row_log_losses
from foldstack.core.meta.base import make_meta, register_meta
from foldstack.models.base import check_labels


@register_meta("auto")
class AutoMeta:
    """`auto` is no learner of its own: `select_meta` resolves it to one of its candidates by CV first."""

    kind: str

    @classmethod
    def from_config(cls, cfg: MetaConfig, n_classes: int, seed: int) -> Any:
        raise ValueError("meta.kind auto names no single learner: select_meta resolves it by CV first")


def cross_validated_proba(
    cfg: MetaConfig, probas: Sequence[np.ndarray], y: np.ndarray, n_classes: int, seed: int,
    groups: np.ndarray | None = None,
) -> tuple[np.ndarray, int]:
    """Held-out meta-learner probabilities for every OOF row, and the number of CV splits that ran.

    For each CV split a fresh meta-learner is fitted on the training rows and predicts the held-out rows, so
    no row is predicted by a learner that saw it. With `groups` (the folds' overlap groups) a group is never
    split between a CV fit and its held-out rows: the same honesty the base models' folds have.

    The number of splits is `cfg.cv_folds`, lowered when there are fewer groups (or rows of the most
    populous class) than that.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    cfg = cfg.resolved()
    if cfg.kind == "auto":
        raise ValueError("cross_validated_proba: resolve meta.kind auto first (select_meta)")
    probas = check_probas(probas, n_classes, "cross_validate_meta")
    y = check_labels(y, probas[0].shape[0], n_classes, "cross_validate_meta")
    n_rows = len(y)
    class_counts = np.bincount(y, minlength=n_classes)
    n_splits = min(cfg.cv_folds, int(class_counts.max()))
    if groups is not None:
        n_splits = min(n_splits, len(np.unique(groups)))
    if n_splits < 2:
        raise ValueError(f"cross_validate_meta: {n_rows} rows are too few to cross-validate the meta-learner")

    held_out_proba = np.full((n_rows, n_classes), np.nan)
    with warnings.catch_warnings():
        # The splitters warn when a class has fewer rows than splits; that is expected on small data and
        # the rows still each land in exactly one test split.
        warnings.filterwarnings("ignore", message=".*least populated class.*", category=UserWarning)
        if groups is None:
            splits = list(StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(
                np.zeros(n_rows), y))
        else:
            splits = list(StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(
                np.zeros(n_rows), y, groups))
    for train_rows, test_rows in splits:
        learner = make_meta(cfg, n_classes, seed)
        learner.fit([proba[train_rows] for proba in probas], y[train_rows])
        held_out_proba[test_rows] = learner.predict_proba([proba[test_rows] for proba in probas])
    if np.isnan(held_out_proba).any():
        raise AssertionError("cross_validate_meta: some rows were never in a test split")
    return held_out_proba, n_splits


def _cv_summary(cfg: MetaConfig, y: np.ndarray, held_out_proba: np.ndarray, n_splits: int,
                n_classes: int) -> dict[str, Any]:
    from sklearn.metrics import accuracy_score, f1_score, log_loss

    predicted = held_out_proba.argmax(axis=1)
    return {
        "kind": cfg.kind,
        "cv_folds": cfg.cv_folds,
        "cv_folds_used": n_splits,
        "n_rows": int(len(y)),
        "accuracy": float(accuracy_score(y, predicted)),
        "macro_f1": float(f1_score(y, predicted, average="macro", zero_division=0)),
        "log_loss": float(log_loss(y, held_out_proba, labels=list(range(n_classes)))),
    }


def cross_validate_meta(
    cfg: MetaConfig, probas: Sequence[np.ndarray], y: np.ndarray, n_classes: int, seed: int,
    groups: np.ndarray | None = None,
) -> dict[str, Any]:
    """The meta-learner's quality (accuracy, macro F1, log loss) by CV on the OOF matrices.

    The OOF rows are themselves predictions of base models that never trained on them, so this is an honest
    second level of held-out evaluation; `cv_folds_used` reports how many splits ran. With `auto`, the
    estimate is the chosen kind's.
    """
    return select_meta(cfg, probas, y, n_classes, seed, groups).cv


@dataclass
class MetaSelection:
    """What `select_meta` decided: the kind to fit, its CV estimate and held-out predictions, the field."""

    config: MetaConfig
    cv: dict[str, Any]
    held_out_proba: np.ndarray
    candidates: dict[str, dict[str, Any]] = field(default_factory=dict)
    reason: str = ""


def select_meta(
    cfg: MetaConfig, probas: Sequence[np.ndarray], y: np.ndarray, n_classes: int, seed: int,
    groups: np.ndarray | None = None,
) -> MetaSelection:
    """Resolve `meta.kind` (for `auto`, by CV on the OOF) and estimate the chosen kind's quality.

    `auto` cross-validates each of `cfg.candidates` (listed simplest first) on the same splits and takes
    the one of lowest CV log loss, unless a simpler one is within `cfg.tie_se` standard errors of the
    paired per-row log-loss difference: a tie goes to the simpler kind. The plain mean is a candidate, so the
    stack cannot be chosen worse than its own mean beyond the noise of the CV estimate.
    """
    y = np.asarray(y)
    cfg = cfg.resolved()
    if isinstance(cfg, AutoMetaConfig):
        return _select_auto(cfg, probas, y, n_classes, seed, groups)
    held_out, n_splits = cross_validated_proba(cfg, probas, y, n_classes, seed, groups)
    return MetaSelection(cfg, _cv_summary(cfg, y, held_out, n_splits, n_classes), held_out)


def _select_auto(
    cfg: AutoMetaConfig, probas: Sequence[np.ndarray], y: np.ndarray, n_classes: int, seed: int,
    groups: np.ndarray | None,
) -> MetaSelection:
    order = cfg.candidates
    runs = {}
    for kind in order:
        candidate = cfg.candidate(kind)
        held_out, n_splits = cross_validated_proba(candidate, probas, y, n_classes, seed, groups)
        runs[kind] = (candidate, held_out, _cv_summary(candidate, y, held_out, n_splits, n_classes))
    losses = {kind: row_log_losses(held_out, y) for kind, (_, held_out, _) in runs.items()}
    best = min(runs, key=lambda kind: (losses[kind].mean(), order.index(kind)))
    candidates = {}
    chosen = best
    for kind in order:  # simplest first: the first within the tie band wins
        difference = losses[kind] - losses[best]
        se = float(difference.std(ddof=1) / np.sqrt(len(difference))) if len(difference) > 1 else 0.0
        margin = float(difference.mean())
        candidates[kind] = {**runs[kind][2], "log_loss_minus_best": margin, "paired_se": se}
        if chosen == best and kind != best and margin <= cfg.tie_se * se and order.index(kind) < order.index(best):
            chosen = kind
    chosen_cfg, held_out, cv = runs[chosen]
    others = sorted((k for k in runs if k != chosen), key=lambda k: losses[k].mean())
    if chosen == best:
        runner_up = others[0] if others else None
        reason = (f"lowest CV log loss {cv['log_loss']:.4f}" + (
            f", {candidates[runner_up]['log_loss']-cv['log_loss']:.4f} below {runner_up}" if runner_up else ""))
    else:
        reason = (f"within {cfg.tie_se:g} SE of {best} ({candidates[chosen]['log_loss_minus_best']:.4f} "
                  f"worse, SE {candidates[chosen]['paired_se']:.4f}): the simpler kind wins the tie")
    return MetaSelection(chosen_cfg, cv, held_out, candidates, reason)
