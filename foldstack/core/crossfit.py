"""The cross-fitting core: every (base model, fold) fit, the OOF matrices they fill, the meta-learner on top,
and the identities and seeds of all of them.

The pipeline's stages (`foldstack.pipeline.stages`: files, resume, the CLI, dvc.yaml and the Prefect tasks) and the
scikit-learn estimator (`foldstack.estimator`: memory) are two front ends over these functions. A fold's
seed depends on the params seed, the model's spec and the fold assignment only, never on the holdout, so
the same params and training rows give bit-identical OOF through either front end.

- `FoldUnit` / `plan_units`: one base model on one (repeat, fold), with its seed;
- `fit_unit`: fit it on the fold's training part, predict its validation part (and the pipeline's holdout);
- `fill_oof`: OOF matrices start as NaN, each row is filled exactly once per repeat (asserted);
- `fit_meta`: choose (`meta.kind auto`) and fit the meta-learner on the OOF matrices;
- `fold_identity`: what a finished fold of the pipeline is recognised by (resume).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from foldstack.config import BaseModelSpec, MetaConfig
from foldstack.errors import FoldstackError
from foldstack.core.folds import FoldAssignment
from foldstack.common.files import derive_seed, sha256_json
from foldstack.core.meta import MetaLearner, MetaSelection, make_meta, select_meta
from foldstack.models import code_version, make_model
from foldstack.models.base import BaseModel, ModelContext, check_proba

FULL_FIT = -1  # the fold index of a refit on all training rows (runtime.refit_full)


def member_name(repeat: int, fold: int) -> str:
    """The directory name of one fitted member, in a fold task's place and in a bundle."""
    return "full" if fold == FULL_FIT else f"fold-r{repeat}-k{fold}"


def unit_label(model: str, repeat: int, fold: int) -> str:
    return f"{model}/full" if fold == FULL_FIT else f"{model}/r{repeat}-k{fold}"


# ------------------------------------------------------------------------------------ seeds and identities
def fold_seed(seed: int, spec: BaseModelSpec, folds_hash: str, repeat: int, fold: int) -> int:
    """The seed of one (model, fold) fit: from the params seed, the model's spec and the fold assignment.

    Not from the data hash: that covers the holdout, which no fit sees, and the estimator has none.
    """
    return derive_seed(seed, sha256_json({"spec": spec.model_dump(mode="json"), "folds": folds_hash,
                                          "repeat": repeat, "fold": fold}))


def meta_seed(seed: int) -> int:
    return derive_seed(seed, "meta")


@dataclass(frozen=True)
class FoldUnit:
    """One base model on one (repeat, fold): the unit of parallel work of the pipeline and the estimator."""

    spec: BaseModelSpec
    repeat: int
    fold: int
    seed: int  # the fit's own seed (`fold_seed`)

    @classmethod
    def of(cls, spec: BaseModelSpec, repeat: int, fold: int, *, seed: int, folds_hash: str) -> FoldUnit:
        return cls(spec, repeat, fold, fold_seed(seed, spec, folds_hash, repeat, fold))

    @property
    def label(self) -> str:
        return unit_label(self.spec.name, self.repeat, self.fold)


def plan_units(specs: Sequence[BaseModelSpec], folds: FoldAssignment, seed: int, *,
               refit_full: bool = False) -> list[FoldUnit]:
    """Every (model, repeat, fold) unit in a stable order: model by model, then repeat and fold."""
    pairs = folds.tasks() + ([(0, FULL_FIT)] if refit_full else [])
    return [FoldUnit.of(spec, r, f, seed=seed, folds_hash=folds.hash) for spec in specs for r, f in pairs]


def fold_identity(unit: FoldUnit, data_hash: str, folds_hash: str) -> str:
    """What a finished fold task of the pipeline is recognised by: its inputs (the snapshot, holdout included,
    whose predictions it stores), the fold assignment, the spec, the kind's code and the fit's seed."""
    return sha256_json({
        "data": data_hash, "folds": folds_hash, "spec": unit.spec.model_dump(mode="json"),
        "code": code_version(unit.spec.kind), "seed": unit.seed, "repeat": unit.repeat, "fold": unit.fold,
    })[:24]


