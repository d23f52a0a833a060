"""`FoldStackClassifier`: the stacking machinery as a scikit-learn estimator.

A thin in-memory front end over `foldstack.core.crossfit`, the core the pipeline's stages use too: the same
overlap groups and fold assignment, the same (model, fold) fits with the same seeds, the same OOF collection
and meta-learner choice. It fits on texts and labels with no holdout (scikit-learn's model selection tools
provide that), so with the pipeline's training rows and the same params its OOF is the pipeline's, bit for
bit. `save_bundle` writes the pipeline's hash-verified bundle: `foldstack predict`, the registry and the
service take it as they take one from `foldstack train`.

    clf = FoldStackClassifier().fit(texts, labels)      # the recommended stack, as params.yaml ships it
    clf.predict_proba(new_texts); clf.save_bundle("my_bundle")
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from joblib import effective_n_jobs, parallel_config
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.parallel import Parallel, delayed
from sklearn.utils.validation import check_is_fitted, column_or_1d

from foldstack.bundle import write_manifest
from foldstack.config import Config, config_from_dict
from foldstack.core.crossfit import FoldFit, FoldUnit, fill_oof, fit_meta, fit_unit, member_name, plan_units
from foldstack.core.data import normalise_text
from foldstack.models.defaults import recommended_base_models
from foldstack.core.ensemble import StackedPredictor
from foldstack.errors import ConfigError
from foldstack.core.folds import FoldAssignment, assign_folds
from foldstack.common.files import atomic_directory, sha256_json
from foldstack.core.grouping import group_texts
from foldstack.models.transformers.hf import default_cache_dir

_NAME = "FoldStackClassifier"


class FoldStackClassifier(ClassifierMixin, BaseEstimator):
    """K-fold stacked ensemble of text classifiers.

    Parameters
    ----------
    base_models : list of dicts ``{"name", "kind", "params"}``, or a mapping ``name -> {"kind", "params"}``
        (params.yaml's ``base_models``, in either form). None: the recommended stack params.yaml ships
        (``foldstack.models.defaults``), without the embedding model when the ``pretrained`` extra is missing
        (with a warning that names it).
    meta : dict of ``meta`` params (``MetaConfig``), e.g. ``{"kind": "logreg", "C": 1.0}``. None: ``auto``,
        the meta-learner of best CV log loss on the OOF.
    k, repeats : folds and repeats of the OOF cross-fitting.
    grouping : dict of ``folds.grouping`` params: which overlapping texts share a fold (None: all kinds).
    lowercase : lower-case the texts (``data.lowercase``) besides the NFC + strip every text gets.
    seed : seeds the folds and every fit, as params.yaml's ``seed`` does.
    n_jobs : (model, fold) fits at once, each in its own process with one thread (the pipeline's workers).
        None: 1, unless in a ``joblib.parallel_config`` context; -1: every core.
    verbose : 0 silent; 1 a line per finished fit and the meta-learner's choice.
    device : given to the base models ("cpu", "cuda", "cuda:N").
    cache_dir : where the transformer kinds keep their content-keyed embedding and token caches (memos of
        pure functions of the texts, never a decision). None: ``$FOLDSTACK_CACHE_DIR`` or
        ``~/.cache/foldstack``.

    Attributes
    ----------
    classes_ : the labels, as ``np.unique(y)`` gives them (dtype kept).
    oof_ : base model name -> its OOF probabilities (rows x classes, the mean over repeats).
    meta_kind_ : the meta-learner fitted (with ``auto``, the one the CV chose); ``meta_selection_`` holds
        every candidate's CV scores.
    base_models_ : the base models fitted, with their complete, defaulted params.
    folds_ : the fold assignment (``fold``, ``group`` arrays).
    config_ : the params as the pipeline's ``Config`` (``to_params()`` as validated).
    """

    def __init__(self, base_models: Sequence[dict[str, Any]] | dict[str, dict[str, Any]] | None = None,
                 meta: dict[str, Any] | None = None, k: int = 5, repeats: int = 1,
                 grouping: dict[str, Any] | None = None, lowercase: bool = False, seed: int = 0,
                 n_jobs: int | None = None, verbose: int = 0, device: str = "cpu", cache_dir: str | None = None):
        self.base_models = base_models
        self.meta = meta
        self.k = k
        self.repeats = repeats
        self.grouping = grouping
        self.lowercase = lowercase
        self.seed = seed
        self.n_jobs = n_jobs
        self.verbose = verbose
        self.device = device
        self.cache_dir = cache_dir

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # A 1-D sequence of texts, like scikit-learn's text vectorizers take; no numeric matrix.
        tags.input_tags.string = True
        tags.input_tags.one_d_array = True
        tags.input_tags.two_d_array = False
        return tags

    # ----------------------------------------------------------------------------------------- params
    def to_params(self) -> dict[str, Any]:
        """These params as a params.yaml mapping (no `data.path`): `foldstack train` with them on the same
        training rows makes the same folds and fits, with the same seeds, and so the same OOF."""
        return {
            "seed": self.seed,
            "data": {"lowercase": self.lowercase},
            "folds": {"k": self.k, "repeats": self.repeats, "grouping": dict(self.grouping or {})},
            "base_models": self._base_model_list(warn=False),
            "meta": dict(self.meta or {}),
            "runtime": {"device": self.device},
        }

    def _base_model_list(self, *, warn: bool) -> list[dict[str, Any]]:
        if self.base_models is None:
            models, left_out = recommended_base_models()
            if left_out and warn:
                names = ", ".join(f"{name} (needs the package {module})" for name, module in left_out.items())
                warnings.warn(f"{_NAME}: the recommended stack is fitted without {names}: install "
                              f"foldstack[pretrained] to include it", UserWarning, stacklevel=4)  # the caller of fit
            return models
        if isinstance(self.base_models, dict):  # params.yaml's mapping form: name -> {kind, params}
            return [{**dict(spec), "name": name} for name, spec in self.base_models.items()]
        return [dict(spec) for spec in self.base_models]

    def _config(self) -> Config:
        params = self.to_params()
        params["base_models"] = self._base_model_list(warn=True)
        try:
            return config_from_dict(params, source=_NAME)
        except ConfigError as exc:  # scikit-learn's model selection expects invalid params as a ValueError
            raise ValueError(str(exc)) from None

    # -------------------------------------------------------------------------------------------- fit
    def fit(self, X: Any, y: Any) -> FoldStackClassifier:
        """Cross-fit every base model on K folds of (X, y), then the meta-learner on their OOF predictions."""
        config = self._config()
        texts = _normalised(X, config.data.lowercase)
        y = _targets(y, len(texts))
        classes, codes = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(f"{_NAME}: y holds one class only ({classes[0]!r}); a classifier needs at least two")
        n_classes = len(classes)
        groups = group_texts(texts, config.folds.grouping).groups
        folds = assign_folds(codes, groups, config.folds.k, config.folds.repeats, config.seed, n_classes)
        units = plan_units(config.base_models, folds, config.seed)
        fits = self._fit_units(units, texts, codes, folds, n_classes)

        oofs: dict[str, np.ndarray] = {}
        members: dict[str, list[Any]] = {}
        for spec in config.base_models:
            own = sorted((f for f in fits if f.unit.spec.name == spec.name), key=lambda f: (f.unit.repeat, f.unit.fold))
            pieces = [(f.unit.repeat, f.val_rows, f.val_proba) for f in own]
            oofs[spec.name] = fill_oof(folds.repeats, len(texts), n_classes, pieces, spec.name).mean(axis=0)
            members[spec.name] = [f.model for f in own]
        selection, meta = fit_meta(config.meta, list(oofs.values()), codes, n_classes, config.seed, folds.group)
        if self.verbose:
            print(f"[{_NAME}] meta-learner {selection.config.kind}"
                  + (f": {selection.reason}" if selection.reason else ""), flush=True)

        self.classes_ = classes
        self.config_ = config
        self.base_models_ = [spec.model_dump(mode="json") for spec in config.base_models]
        self.folds_ = folds
        self.oof_ = oofs
        self.meta_selection_ = selection
        self.meta_kind_ = selection.config.kind
        self.predictor_ = StackedPredictor(members, meta, n_classes)
        self.data_hash_ = sha256_json({"labels": classes.tolist(), "train": [texts, codes.tolist()]})[:16]
        return self

    def _fit_units(self, units: list[FoldUnit], texts: list[str], codes: np.ndarray, folds: FoldAssignment,
                   n_classes: int) -> list[FoldFit]:
        cache_dir = Path(self.cache_dir) if self.cache_dir is not None else default_cache_dir()
        settings = {"n_classes": n_classes, "device": self.device, "cache_dir": cache_dir}
        n_jobs = _effective_n_jobs(self.n_jobs, len(units))
        if self.verbose:
            repeats = f" x {folds.repeats} repeats" if folds.repeats > 1 else ""
            print(f"[{_NAME}] {len(units)} fits ({len(units) // len(folds.tasks())} base models x {folds.k} folds"
                  f"{repeats}) on {len(texts)} texts, {n_jobs} at a time", flush=True)
        if n_jobs == 1:  # in this process: nothing to pickle, and kinds registered only here work
            return self._report((fit_unit(u, texts, codes, folds, **settings) for u in units), len(units))
        # Processes, one thread each, as the pipeline's workers: the tf-idf kinds tokenise in Python and
        # would serialise on the GIL in threads, and N workers each using every core oversubscribe them.
        with parallel_config(backend="loky", inner_max_num_threads=1):
            results = Parallel(n_jobs=n_jobs, return_as="generator_unordered")(
                delayed(fit_unit)(u, texts, codes, folds, **settings) for u in units)
            return self._report(results, len(units))

    def _report(self, results: Any, total: int) -> list[FoldFit]:
        fits = []
        for fitted in results:
            fits.append(fitted)
            if self.verbose:
                print(f"[{_NAME}] {fitted.unit.label}: fitted on {fitted.n_train} texts in "
                      f"{fitted.fit_seconds:.1f}s ({len(fits)}/{total})", flush=True)
        return fits

    # ------------------------------------------------------------------------------------- prediction
    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities (rows x ``classes_``): each base model's fold members averaged, then the meta."""
        check_is_fitted(self, "predictor_")
        return self.predictor_.predict_proba(_normalised(X, self.config_.data.lowercase))

    def predict(self, X: Any) -> np.ndarray:
        proba = self.predict_proba(X)  # first: it raises NotFittedError before fit
        return self.classes_[proba.argmax(axis=1)]

    def predict_log_proba(self, X: Any) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    # ---------------------------------------------------------------------------------------- bundle
    def save_bundle(self, path: str | Path) -> Path:
        """Write the fitted ensemble as a foldstack bundle (the format `foldstack train` writes, every file's
        sha256 in its manifest): `foldstack.load`, `foldstack predict`, `registry push` and `serve-model`
        take it. Replaces `path` atomically; returns it."""
        check_is_fitted(self, "predictor_")
        path = Path(path)
        config = self.config_
        with atomic_directory(path) as tmp:
            base_entries = []
            for spec in config.base_models:
                names = [member_name(r, f) for r, f in self.folds_.tasks()]
                for name, model in zip(names, self.predictor_.members[spec.name], strict=True):
                    model.save(tmp / "base" / spec.name / name)
                base_entries.append({"name": spec.name, "kind": spec.kind, "params": spec.params, "members": names,
                                     "combine": "mean of fold models"})
            self.predictor_.meta.save(tmp / "meta")
            write_manifest(
                tmp, labels=self.classes_.tolist(), params=config.model_dump(mode="json"), data_hash=self.data_hash_,
                fold_hash=self.folds_.hash, base_models=base_entries,
                meta={"kind": self.meta_kind_, "requested": config.meta.kind, "path": "meta"},
                # No holdout here: the meta-learner's CV estimate on the OOF is the quality on record.
                metrics={f"meta_cv.{key}": float(value) for key, value in self.meta_selection_.cv.items()
                         if isinstance(value, (int, float)) and not isinstance(value, bool)},
                trained_by=_NAME,
            )
        return path


def _effective_n_jobs(n_jobs: int | None, n_units: int) -> int:
    return max(1, min(effective_n_jobs(n_jobs), n_units))


def _normalised(X: Any, lowercase: bool) -> list[str]:
    """X as a list of texts, normalised as the pipeline normalises its data (`data.normalise_text`)."""
    return [normalise_text(text, lowercase) for text in _texts(X)]


def _texts(X: Any) -> list[str]:
    """A 1-D sequence of texts: a list, a tuple, a 1-D array, a pandas Series, or a one-column DataFrame or
    array (what a `ColumnTransformer` or a pandas-output preprocessor hands on)."""
    if isinstance(X, str):
        raise ValueError(f"{_NAME}: X is a single string; pass a sequence of texts, e.g. [text]")
    if isinstance(X, pd.DataFrame):
        if X.shape[1] != 1:
            raise ValueError(f"{_NAME}: X is a DataFrame with {X.shape[1]} columns; pass the text column alone")
        X = X.iloc[:, 0]
    if isinstance(X, pd.Series):
        values = X.tolist()
    elif hasattr(X, "ndim") and hasattr(X, "shape"):
        if hasattr(X, "toarray"):
            raise TypeError(f"{_NAME}: X is a sparse matrix; this classifier takes raw texts")
        array = np.asarray(X, dtype=object)
        if array.ndim == 2 and array.shape[1] == 1:
            array = array[:, 0]
        if array.ndim != 1:
            raise ValueError(f"{_NAME}: X has shape {array.shape}; expected a 1-D sequence of texts "
                             f"(or one column of them)")
        values = array.tolist()
    else:
        values = list(X)
    if not values:
        raise ValueError(f"{_NAME}: X holds no texts")
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise ValueError(f"{_NAME}: X[{i}] is a {type(value).__name__} ({value!r}), not a text; every item "
                             f"of X must be a string")
    return values


def _targets(y: Any, n_rows: int) -> np.ndarray:
    if isinstance(y, pd.Series | pd.DataFrame):
        y = y.to_numpy()
    y = column_or_1d(y, warn=True)
    if len(y) != n_rows:
        raise ValueError(f"{_NAME}: X has {n_rows} texts but y has {len(y)} labels")
    check_classification_targets(y)
    return y
