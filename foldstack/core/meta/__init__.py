"""Meta-learners: combine the base models' class probabilities into the ensemble's prediction.

Every meta-learner takes `probas`, a list with one (n_rows, n_classes) probability matrix per base model
(always in the same model order), and integer labels `y`. During `fit` the matrices are the base models'
out-of-fold (OOF) predictions, so the meta-learner never learns from a base model's fit on the same row;
at predict time they are the base models' predictions on new data (the holdout, or a request).

Kinds (`MetaConfig.kind`; `auto`, the default, picks one of the first three by CV on the OOF: `select_meta`):
- `logreg` — multinomial logistic regression on the stacked (log-odds of the) probabilities: learns how much
  to trust each model, and for which class.
- `ensemble_selection` — Caruana et al. (2004) greedy forward selection with replacement: a weighted mean of
  the base models whose weights are selection counts.
- `weighted_mean` — the plain mean of the base models' probabilities (uniform weights by default): the
  "mean" baseline of the seeds.
- `vote` — majority vote of the base models' top classes: the "vote" baseline of the seeds.

All of them save to a directory as a single JSON file (no pickle); `load_meta(directory)` rebuilds any kind.
They import no prefect, wandb or dvc.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import numpy as np

from foldstack.config import MetaConfig
from foldstack.models.base import check_labels

META_FILE = "meta.json"
META_FORMAT_VERSION = 1

# Probabilities are clipped into [PROBA_CLIP, 1 - PROBA_CLIP] before taking logs: a base model that says
# exactly 0 or 1 would otherwise give infinite features (log-odds) or an infinite loss.
PROBA_CLIP = 1e-6


# --------------------------------------------------------------------------------------------------------
# Input checks and shared helpers
# --------------------------------------------------------------------------------------------------------
def _check_probas(probas: Sequence[np.ndarray], n_classes: int, who: str) -> list[np.ndarray]:
    """The base models' matrices as float64, each checked for shape, finiteness and equal row counts."""
    if isinstance(probas, np.ndarray):
        raise TypeError(f"{who}: probas must be a list of (n_rows, n_classes) arrays, one per base model")
    if len(probas) == 0:
        raise ValueError(f"{who}: probas is empty; at least one base model's probabilities are needed")
    checked = []
    for i, proba in enumerate(probas):
        proba = np.asarray(proba, dtype=np.float64)
        if proba.ndim != 2 or proba.shape[1] != n_classes:
            raise ValueError(f"{who}: probas[{i}] has shape {proba.shape}; expected (n_rows, {n_classes})")
        if not np.all(np.isfinite(proba)):
            raise ValueError(f"{who}: probas[{i}] holds NaN or infinite values (is the OOF matrix complete?)")
        if checked and proba.shape[0] != checked[0].shape[0]:
            raise ValueError(
                f"{who}: probas[{i}] has {proba.shape[0]} rows but probas[0] has {checked[0].shape[0]}"
            )
        checked.append(proba)
    return checked


def _check_model_count(probas: list[np.ndarray], expected: int, who: str) -> None:
    if len(probas) != expected:
        raise ValueError(f"{who}: fitted on {expected} base models but given {len(probas)} probability matrices")


def _mean_log_loss(proba: np.ndarray, y: np.ndarray) -> float:
    """Log loss of one (n, C) matrix; the true class's probability is clipped so a hard miss stays finite."""
    p_true = proba[np.arange(len(y)), y]
    return float(-np.mean(np.log(np.clip(p_true, 1e-15, 1.0))))