# ------------------------------------------------------------------------------------------- the unit
def fold_rows(folds: FoldAssignment, repeat: int, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, validation rows) of one unit; a full refit trains on every row and validates none."""
    if fold == FULL_FIT:
        return np.arange(folds.n_rows), np.arange(0)
    return folds.split(repeat, fold)


@dataclass
class FoldFit:
    """What one unit produced: the fitted model and its out-of-fold (and holdout) probabilities."""

    unit: FoldUnit
    model: BaseModel
    n_train: int
    val_rows: np.ndarray
    val_proba: np.ndarray
    holdout_proba: np.ndarray
    fit_seconds: float


def fit_unit(unit: FoldUnit, texts: Sequence[str], y: np.ndarray, folds: FoldAssignment, *, n_classes: int,
             device: str = "cpu", cache_dir: Path | None = None, base_dir: Path | None = None,
             holdout_texts: Sequence[str] = ()) -> FoldFit:
    """Fit `unit`'s model on its fold's training rows; predict the fold's validation rows and `holdout_texts`.

    `texts` and `y` (int codes) are every training row; the fold assignment says which ones this fit sees.
    """
    train_idx, val_idx = fold_rows(folds, unit.repeat, unit.fold)
    context = ModelContext(n_classes=n_classes, device=device, seed=unit.seed, cache_dir=cache_dir,
                           base_dir=base_dir)
    started = time.perf_counter()
    try:
        model = make_model(unit.spec.kind, unit.spec.params, context)
        model.fit([texts[i] for i in train_idx], np.asarray(y)[train_idx])
    except FoldstackError as exc:  # the kind alone does not say which base model failed
        raise type(exc)(f"base_models.{unit.spec.name} (fold {unit.label}): {exc}") from None
    fit_seconds = time.perf_counter() - started
    return FoldFit(unit=unit, model=model, n_train=len(train_idx), val_rows=val_idx,
                   val_proba=_predict(model, [texts[i] for i in val_idx], n_classes, unit.label),
                   holdout_proba=_predict(model, list(holdout_texts), n_classes, unit.label),
                   fit_seconds=fit_seconds)


def _predict(model: BaseModel, texts: list[str], n_classes: int, who: str) -> np.ndarray:
    if not texts:  # a full refit validates nothing; the estimator has no holdout
        return np.zeros((0, n_classes))
    return check_proba(model.predict_proba(texts), len(texts), n_classes, who)


# ------------------------------------------------------------------------------------------------ OOF
def fill_oof(repeats: int, n_rows: int, n_classes: int,
             pieces: Iterable[tuple[int, np.ndarray, np.ndarray]], who: str) -> np.ndarray:
    """OOF of shape (repeats, rows, classes) from (repeat, row indices, probabilities) pieces.

    Starts as NaN; a row predicted twice in one repeat, or never, is an error: that is the no-leakage and
    coverage guarantee the meta-learner relies on.
    """
    oof = np.full((repeats, n_rows, n_classes), np.nan)
    filled = np.zeros((repeats, n_rows), dtype=np.int64)
    for repeat, rows, proba in pieces:
        if np.any(filled[repeat, rows]):
            raise AssertionError(f"OOF of {who}: repeat {repeat} predicts some rows twice")
        oof[repeat, rows] = proba
        filled[repeat, rows] += 1
    if not (filled == 1).all():
        missing = np.argwhere(filled != 1)[:5].tolist()
        raise AssertionError(f"OOF of {who}: rows never predicted out of fold (repeat, row): {missing}")
    assert not np.isnan(oof).any(), f"OOF of {who}: NaN left after every fold was collected"
    return oof


# ----------------------------------------------------------------------------------------------- meta
def fit_meta(meta_cfg: MetaConfig, oofs: list[np.ndarray], y: np.ndarray, n_classes: int, seed: int,
             groups: np.ndarray) -> tuple[MetaSelection, MetaLearner]:
    """Resolve `meta.kind` (auto: by CV on the OOF, keeping the overlap `groups` whole), estimate its quality,
    and fit it on all OOF rows. `oofs` are the base models' OOF matrices averaged over repeats."""
    seed = meta_seed(seed)
    selection = select_meta(meta_cfg, oofs, y, n_classes, seed, groups)
    return selection, make_meta(selection.config, n_classes, seed).fit(oofs, y)
