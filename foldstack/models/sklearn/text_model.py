"""What the scikit-learn kinds share: the fit/predict/save/load protocol around a vectorizer and its classifier.

`SklearnTextModel` checks the inputs, expands probabilities to every class code 0..n_classes-1 (a fold's
training rows may lack a rare class; its column is then 0), and saves and loads `model.json`
(`foldstack.models.persist`); a kind adds its vectorizer, its classifier and how to save them.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import numpy as np
from pydantic import Field

from foldstack.errors import BundleError, DataError
from foldstack.models.base import ModelContext, ModelParams, check_labels, check_soft_targets
from foldstack.models.persist import MODEL_JSON, restore_model, write_model_json

__all__ = ["FORMAT_VERSION", "LinearTextParams", "SklearnTextModel", "check_texts"]

# Bump when the saved layout changes; `load` refuses a layout it does not know.
FORMAT_VERSION = 1


class LinearTextParams(ModelParams):
    """The knobs shared by the three kinds: vocabulary size and the linear classifier's regularisation."""

    min_df: int = Field(2, ge=1, description="drop n-grams found in fewer than this many training texts")
    C: float = Field(4.0, gt=0, description="inverse regularisation strength of the linear classifier")
    max_iter: int = Field(1000, ge=10, description="iteration limit of the classifier's solver")
    class_weight: Literal["balanced"] | None = Field(
        None, description='"balanced" weights classes inversely to their frequency; null weights rows equally'
    )


