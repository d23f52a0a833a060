"""The two TF-IDF kinds: `tfidf_lr` (word n-grams + logistic regression) and `tfidf_char_svm` (character
n-grams within word boundaries + a linear SVM with sigmoid-calibrated probabilities)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
from pydantic import Field, model_validator

from foldstack.models import register_model
from foldstack.models.base import expand_soft_targets
from foldstack.models.sklearn.saving import load_classifier, load_vectorizer, save_classifier, save_vectorizer
from foldstack.models.sklearn.text_model import LinearTextParams, SklearnTextModel

__all__ = ["TfidfCharSVM", "TfidfLogisticRegression", "VectorizerClassifierModel"]


class VectorizerClassifierModel(SklearnTextModel):
    """A TF-IDF vectorizer feeding one scikit-learn classifier saved with skops (tfidf_lr, tfidf_char_svm)."""

    def _predict_present(self, texts: list[str]) -> np.ndarray:
        return self.classifier_.predict_proba(self.vectorizer_.transform(texts))

    def _save_learned(self, directory: Path) -> None:
        save_vectorizer(self.vectorizer_, directory)
        save_classifier(self.classifier_, directory)

    def _load_learned(self, directory: Path) -> None:
        self.vectorizer_ = load_vectorizer(self._make_vectorizer(), directory)
        self.classifier_ = load_classifier(directory, self.classes_, len(self.vectorizer_.vocabulary_))


@register_model
class TfidfLogisticRegression(VectorizerClassifierModel):
    """Word n-gram TF-IDF (sublinear tf) + logistic regression: the classic strong text baseline."""

    kind: ClassVar[str] = "tfidf_lr"
    soft_targets: ClassVar[bool] = True

    class Params(LinearTextParams):
        ngram_max: int = Field(2, ge=1, le=5, description="use word n-grams of length 1..ngram_max")
        max_features: int | None = Field(
            200_000, ge=1, description="keep the most frequent n-grams up to this many; null keeps all"
        )
        sublinear_tf: bool = Field(True, description="scale term counts as 1 + log(tf)")

    def _make_vectorizer(self) -> Any:
        from sklearn.feature_extraction.text import TfidfVectorizer

        p = self.params
        return TfidfVectorizer(
            ngram_range=(1, p.ngram_max),
            min_df=p.min_df,
            max_features=p.max_features,
            sublinear_tf=p.sublinear_tf,
            dtype=np.float32,  # halves the memory of the document-term matrix
        )

    def _fit_present(self, texts: list[str], y: np.ndarray) -> None:
        self.classifier_ = self._logistic_regression().fit(self._fit_vectorizer(texts), y)

    def _fit_present_soft(self, texts: list[str], targets: np.ndarray) -> None:
        # The vocabulary comes from each text once; the regression sees a text once per class it has weight on.
        rows, columns, weights = expand_soft_targets(targets)
        features = self._fit_vectorizer(texts)
        self.classifier_ = self._logistic_regression().fit(features[rows], self.classes_[columns],
                                                            sample_weight=weights)

    def _logistic_regression(self) -> Any:
        from sklearn.linear_model import LogisticRegression

        p = self.params
        return LogisticRegression(C=p.C, max_iter=p.max_iter, class_weight=p.class_weight,
                                  random_state=self._random_state)


@register_model
class TfidfCharSVM(VectorizerClassifierModel):
    """Character n-gram TF-IDF + linear SVM, probabilities by sigmoid (Platt) calibration.

    Character n-grams inside word boundaries are robust to misspellings and morphology, which makes this
    model's errors differ from the word models' — what a stack profits from.
    """

    kind: ClassVar[str] = "tfidf_char_svm"

    class Params(LinearTextParams):
        ngram_min: int = Field(2, ge=1, le=10, description="shortest character n-gram")
        ngram_max: int = Field(5, ge=1, le=10, description="longest character n-gram")
        max_features: int | None = Field(
            300_000, ge=1, description="keep the most frequent n-grams up to this many; null keeps all"
        )
        sublinear_tf: bool = Field(True, description="scale term counts as 1 + log(tf)")
        C: float = Field(0.5, gt=0, description="inverse regularisation strength of the linear SVM")
        calibration_cv: int = Field(
            3,
            ge=2,
            le=20,
            description="folds of the sigmoid calibration; lowered to the smallest class's row count (min 2)",
        )

        @model_validator(mode="after")
        def _ngram_order(self) -> Self:
            if self.ngram_min > self.ngram_max:
                raise ValueError(f"ngram_min ({self.ngram_min}) is larger than ngram_max ({self.ngram_max})")
            return self

    def _make_vectorizer(self) -> Any:
        from sklearn.feature_extraction.text import TfidfVectorizer

        p = self.params
        return TfidfVectorizer(
            analyzer="char_wb",
            ngram_range=(p.ngram_min, p.ngram_max),
            min_df=p.min_df,
            max_features=p.max_features,
            sublinear_tf=p.sublinear_tf,
            dtype=np.float32,
        )

    def _fit_present(self, texts: list[str], y: np.ndarray) -> None:
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.model_selection import StratifiedKFold
        from sklearn.svm import LinearSVC

        p = self.params
        features = self._fit_vectorizer(texts)

        # Calibration needs every class in every fold's calibration part: at most as many folds as the
        # smallest class has rows, and at least 2. A class with a single row is repeated once so that
        # it can appear on both sides of the split (rare in folds of a small class; better than failing).
        _, counts = np.unique(y, return_counts=True)
        singletons = np.flatnonzero(np.isin(y, self.classes_[counts == 1]))
        if singletons.size:
            from scipy.sparse import vstack

            features = vstack([features, features[singletons]], format="csr")
            y = np.concatenate([y, y[singletons]])
        n_folds = max(2, min(p.calibration_cv, int(counts.min())))

        svm = LinearSVC(C=p.C, max_iter=p.max_iter, class_weight=p.class_weight, random_state=self._random_state)
        self.classifier_ = CalibratedClassifierCV(
            svm,
            method="sigmoid",
            cv=StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=self._random_state),
        ).fit(features, y)
