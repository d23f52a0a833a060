"""Three fast, diverse scikit-learn base models for text.

- `tfidf_lr`       word n-gram TF-IDF + logistic regression.
- `tfidf_char_svm` character n-gram TF-IDF (within word boundaries) + linear SVM with sigmoid-calibrated
                   probabilities.
- `nb_svm`         NB-SVM (Wang & Manning 2012), the "NBSVM-LR" variant: binarized word uni+bigrams scaled
                   by their naive-Bayes log-count ratios, then logistic regression; one-vs-rest for more
                   than two classes.

They share `_SklearnTextModel`: input checks, expanding probabilities to every class code 0..n_classes-1
(a fold's training rows may lack a rare class; its column is then 0) and saving without pickle
(`foldstack.models.persist`). A vectorizer is saved as its vocabulary (JSON) and idf weights (`.npy`)
and rebuilt from the params on load: its configuration is exactly what the params say, and skops is
far too slow on vocabularies of a few hundred thousand terms (minutes per dump).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import numpy as np
from pydantic import Field, ValidationError, model_validator

from foldstack.errors import BundleError, DataError
from foldstack.models import register_model
from foldstack.models.base import ModelContext, ModelParams, params_dict
from foldstack.models.persist import (
    MODEL_JSON,
    load_array,
    load_json,
    load_sklearn,
    save_array,
    save_json,
    save_sklearn,
)

__all__ = ["NBSVM", "TfidfCharSVM", "TfidfLogisticRegression"]

# Bump when the saved layout changes; `load` refuses a layout it does not know.
FORMAT_VERSION = 1
_VOCABULARY_JSON = "vocabulary.json"
_IDF_NPY = "idf.npy"
_CLASSIFIER_SKOPS = "classifier.skops"


class _LinearTextParams(ModelParams):
    """The knobs shared by the three kinds: vocabulary size and the linear classifier's regularisation."""

    min_df: int = Field(2, ge=1, description="drop n-grams found in fewer than this many training texts")
    C: float = Field(4.0, gt=0, description="inverse regularisation strength of the linear classifier")
    max_iter: int = Field(1000, ge=10, description="iteration limit of the classifier's solver")
    class_weight: Literal["balanced"] | None = Field(
        None, description='"balanced" weights classes inversely to their frequency; null weights rows equally'
    )