def _softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------------------------------------
# Base class: params, JSON persistence
# --------------------------------------------------------------------------------------------------------
class MetaLearner:
    """Shared plumbing. Subclasses set `kind`, `_param_names`, `_learned_names` and implement fit/predict."""

    kind: ClassVar[str]
    _param_names: ClassVar[tuple[str, ...]]
    _learned_names: ClassVar[tuple[str, ...]]

    n_classes: int

    def get_params(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._param_names}

    def fit(self, probas: Sequence[np.ndarray], y: np.ndarray) -> Self:
        raise NotImplementedError

    def predict_proba(self, probas: Sequence[np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def predict(self, probas: Sequence[np.ndarray]) -> np.ndarray:
        return self.predict_proba(probas).argmax(axis=1)

    def _check_fitted(self) -> None:
        missing = [name for name in self._learned_names if not hasattr(self, name)]
        if missing:
            raise RuntimeError(f"{type(self).__name__} ({self.kind}) is not fitted; call fit(probas, y) first")

    def _learned_state(self) -> dict[str, Any]:
        state = {}
        for name in self._learned_names:
            value = getattr(self, name)
            state[name] = value.tolist() if isinstance(value, np.ndarray) else value
        return state

    def _restore_learned_state(self, state: dict[str, Any]) -> None:
        for name in self._learned_names:
            if name not in state:
                raise ValueError(f"saved {self.kind} meta-learner lacks the learned attribute {name!r}")
            setattr(self, name, state[name])

    def save(self, directory: Path | str) -> None:
        """Write params and learned attributes as one JSON file (floats round-trip exactly through JSON)."""
        self._check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        payload = {
            "format_version": META_FORMAT_VERSION,
            "kind": self.kind,
            "params": self.get_params(),
            "learned": self._learned_state(),
        }
        (directory / META_FILE).write_text(json.dumps(payload, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, directory: Path | str) -> MetaLearner:
        """Load a saved meta-learner; on the base class this dispatches on the saved kind."""
        payload = _read_meta_json(Path(directory))
        kind = payload["kind"]
        target = META_KINDS.get(kind)
        if target is None:
            raise ValueError(f"{directory}/{META_FILE}: unknown meta-learner kind {kind!r}")
        if cls is not MetaLearner and target is not cls:
            raise ValueError(f"{directory}/{META_FILE} holds a {kind!r} meta-learner, not {cls.kind!r}")
        learner = target(**payload["params"])
        learner._restore_learned_state(payload["learned"])
        return learner

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"


def _read_meta_json(directory: Path) -> dict[str, Any]:
    path = directory / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no saved meta-learner here")
    payload = json.loads(path.read_text(encoding="utf-8"))
    version = payload.get("format_version")
    if version != META_FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {version!r}; this foldstack reads {META_FORMAT_VERSION}")
    return payload


def load_meta(directory: Path | str) -> MetaLearner:
    """Rebuild whichever meta-learner kind was saved in `directory`."""
    return MetaLearner.load(directory)


# --------------------------------------------------------------------------------------------------------
# logreg
# --------------------------------------------------------------------------------------------------------
class LogisticStacker(MetaLearner):
    """Multinomial logistic regression on the base models' stacked probabilities.

    Features per base model:
    - binary task: only P(class 1) (P(class 0) is 1 minus it, a perfectly collinear column), as log-odds
      `log(p / (1 - p))` when `logit`, else as the probability itself;
    - multiclass: all C columns, as centred log-ratios `log p_c - mean_c log p_c` when `logit` (the log-odds
      analogue that does not depend on a reference class), else the probabilities.
    `passthrough` (only meaningful with `logit`) appends the raw probabilities beside the log-odds.

    sklearn fits the coefficients; prediction is re-implemented from `coef_` / `intercept_` so that a saved
    model needs only these numbers, and so a loaded model predicts bit-for-bit what the fitted one did.
    """

    kind: ClassVar[str] = "logreg"
    _param_names = ("n_classes", "C", "logit", "passthrough", "max_iter", "seed")
    _learned_names = ("classes_", "coef_", "intercept_", "n_models_", "n_features_in_")

    def __init__(
        self,
        n_classes: int,
        C: float = 1.0,
        logit: bool = True,
        passthrough: bool = False,
        max_iter: int = 1000,
        seed: int = 0,
    ) -> None:
        self.n_classes = n_classes
        self.C = C
        self.logit = logit
        self.passthrough = passthrough
        self.max_iter = max_iter
        self.seed = seed

    def _features(self, probas: list[np.ndarray]) -> np.ndarray:
        blocks = []
        for proba in probas:
            # Binary: one column carries all the information; two would be exactly collinear.
            raw = proba[:, 1:2] if self.n_classes == 2 else proba
            if not self.logit:
                blocks.append(raw)
                continue
            clipped = np.clip(raw, PROBA_CLIP, 1.0 - PROBA_CLIP)
            if self.n_classes == 2:
                transformed = np.log(clipped) - np.log1p(-clipped)
            else:
                log_p = np.log(clipped)
                transformed = log_p - log_p.mean(axis=1, keepdims=True)
            blocks.append(transformed)
            if self.passthrough:
                blocks.append(raw)
        return np.hstack(blocks)

    def fit(self, probas: Sequence[np.ndarray], y: np.ndarray) -> Self:
        from sklearn.linear_model import LogisticRegression

        probas = _check_probas(probas, self.n_classes, "logreg meta-learner fit")
        y = check_labels(y, probas[0].shape[0], self.n_classes, "logreg meta-learner fit")
        if np.unique(y).size < 2:
            raise ValueError("logreg meta-learner fit: y holds a single class; stacking needs at least two")
        features = self._features(probas)
        model = LogisticRegression(C=self.C, max_iter=self.max_iter, random_state=self.seed)
        model.fit(features, y)
        self.classes_ = [int(c) for c in model.classes_]
        self.coef_ = model.coef_.tolist()
        self.intercept_ = model.intercept_.tolist()
        self.n_models_ = len(probas)
        self.n_features_in_ = int(features.shape[1])
        return self

    def predict_proba(self, probas: Sequence[np.ndarray]) -> np.ndarray:
        self._check_fitted()
        probas = _check_probas(probas, self.n_classes, "logreg meta-learner predict")
        _check_model_count(probas, self.n_models_, "logreg meta-learner predict")
        features = self._features(probas)
        coef = np.asarray(self.coef_, dtype=np.float64)
        intercept = np.asarray(self.intercept_, dtype=np.float64)
        scores = features @ coef.T + intercept
        if len(self.classes_) == 2:
            # sklearn's binary model: one score row, P(second class) = sigmoid(score).
            p_second = 1.0 / (1.0 + np.exp(-scores[:, 0]))
            seen_proba = np.column_stack([1.0 - p_second, p_second])
        else:
            seen_proba = _softmax(scores)
        # A class absent from the fit's y (possible only in a CV split of a tiny data set) gets probability 0.
        proba = np.zeros((features.shape[0], self.n_classes))
        proba[:, self.classes_] = seen_proba
        return proba


# --------------------------------------------------------------------------------------------------------
# ensemble_selection
# --------------------------------------------------------------------------------------------------------
class EnsembleSelection(MetaLearner):
    """Caruana et al. (2004), "Ensemble selection from libraries of models": greedy forward selection.

    Start with the single model of lowest OOF log loss; then, `rounds - 1` times, add (with replacement) the
    model whose inclusion gives the mean-probability ensemble the lowest OOF log loss. A model's weight is
    the number of times it was picked divided by `rounds`, so the weights sum to 1. Ties go to the model
    listed first, so the result is deterministic.
    """

    kind: ClassVar[str] = "ensemble_selection"
    _param_names = ("n_classes", "rounds")
    _learned_names = ("weights_", "selection_counts_", "selection_order_", "n_models_")

    def __init__(self, n_classes: int, rounds: int = 50) -> None:
        self.n_classes = n_classes
        self.rounds = rounds

    def fit(self, probas: Sequence[np.ndarray], y: np.ndarray) -> Self:
        if self.rounds < 1:
            raise ValueError(f"ensemble_selection: rounds must be at least 1, got {self.rounds}")
        probas = _check_probas(probas, self.n_classes, "ensemble_selection fit")
        y = check_labels(y, probas[0].shape[0], self.n_classes, "ensemble_selection fit")
        rows = np.arange(len(y))
        # Log loss needs only each row's true-class probability, and the ensemble's true-class probability
        # is the mean of the members', so one (n_rows, n_models) matrix is all the search touches.
        p_true = np.column_stack([proba[rows, y] for proba in probas])
        single_losses = -np.log(np.clip(p_true, 1e-15, 1.0)).mean(axis=0)
        first = int(np.argmin(single_losses))
        counts = np.zeros(len(probas), dtype=np.int64)
        counts[first] = 1
        order = [first]
        running_sum = p_true[:, first].copy()
        for size in range(2, self.rounds + 1):
            candidate_mean = (running_sum[:, None] + p_true) / size
            losses = -np.log(np.clip(candidate_mean, 1e-15, 1.0)).mean(axis=0)
            best = int(np.argmin(losses))
            counts[best] += 1
            order.append(best)
            running_sum += p_true[:, best]
        self.selection_counts_ = counts.tolist()
        self.selection_order_ = order
        self.weights_ = (counts / self.rounds).tolist()
        self.n_models_ = len(probas)
        return self

    def predict_proba(self, probas: Sequence[np.ndarray]) -> np.ndarray:
        self._check_fitted()
        probas = _check_probas(probas, self.n_classes, "ensemble_selection predict")
        _check_model_count(probas, self.n_models_, "ensemble_selection predict")
        return _weighted_average(probas, np.asarray(self.weights_, dtype=np.float64))


def _weighted_average(probas: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    combined = np.tensordot(weights, np.stack(probas), axes=1)
    # Renormalise: base models' rows sum to 1 only up to float error (and float32 storage).
    return combined / combined.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------------------------------------
# weighted_mean
# --------------------------------------------------------------------------------------------------------
class WeightedMean(MetaLearner):
    """The mean of the base models' probabilities — the seeds' "mean" baseline.

    `weighting="uniform"` (the default, what `make_meta` builds) gives every model weight 1/M: the plain mean,
    with nothing learned from the OOF beyond the number of models. `weighting="softmax_neg_log_loss"` weighs
    model m by exp(-OOF log loss of m), normalised — better models count more, smoothly, with no search that
    could overfit the OOF.
    """

    kind: ClassVar[str] = "weighted_mean"
    _param_names = ("n_classes", "weighting")
    _learned_names = ("weights_", "n_models_")
    WEIGHTINGS: ClassVar[tuple[str, ...]] = ("uniform", "softmax_neg_log_loss")

    def __init__(
        self, n_classes: int, weighting: Literal["uniform", "softmax_neg_log_loss"] = "uniform"
    ) -> None:
        self.n_classes = n_classes
        self.weighting = weighting

    def fit(self, probas: Sequence[np.ndarray], y: np.ndarray) -> Self:
        if self.weighting not in self.WEIGHTINGS:
            raise ValueError(f"weighted_mean: weighting must be one of {self.WEIGHTINGS}, got {self.weighting!r}")
        probas = _check_probas(probas, self.n_classes, "weighted_mean fit")
        y = check_labels(y, probas[0].shape[0], self.n_classes, "weighted_mean fit")
        if self.weighting == "uniform":
            weights = np.full(len(probas), 1.0 / len(probas))
        else:
            losses = np.array([_mean_log_loss(proba, y) for proba in probas])
            weights = _softmax(-losses[None, :])[0]
        self.weights_ = weights.tolist()
        self.n_models_ = len(probas)
        return self

    def predict_proba(self, probas: Sequence[np.ndarray]) -> np.ndarray:
        self._check_fitted()
        probas = _check_probas(probas, self.n_classes, "weighted_mean predict")
        _check_model_count(probas, self.n_models_, "weighted_mean predict")
        return _weighted_average(probas, np.asarray(self.weights_, dtype=np.float64))


# --------------------------------------------------------------------------------------------------------
# vote
# --------------------------------------------------------------------------------------------------------
class MajorityVote(MetaLearner):
    """Majority vote of the base models' top classes — the seeds' "vote" baseline.

    The probability of class c is proportional to
        votes_c + tie_break_weight * mean_proba_c + smoothing
    - votes dominate: with tie_break_weight < 1 the mean-probability term (at most tie_break_weight apart
      between two classes) can never overturn a whole vote, but it decides ties, towards the class the
      models are on average more confident in;
    - `smoothing` keeps every class's probability above zero so that log loss stays finite.
    """

    kind: ClassVar[str] = "vote"
    _param_names = ("n_classes", "tie_break_weight", "smoothing")
    _learned_names = ("n_models_",)

    def __init__(self, n_classes: int, tie_break_weight: float = 0.5, smoothing: float = 0.01) -> None:
        self.n_classes = n_classes
        self.tie_break_weight = tie_break_weight
        self.smoothing = smoothing

    def fit(self, probas: Sequence[np.ndarray], y: np.ndarray) -> Self:
        if not 0.0 < self.tie_break_weight < 1.0:
            raise ValueError(f"vote: tie_break_weight must lie in (0, 1), got {self.tie_break_weight}")
        if self.smoothing <= 0.0:
            raise ValueError(f"vote: smoothing must be positive (it keeps log loss finite), got {self.smoothing}")
        probas = _check_probas(probas, self.n_classes, "vote fit")
        check_labels(y, probas[0].shape[0], self.n_classes, "vote fit")
        self.n_models_ = len(probas)
        return self

    def predict_proba(self, probas: Sequence[np.ndarray]) -> np.ndarray:
        self._check_fitted()
        probas = _check_probas(probas, self.n_classes, "vote predict")
        _check_model_count(probas, self.n_models_, "vote predict")
        votes = np.zeros_like(probas[0])
        rows = np.arange(votes.shape[0])
        for proba in probas:
            votes[rows, proba.argmax(axis=1)] += 1.0
        mean_proba = np.mean(np.stack(probas), axis=0)
        scores = votes + self.tie_break_weight * mean_proba + self.smoothing
        return scores / scores.sum(axis=1, keepdims=True)


META_KINDS: dict[str, type[MetaLearner]] = {
    cls.kind: cls for cls in (LogisticStacker, EnsembleSelection, WeightedMean, MajorityVote)
}


def make_meta(cfg: MetaConfig, n_classes: int, seed: int) -> MetaLearner:
    """Build the (unfitted) meta-learner that `cfg.kind` names, with its knobs from `cfg`."""
    if n_classes < 2:
        raise ValueError(f"a meta-learner needs at least 2 classes, got n_classes={n_classes}")
    if cfg.kind == "auto":
        raise ValueError("meta.kind auto names no single learner: select_meta resolves it by CV first")
    if cfg.kind == "logreg":
        return LogisticStacker(n_classes, C=cfg.C, logit=cfg.logit, passthrough=cfg.passthrough, seed=seed)
    if cfg.kind == "ensemble_selection":
        return EnsembleSelection(n_classes, rounds=cfg.selection_rounds)
    if cfg.kind == "weighted_mean":
        return WeightedMean(n_classes)
    if cfg.kind == "vote":
        return MajorityVote(n_classes)
    raise ValueError(f"unknown meta-learner kind {cfg.kind!r}; available: {', '.join(META_KINDS)}")


# --------------------------------------------------------------------------------------------------------
# The meta-learner's own quality, and `auto`: the kind chosen by it
# --------------------------------------------------------------------------------------------------------
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

    if cfg.kind == "auto":
        raise ValueError("cross_validated_proba: resolve meta.kind auto first (select_meta)")
    probas = _check_probas(probas, n_classes, "cross_validate_meta")
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


def _row_log_losses(proba: np.ndarray, y: np.ndarray) -> np.ndarray:
    return -np.log(np.clip(proba[np.arange(len(y)), y], 1e-15, 1.0))


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

    `auto` cross-validates each of `cfg.auto_candidates` (listed simplest first) on the same splits and takes
    the one of lowest CV log loss, unless a simpler one is within `cfg.auto_tie_se` standard errors of the
    paired per-row log-loss difference: a tie goes to the simpler kind. The plain mean is a candidate, so the
    stack cannot be chosen worse than its own mean beyond the noise of the CV estimate.
    """
    y = np.asarray(y)
    if cfg.kind != "auto":
        held_out, n_splits = cross_validated_proba(cfg, probas, y, n_classes, seed, groups)
        return MetaSelection(cfg, _cv_summary(cfg, y, held_out, n_splits, n_classes), held_out)

    runs = {}
    for kind in cfg.auto_candidates:
        candidate = cfg.model_copy(update={"kind": kind})
        held_out, n_splits = cross_validated_proba(candidate, probas, y, n_classes, seed, groups)
        runs[kind] = (candidate, held_out, _cv_summary(candidate, y, held_out, n_splits, n_classes))
    losses = {kind: _row_log_losses(held_out, y) for kind, (_, held_out, _) in runs.items()}
    best = min(runs, key=lambda kind: (losses[kind].mean(), cfg.auto_candidates.index(kind)))
    candidates = {}
    chosen = best
    for kind in cfg.auto_candidates:  # simplest first: the first within the tie band wins
        difference = losses[kind] - losses[best]
        se = float(difference.std(ddof=1) / np.sqrt(len(difference))) if len(difference) > 1 else 0.0
        margin = float(difference.mean())
        candidates[kind] = {**runs[kind][2], "log_loss_minus_best": margin, "paired_se": se}
        if chosen == best and kind != best and margin <= cfg.auto_tie_se * se \
                and cfg.auto_candidates.index(kind) < cfg.auto_candidates.index(best):
            chosen = kind
    chosen_cfg, held_out, cv = runs[chosen]
    others = sorted((k for k in runs if k != chosen), key=lambda k: losses[k].mean())
    if chosen == best:
        runner_up = others[0] if others else None
        reason = (f"lowest CV log loss {cv['log_loss']:.4f}" + (
            f", {candidates[runner_up]['log_loss']-cv['log_loss']:.4f} below {runner_up}" if runner_up else ""))
    else:
        reason = (f"within {cfg.auto_tie_se:g} SE of {best} ({candidates[chosen]['log_loss_minus_best']:.4f} "
                  f"worse, SE {candidates[chosen]['paired_se']:.4f}): the simpler kind wins the tie")
    return MetaSelection(chosen_cfg, cv, held_out, candidates, reason)