class SklearnTextModel:
    """Shared machinery. A subclass provides `kind`, `Params`, `_make_vectorizer` and the four hooks
    `_fit_present`, `_predict_present`, `_save_learned`, `_load_learned`."""

    kind: ClassVar[str]
    Params: ClassVar[type[ModelParams]]
    # A kind that implements `_fit_present_soft` sets this (foldstack.models.base.SoftTargetModel).
    soft_targets: ClassVar[bool] = False

    def __init__(self, params: ModelParams, context: ModelContext) -> None:
        if not isinstance(params, self.Params):
            raise TypeError(
                f"{type(self).__name__} expects {type(self).__name__}.Params, got {type(params).__name__}; "
                f"build models with foldstack.models.make_model to validate a params dict"
            )
        self.params = params
        self.context = context

    # ------------------------------------------------------------------------------------ protocol
    def fit(self, texts: Sequence[str], y: np.ndarray) -> Self:
        texts = check_texts(texts, self.kind)
        y = check_labels(y, len(texts), self.context.n_classes, self.kind)
        present = np.unique(y)
        if present.size < 2:
            raise ValueError(
                f"{self.kind}: the training rows hold only class code {present.tolist()}; at least two "
                f"classes are needed to fit a classifier"
            )
        self._fit_classes(present, lambda: self._fit_present(texts, y))
        return self

    def fit_soft(self, texts: Sequence[str], targets: np.ndarray) -> Self:
        """Fit soft targets (rows x n_classes distributions): a distilled student (kinds with `soft_targets`)."""
        if not self.soft_targets:
            raise TypeError(f"{self.kind}: this kind cannot fit soft targets")
        texts = check_texts(texts, self.kind)
        targets = check_soft_targets(targets, len(texts), self.context.n_classes, self.kind)
        present = np.flatnonzero(targets.sum(axis=0) > 0)
        if present.size < 2:
            raise ValueError(f"{self.kind}: the soft targets put weight on class codes {present.tolist()} only; "
                             f"at least two classes are needed to fit a classifier")
        self._fit_classes(present, lambda: self._fit_present_soft(texts, targets[:, present]))
        return self

    def _fit_classes(self, present: np.ndarray, fit: Any) -> None:
        self.classes_ = present
        try:
            fit()
        except BaseException:
            del self.classes_  # a failed fit must not leave a model that looks fitted
            raise

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        if not hasattr(self, "classes_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError(f"{self.kind}: call fit (or load) before predict_proba")
        texts = check_texts(texts, self.kind)
        proba = np.zeros((len(texts), self.context.n_classes), dtype=np.float64)
        if texts:
            # Columns of classes absent from the training rows stay 0: the model never saw them.
            proba[:, self.classes_] = self._predict_present(texts)
            proba /= proba.sum(axis=1, keepdims=True)
        return proba

    def save(self, directory: Path) -> None:
        if not hasattr(self, "classes_"):
            raise RuntimeError(f"{self.kind}: nothing to save, the model is not fitted")
        import sklearn

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._save_learned(directory)
        # Written last: a directory with model.json holds a complete model.
        write_model_json(self, directory, FORMAT_VERSION, classes_present=self.classes_.tolist(),
                         sklearn_version=sklearn.__version__)

    @classmethod
    def load(cls, directory: Path, *, device: str = "cpu", cache_dir: Path | None = None) -> Self:
        directory = Path(directory)
        model, metadata = restore_model(cls, directory, FORMAT_VERSION, device=device, cache_dir=cache_dir)
        where = directory / MODEL_JSON
        try:
            classes = np.asarray(metadata["classes_present"], dtype=np.int64)
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{where}: incomplete or invalid model metadata ({exc})") from None
        n_classes = model.context.n_classes
        if classes.ndim != 1 or classes.size < 2 or classes.min() < 0 or classes.max() >= n_classes:
            raise BundleError(f"{where}: classes_present {classes.tolist()} do not fit n_classes={n_classes}")

        import sklearn

        if metadata.get("sklearn_version") != sklearn.__version__:
            warnings.warn(
                f"{where}: saved with scikit-learn {metadata.get('sklearn_version')}, loaded with "
                f"{sklearn.__version__}; predictions may differ slightly",
                stacklevel=2,
            )
        model.classes_ = classes
        model._load_learned(directory)
        return model

    # -------------------------------------------------------------------------- subclass hooks
    def _fit_present(self, texts: list[str], y: np.ndarray) -> None:
        """Fit on rows whose codes are in `self.classes_` (at least two)."""
        raise NotImplementedError

    def _fit_present_soft(self, texts: list[str], targets: np.ndarray) -> None:
        """Fit soft targets with one column per entry of `self.classes_` (kinds with `soft_targets`)."""
        raise NotImplementedError

    def _predict_present(self, texts: list[str]) -> np.ndarray:
        """Probabilities with one column per entry of `self.classes_`, in that order."""
        raise NotImplementedError

    def _save_learned(self, directory: Path) -> None:
        raise NotImplementedError

    def _load_learned(self, directory: Path) -> None:
        raise NotImplementedError

    def _make_vectorizer(self) -> Any:
        raise NotImplementedError

    # -------------------------------------------------------------------------- shared helpers
    @property
    def _random_state(self) -> int:
        # scikit-learn seeds must fit in 32 bits; a derived 64-bit seed is folded into that range.
        return self.context.seed % 2**32

    def _fit_vectorizer(self, texts: list[str]) -> Any:
        """Fit a fresh vectorizer on `texts` and return their features.

        An empty vocabulary is the user's data or params, not a bug: texts that are numbers or ids rarely
        repeat a term, so min_df prunes every one; one-character tokens are no terms at all.
        """
        self.vectorizer_ = self._make_vectorizer()
        try:
            return self.vectorizer_.fit_transform(texts)
        except ValueError as exc:
            check_column = "check that data.text_column names the column of texts"
            if "no terms remain" in str(exc):
                problem = (f"no term occurs in at least min_df={self.params.min_df} of this fold's {len(texts)} "
                           f"training texts (texts that are numbers or ids rarely repeat a term), so the "
                           f"vocabulary is empty; lower params.min_df, or {check_column}")
            elif "empty vocabulary" in str(exc):
                problem = (f"this fold's {len(texts)} training texts hold no term (a word of two or more letters "
                           f"or digits), so the vocabulary is empty; {check_column}")
            else:
                raise
            raise DataError(f"{self.kind}: {problem}") from None


def check_texts(texts: Sequence[str], kind: str) -> list[str]:
    """`texts` as a list of str, or a TypeError naming the first entry that is not one."""
    if isinstance(texts, str):
        raise TypeError(f"{kind}: expected a sequence of texts, got a single str")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{kind}: text at position {i} is {type(text).__name__}, not str")
    return texts