class _SklearnTextModel:
    """Shared machinery. A subclass provides `kind`, `Params`, `_make_vectorizer` and the four hooks
    `_fit_present`, `_predict_present`, `_save_learned`, `_load_learned`."""

    kind: ClassVar[str]
    Params: ClassVar[type[ModelParams]]

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
        texts = _check_texts(texts, self.kind)
        y = _check_codes(y, len(texts), self.context.n_classes, self.kind)
        present = np.unique(y)
        if present.size < 2:
            raise ValueError(
                f"{self.kind}: the training rows hold only class code {present.tolist()}; at least two "
                f"classes are needed to fit a classifier"
            )
        self.classes_ = present
        try:
            self._fit_present(texts, y)
        except BaseException:
            del self.classes_  # a failed fit must not leave a model that looks fitted
            raise
        return self

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        if not hasattr(self, "classes_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError(f"{self.kind}: call fit (or load) before predict_proba")
        texts = _check_texts(texts, self.kind)
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
        metadata = {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "params": params_dict(self.params),
            "n_classes": self.context.n_classes,
            "seed": self.context.seed,
            "classes_present": self.classes_.tolist(),
            "sklearn_version": sklearn.__version__,
        }
        self._save_learned(directory)
        # Written last: a directory with model.json holds a complete model.
        save_json(metadata, directory / MODEL_JSON)

    @classmethod
    def load(cls, directory: Path, *, device: str = "cpu", cache_dir: Path | None = None) -> Self:
        directory = Path(directory)
        metadata = load_json(directory / MODEL_JSON)
        where = directory / MODEL_JSON
        if not isinstance(metadata, dict):
            raise BundleError(f"{where}: expected a JSON object")
        if metadata.get("kind") != cls.kind:
            raise BundleError(f"{where}: holds a model of kind {metadata.get('kind')!r}, not {cls.kind!r}")
        if metadata.get("format_version") != FORMAT_VERSION:
            raise BundleError(
                f"{where}: saved layout version {metadata.get('format_version')!r}; this foldstack reads "
                f"version {FORMAT_VERSION}"
            )
        try:
            params = cls.Params.model_validate(metadata["params"])
            context = ModelContext(
                n_classes=metadata["n_classes"], seed=metadata["seed"], device=device, cache_dir=cache_dir
            )
            classes = np.asarray(metadata["classes_present"], dtype=np.int64)
        except (KeyError, TypeError, ValueError, ValidationError) as exc:
            raise BundleError(f"{where}: incomplete or invalid model metadata ({exc})") from None
        if classes.ndim != 1 or classes.size < 2 or classes.min() < 0 or classes.max() >= context.n_classes:
            raise BundleError(f"{where}: classes_present {classes.tolist()} do not fit n_classes={context.n_classes}")

        import sklearn

        if metadata.get("sklearn_version") != sklearn.__version__:
            warnings.warn(
                f"{where}: saved with scikit-learn {metadata.get('sklearn_version')}, loaded with "
                f"{sklearn.__version__}; predictions may differ slightly",
                stacklevel=2,
            )
        model = cls(params, context)
        model.classes_ = classes
        model._load_learned(directory)
        return model

    # -------------------------------------------------------------------------- subclass hooks
    def _fit_present(self, texts: list[str], y: np.ndarray) -> None:
        """Fit on rows whose codes are in `self.classes_` (at least two)."""
        raise NotImplementedError

    def _predict_present(self, texts: list[str]) -> np.ndarray:
        """Probabilities with one column per entry of `self.classes_`, in that order."""
        raise NotImplementedError

    def _save_learned(self, directory: Path) -> None:
        raise NotImplementedError

    def _load_learned(self, directory: Path) -> None:
        raise NotImplementedError

    # -------------------------------------------------------------------------- shared helpers
    @property
    def _random_state(self) -> int:
        # scikit-learn seeds must fit in 32 bits; a derived 64-bit seed is folded into that range.
        return self.context.seed % 2**32

    def _save_vectorizer(self, directory: Path) -> None:
        vocabulary = self.vectorizer_.vocabulary_
        terms = [""] * len(vocabulary)
        for term, column in vocabulary.items():
            terms[column] = term
        save_json(terms, directory / _VOCABULARY_JSON, indent=None)
        if hasattr(self.vectorizer_, "idf_"):
            save_array(self.vectorizer_.idf_, directory / _IDF_NPY)

    def _load_vectorizer(self, directory: Path) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        terms = load_json(directory / _VOCABULARY_JSON)
        if not isinstance(terms, list) or not all(isinstance(t, str) for t in terms):
            raise BundleError(f"{directory / _VOCABULARY_JSON}: expected a JSON list of terms")
        vectorizer = self._make_vectorizer()
        vectorizer.vocabulary_ = {term: column for column, term in enumerate(terms)}
        if len(vectorizer.vocabulary_) != len(terms):
            raise BundleError(f"{directory / _VOCABULARY_JSON}: repeated terms in the vocabulary")
        if isinstance(vectorizer, TfidfVectorizer):
            idf = load_array(directory / _IDF_NPY)
            if idf.shape != (len(terms),):
                raise BundleError(f"{directory / _IDF_NPY}: shape {idf.shape}, expected ({len(terms)},)")
            vectorizer.idf_ = idf  # the public setter scikit-learn provides for transferring idf weights
        self.vectorizer_ = vectorizer

    def _make_vectorizer(self) -> Any:
        raise NotImplementedError

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

    def _load_classifier(self, directory: Path) -> None:
        classifier = load_sklearn(directory / _CLASSIFIER_SKOPS)
        n_terms = len(self.vectorizer_.vocabulary_)
        if not np.array_equal(getattr(classifier, "classes_", None), self.classes_):
            raise BundleError(f"{directory / _CLASSIFIER_SKOPS}: classifier classes do not match model.json")
        if getattr(classifier, "n_features_in_", None) != n_terms:
            raise BundleError(
                f"{directory / _CLASSIFIER_SKOPS}: classifier does not match the {n_terms}-term vocabulary"
            )
        self.classifier_ = classifier


class _VectorizerClassifierModel(_SklearnTextModel):
    """A TF-IDF vectorizer feeding one scikit-learn classifier saved with skops (tfidf_lr, tfidf_char_svm)."""

    def _predict_present(self, texts: list[str]) -> np.ndarray:
        return self.classifier_.predict_proba(self.vectorizer_.transform(texts))

    def _save_learned(self, directory: Path) -> None:
        self._save_vectorizer(directory)
        save_sklearn(self.classifier_, directory / _CLASSIFIER_SKOPS)

    def _load_learned(self, directory: Path) -> None:
        self._load_vectorizer(directory)
        self._load_classifier(directory)


@register_model
class TfidfLogisticRegression(_VectorizerClassifierModel):
    """Word n-gram TF-IDF (sublinear tf) + logistic regression: the classic strong text baseline."""

    kind: ClassVar[str] = "tfidf_lr"

    class Params(_LinearTextParams):
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
        from sklearn.linear_model import LogisticRegression

        p = self.params
        features = self._fit_vectorizer(texts)
        self.classifier_ = LogisticRegression(
            C=p.C, max_iter=p.max_iter, class_weight=p.class_weight, random_state=self._random_state
        ).fit(features, y)


@register_model
class TfidfCharSVM(_VectorizerClassifierModel):
    """Character n-gram TF-IDF + linear SVM, probabilities by sigmoid (Platt) calibration.

    Character n-grams inside word boundaries are robust to misspellings and morphology, which makes this
    model's errors differ from the word models' — what a stack profits from.
    """

    kind: ClassVar[str] = "tfidf_char_svm"

    class Params(_LinearTextParams):
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


@register_model
class NBSVM(_SklearnTextModel):
    """NB-SVM, "NBSVM-LR" variant (Wang & Manning 2012): logistic regression on naive-Bayes-scaled features.

    Each binarized n-gram feature x_j is multiplied by its log-count ratio
    r_j = log((p_j / |p|_1) / (q_j / |q|_1)), with p (q) the smoothed feature counts over the positive
    (negative) rows; a logistic regression is fitted on x * r. With more than two classes, one such
    model per class (that class vs the rest) and the sigmoid outputs are normalised across classes.
    The learned state is three arrays, so the model is saved as `.npy` files alone.
    """

    kind: ClassVar[str] = "nb_svm"

    class Params(_LinearTextParams):
        ngram_max: int = Field(2, ge=1, le=5, description="use word n-grams of length 1..ngram_max")
        max_features: int | None = Field(
            200_000, ge=1, description="keep the most frequent n-grams up to this many; null keeps all"
        )
        alpha: float = Field(1.0, gt=0, description="additive (Laplace) smoothing of the naive-Bayes counts")
        # The log-count ratios already scale the features up, so less C is needed than for plain TF-IDF
        # (on rt_polarity C=1 gave a better log loss than C=4 at the same accuracy).
        C: float = Field(1.0, gt=0, description="inverse regularisation strength of the logistic regression")

    def _make_vectorizer(self) -> Any:
        from sklearn.feature_extraction.text import CountVectorizer

        p = self.params
        return CountVectorizer(
            binary=True,
            ngram_range=(1, p.ngram_max),
            min_df=p.min_df,
            max_features=p.max_features,
            dtype=np.float32,
        )

    def _targets(self) -> np.ndarray:
        """The positive class of each binary model: one model for two classes, one per class otherwise."""
        return self.classes_[1:] if self.classes_.size == 2 else self.classes_

    def _fit_present(self, texts: list[str], y: np.ndarray) -> None:
        from sklearn.linear_model import LogisticRegression

        p = self.params
        features = self._fit_vectorizer(texts).tocsr()
        targets = self._targets()
        n_features = features.shape[1]
        self.log_count_ratios_ = np.empty((targets.size, n_features), dtype=np.float64)
        self.coef_ = np.empty((targets.size, n_features), dtype=np.float64)
        self.intercept_ = np.empty(targets.size, dtype=np.float64)
        for i, target in enumerate(targets):
            positive = y == target
            p_counts = p.alpha + np.asarray(features[positive].sum(axis=0), dtype=np.float64).ravel()
            q_counts = p.alpha + np.asarray(features[~positive].sum(axis=0), dtype=np.float64).ravel()
            ratios = np.log((p_counts / p_counts.sum()) / (q_counts / q_counts.sum()))
            regression = LogisticRegression(
                C=p.C, max_iter=p.max_iter, class_weight=p.class_weight, random_state=self._random_state
            ).fit(features.multiply(ratios).tocsr(), positive.astype(np.int64))
            self.log_count_ratios_[i] = ratios
            self.coef_[i] = regression.coef_.ravel()
            self.intercept_[i] = regression.intercept_[0]

    def _predict_present(self, texts: list[str]) -> np.ndarray:
        from scipy.special import expit

        features = self.vectorizer_.transform(texts).tocsr()
        # (x * r) . w == x . (r * w): scale the weights once instead of every row.
        scores = features @ (self.log_count_ratios_ * self.coef_).T + self.intercept_
        positive = expit(np.asarray(scores, dtype=np.float64))
        if self.classes_.size == 2:
            return np.column_stack([1.0 - positive[:, 0], positive[:, 0]])
        return positive / positive.sum(axis=1, keepdims=True)

    def _save_learned(self, directory: Path) -> None:
        self._save_vectorizer(directory)
        save_array(self.log_count_ratios_, directory / "log_count_ratios.npy")
        save_array(self.coef_, directory / "coef.npy")
        save_array(self.intercept_, directory / "intercept.npy")

    def _load_learned(self, directory: Path) -> None:
        self._load_vectorizer(directory)
        ratios = load_array(directory / "log_count_ratios.npy")
        coef = load_array(directory / "coef.npy")
        intercept = load_array(directory / "intercept.npy")
        expected = (self._targets().size, len(self.vectorizer_.vocabulary_))
        if ratios.shape != expected or coef.shape != expected or intercept.shape != expected[:1]:
            raise BundleError(
                f"{directory}: NB-SVM arrays have shapes {ratios.shape}, {coef.shape}, {intercept.shape}; "
                f"expected {expected}, {expected}, {expected[:1]}"
            )
        self.log_count_ratios_, self.coef_, self.intercept_ = ratios, coef, intercept


# ------------------------------------------------------------------------------------------ checks
def _check_texts(texts: Sequence[str], kind: str) -> list[str]:
    if isinstance(texts, str):
        raise TypeError(f"{kind}: expected a sequence of texts, got a single str")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{kind}: text at position {i} is {type(text).__name__}, not str")
    return texts


def _check_codes(y: Any, n_rows: int, n_classes: int, kind: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != n_rows:
        raise ValueError(f"{kind}: y has shape {y.shape}; expected ({n_rows},), one code per text")
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(
            f"{kind}: y must hold integer class codes 0..{n_classes - 1} (dtype {y.dtype} given); "
            f"labels are mapped to codes by the snapshot's label map"
        )
    if n_rows and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"{kind}: class codes must lie in 0..{n_classes - 1}; got {y.min()}..{y.max()}")
    return y.astype(np.int64, copy=False)
