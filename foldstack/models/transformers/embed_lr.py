"""`embed_lr`: frozen transformer sentence embeddings + a scikit-learn logistic regression.

Embedding is the expensive part, and it does not depend on the fold: every text is embedded once per
embedding model and kept in an append-only cache under `<cache_dir>/embeddings/` (a `text_cache.TextArrayStore`,
the same mechanism as the token-id cache of `finetune`), keyed by the sha256 of the text. Fold 1's fit
and predictions fill it; folds 2..K and later runs on the same texts compute nothing.
Without a cache directory (context.cache_dir None) embeddings are computed every time.

Saved as JSON + .npy (no pickle): the logistic regression's coefficients, and in model.json the embedding
model's source and content identity, which `load` checks so that a classifier is never applied to vectors
from a different model.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar, Self

import numpy as np
from pydantic import Field

from foldstack.common.files import load_array, save_array
from foldstack.errors import BundleError, DataError
from foldstack.models import register_model
from foldstack.models.base import ModelContext, ModelParams, check_labels, check_soft_targets, expand_soft_targets
from foldstack.models.persist import restore_model, write_model_json
from foldstack.models.transformers.batching import SentenceEncoder
from foldstack.models.transformers.hf import DEFAULT_EMBEDDING_MODEL, model_identity, resolve_model_source
from foldstack.models.transformers.text_cache import RaggedArray, TextArrayStore, texts_hash
from foldstack.runtime.devices import resolve_device

__all__ = ["EmbedLR", "cached_embeddings", "embedding_function"]

FORMAT_VERSION = 1


# The last batch embedded in this process: ((function, texts hash), vectors), one entry so memory stays
# bounded. Read once and replaced whole (one reference, which is atomic): threads embedding at the same time
# (the service answers requests in a thread pool) must never pair one batch's key with another's vectors,
# which reading key and vectors as two look-ups allowed, and which then stayed memoised under the wrong key.
_last_batch: tuple[tuple[str, str], np.ndarray] | None = None


@functools.lru_cache(maxsize=4)
def _shared_encoder(source: Path, device: str, max_length: int, batch_size: int) -> SentenceEncoder:
    """One frozen encoder per (model, device, settings) in a process, shared by every fold member."""
    return SentenceEncoder(source, device=device, max_length=max_length, batch_size=batch_size)


def embedding_function(source: Path, max_length: int) -> str:
    """The cache address of "mean-pooled embeddings of this model at this truncation" (max_length changes the
    vectors, so it is part of it): `<cache_dir>/embeddings/<this>/`."""
    return f"{model_identity(source)}-mean-len{max_length}"


def cached_embeddings(texts: list[str], cache_dir: Path, function: str,
                      encode: Callable[[list[str]], np.ndarray]) -> tuple[np.ndarray, int]:
    """(the embeddings of `texts`, how many `encode` had to compute) through the cache at
    `<cache_dir>/embeddings/<function>/`: what every embed_lr fold member and the monitor's embedding check read
    and fill."""
    rows, n_computed = TextArrayStore(Path(cache_dir) / "embeddings" / function).lookup_or_compute(
        texts, lambda missing: RaggedArray.from_matrix(encode(missing)), namespace=function)
    return (np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float32)), n_computed


@register_model
class EmbedLR:
    """Mean-pooled embeddings of a frozen transformer, optionally L2-normalised, fed to a logistic regression."""

    kind: ClassVar[str] = "embed_lr"
    soft_targets: ClassVar[bool] = True
    # Embedding is a transformer forward pass: the first fold embeds every text, on a GPU when there is one.
    uses_gpu: ClassVar[bool] = True

    class Params(ModelParams):
        model: str = Field(
            DEFAULT_EMBEDDING_MODEL,
            description="embedding model: a local Hugging Face directory, package:<module> or tiny:<seed>",
        )
        max_length: int = Field(128, ge=8, le=8192, description="tokens per text; longer texts are truncated")
        batch_size: int = Field(64, ge=1, le=4096, description="texts per forward pass when embedding")
        normalize: bool = Field(True, description="L2-normalise the embeddings before the regression")
        C: float = Field(1.0, gt=0, description="inverse regularisation strength of the logistic regression")
        max_iter: int = Field(1000, ge=10, le=100_000, description="lbfgs iterations of the logistic regression")

    def __init__(self, params: Params, context: ModelContext):
        self.params = params
        self.context = context
        self._loaded_encoder: SentenceEncoder | None = None

    def __getstate__(self) -> dict:
        # The frozen encoder is no part of what fit learned: it is reloaded from its source on first need (one
        # per process, shared), so a pickled member (FoldStackClassifier, its worker processes' results) does
        # not carry a copy of the transformer.
        return {**self.__dict__, "_loaded_encoder": None}

    # ---------------------------------------------------------------------------------------------
    # embedding
    # ---------------------------------------------------------------------------------------------
    def _source(self) -> Path:
        return resolve_model_source(self.params.model, cache_dir=self.context.cache_dir,
                                    base_dir=self.context.base_dir)

    def _encoder(self) -> SentenceEncoder:
        # Loaded on first need only: when every text is cached the model is never read from disk.
        if self._loaded_encoder is None:
            self._loaded_encoder = _shared_encoder(self._source(), resolve_device(self.context.device),
                                                   self.params.max_length, self.params.batch_size)
        return self._loaded_encoder

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        global _last_batch
        texts = list(texts)
        function = embedding_function(self._source(), self.params.max_length)
        batch_key = (function, texts_hash(texts, function))
        last = _last_batch
        if last is not None and last[0] == batch_key:
            # The K fold members of one base model embed the same texts one after another at prediction.
            vectors = last[1]
            self._count(computed=0, cached=len(texts))
        elif self.context.cache_dir is None:
            vectors = self._encode(texts)
            self._count(computed=len(texts), cached=0)
        else:
            vectors, n_computed = cached_embeddings(texts, Path(self.context.cache_dir), function, self._encode)
            self._count(computed=n_computed, cached=len(texts) - n_computed)
        _last_batch = (batch_key, vectors)
        vectors = vectors.astype(np.float64)
        if self.params.normalize:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.maximum(norms, 1e-12)
        return vectors

    def _encode(self, texts: list[str]) -> np.ndarray:
        """The encoder's forward passes over texts no cache had; their seconds go to `embed_seconds_` (loading
        the encoder and looking texts up in the cache are not counted: the figure is encode throughput)."""
        encoder = self._encoder()
        started = time.perf_counter()
        vectors = encoder.encode(texts)
        self.embed_seconds_ = getattr(self, "embed_seconds_", 0.0) + (time.perf_counter() - started)
        return vectors

    def _count(self, *, computed: int, cached: int) -> None:
        """Running totals over this model's life, so callers and tests can see the cache at work; with
        `embed_seconds_`, what a fold task records of its embedding pass (texts encoded, from cache, seconds)."""
        self.n_embedded_ = getattr(self, "n_embedded_", 0) + computed
        self.n_from_cache_ = getattr(self, "n_from_cache_", 0) + cached
        self.embed_seconds_ = getattr(self, "embed_seconds_", 0.0)

    # ---------------------------------------------------------------------------------------------
    # the protocol
    # ---------------------------------------------------------------------------------------------
    def fit(self, texts: Sequence[str], y: np.ndarray) -> Self:
        y = check_labels(y, len(texts), self.context.n_classes, self.kind)
        _require_two_classes(np.unique(y))
        return self._fit_features(self._embed(texts), y)

    def fit_soft(self, texts: Sequence[str], targets: np.ndarray) -> Self:
        """Fit soft targets (a distilled student): the regression's sample-weighted log loss is their cross-entropy."""
        targets = check_soft_targets(targets, len(texts), self.context.n_classes, self.kind)
        rows, classes, weights = expand_soft_targets(targets)
        _require_two_classes(np.unique(classes))
        return self._fit_features(self._embed(texts)[rows], classes, sample_weight=weights)

    def _fit_features(self, features: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> Self:
        from sklearn.linear_model import LogisticRegression

        self.classifier_ = LogisticRegression(
            C=self.params.C, max_iter=self.params.max_iter, random_state=self.context.seed
        ).fit(features, y, sample_weight=sample_weight)
        self.embedding_dim_ = features.shape[1]
        self.model_identity_ = model_identity(self._source())
        return self

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        if not hasattr(self, "classifier_"):
            raise RuntimeError("embed_lr: call fit (or load) before predict_proba")
        if len(texts) == 0:
            return np.zeros((0, self.context.n_classes))
        present = self.classifier_.predict_proba(self._embed(texts))
        # Classes absent from this fold's training part get probability 0, in their own column.
        proba = np.zeros((len(texts), self.context.n_classes))
        proba[:, self.classifier_.classes_] = present
        return proba

    def save(self, directory: Path) -> None:
        if not hasattr(self, "classifier_"):
            raise RuntimeError("embed_lr: nothing to save before fit")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_array(directory / "coef.npy", self.classifier_.coef_)
        save_array(directory / "intercept.npy", self.classifier_.intercept_)
        save_array(directory / "classes.npy", self.classifier_.classes_.astype(np.int64))
        write_model_json(
            self,
            directory,
            FORMAT_VERSION,
            embedding={
                "source": self.params.model,
                "identity": self.model_identity_,
                "dim": self.embedding_dim_,
                "pooling": "mean",
            },
        )

    @classmethod
    def load(cls, directory: Path, *, device: str = "cpu", cache_dir: Path | None = None) -> Self:
        from sklearn.linear_model import LogisticRegression

        directory = Path(directory)
        model, meta = restore_model(cls, directory, FORMAT_VERSION, device=device, cache_dir=cache_dir)
        recorded = meta["embedding"]["identity"]
        found = model_identity(model._source())
        if found != recorded:
            raise BundleError(
                f"{directory}: the embedding model {model.params.model!r} now resolves to {model._source()} with content "
                f"identity {found}, but this classifier was trained on embeddings of identity {recorded}; "
                "provide the original model files"
            )
        classifier = LogisticRegression(C=model.params.C, max_iter=model.params.max_iter, random_state=meta["seed"])
        classifier.coef_ = load_array(directory / "coef.npy")
        classifier.intercept_ = load_array(directory / "intercept.npy")
        classifier.classes_ = load_array(directory / "classes.npy")
        classifier.n_features_in_ = classifier.coef_.shape[1]
        model.classifier_ = classifier
        model.embedding_dim_ = int(meta["embedding"]["dim"])
        model.model_identity_ = recorded
        return model


def _require_two_classes(classes: np.ndarray) -> None:
    if classes.size < 2:
        raise DataError(f"embed_lr: the training part holds the classes {classes.tolist()}; at least two are needed")
