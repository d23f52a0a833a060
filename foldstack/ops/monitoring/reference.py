"""What a monitor run compares the prediction log with: the training snapshot and the holdout predictions.

`prepare_reference(cfg)` reads the pipeline's artifacts once (artifacts/snapshot/, and artifacts/stack/ or
artifacts/student/ for the holdout predictions of the model being served) into a `Reference`; the monitor's
`check_window` then scores any number of windows against it without reading them again. The embedding
reference (a seeded sample of `monitoring.checks.embedding_reference` training texts) is embedded on first
use only, through the same content-keyed cache as the `embed_lr` models (`<cache_dir>/embeddings/`), so a
training run with `embed_lr` on the same model has already computed it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from foldstack.common.files import load_array, read_json
from foldstack.config import Config
from foldstack.core import drift
from foldstack.core.metrics import expected_calibration_error
from foldstack.models.transformers.batching import SentenceEncoder
from foldstack.models.transformers.embed_lr import cached_embeddings, embedding_function
from foldstack.models.transformers.hf import resolve_model_source
from foldstack.pipeline.layout import Layout, load_snapshot, require
from foldstack.runtime.devices import resolve_device

log = logging.getLogger("foldstack")

EMBED_MAX_LENGTH = 128  # embed_lr's default: the same cache entries
EMBED_BATCH_SIZE = 64
ROLES = ("ensemble", "student")


class CachedEmbedder:
    """L2-normalised sentence embeddings of texts, cached per text under `<cache_dir>/embeddings/<function>/`."""

    def __init__(self, model: str, *, cache_dir: Path, base_dir: Path, device: str = "cpu"):
        self.model = model
        self.source = resolve_model_source(model, cache_dir=cache_dir, base_dir=base_dir)
        self.function = embedding_function(self.source, EMBED_MAX_LENGTH)
        self.cache_dir = Path(cache_dir)
        self.device = device
        self._encoder: SentenceEncoder | None = None

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        vectors, _ = cached_embeddings(list(texts), self.cache_dir, self.function, self._encode)
        vectors = vectors.astype(np.float64)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

    def _encode(self, texts: list[str]) -> np.ndarray:
        if self._encoder is None:  # loaded only when a text is not cached yet
            self._encoder = SentenceEncoder(self.source, device=resolve_device(self.device),
                                            max_length=EMBED_MAX_LENGTH, batch_size=EMBED_BATCH_SIZE)
        return self._encoder.encode(texts)


@dataclass
class Reference:
    """The training side of every check, read once (see the module docstring)."""

    labels: list[str]
    role: str  # whose holdout predictions: "ensemble" or "student"
    bundle_id: str  # that model's bundle in artifacts/ ("" when it has none yet)
    train_words: np.ndarray
    vocabulary: frozenset[str]
    holdout_oov: float  # the holdout texts' OOV rate against the training vocabulary
    holdout_predicted: np.ndarray  # class codes
    holdout_confidence: np.ndarray
    holdout_quality: dict[str, float]  # accuracy, log_loss, ece, n
    embedding_texts: list[str]
    embedder: Any = None  # texts -> (n, dim) normalised vectors; None: no embedding check
    seed: int = 0
    _embeddings: np.ndarray | None = field(default=None, repr=False)

    def embeddings(self) -> np.ndarray:
        if self._embeddings is None:
            self._embeddings = self.embedder(self.embedding_texts)
        return self._embeddings

    def summary(self) -> dict[str, Any]:
        return {"model": self.role, "bundle_id": self.bundle_id, "n_train": int(self.train_words.size),
                "vocabulary": len(self.vocabulary), "holdout_oov_rate": self.holdout_oov,
                "holdout": self.holdout_quality}


def prepare_reference(cfg: Config, role: str = "ensemble", *, embedder: Any = "auto") -> Reference:
    """Read the snapshot and `role`'s holdout predictions; `embedder` "auto" builds the cached embedder of
    `monitoring.checks.embedding_model` (loaded on first use), None turns the embedding check off."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    snapshot = load_snapshot(cfg)
    proba, bundle_id = _holdout_proba(cfg, role)
    labels = [str(name) for name in snapshot.label_map.names]
    y = snapshot.holdout["label"].to_numpy()
    train_texts = snapshot.train["text"].tolist()
    vocab = drift.vocabulary(train_texts)
    checks = cfg.monitoring.checks
    pool = drift.sample_rows(len(train_texts), checks.embedding_reference, cfg.seed)
    return Reference(
        labels=labels, role=role, bundle_id=bundle_id, train_words=drift.count_words(train_texts),
        vocabulary=vocab, holdout_oov=drift.oov_rate(snapshot.holdout["text"].tolist(), vocab),
        holdout_predicted=proba.argmax(axis=1), holdout_confidence=proba.max(axis=1),
        holdout_quality=quality(y, proba, cfg.evaluate.ece_bins),
        embedding_texts=[train_texts[i] for i in pool],
        embedder=make_embedder(cfg) if embedder == "auto" else embedder, seed=cfg.seed,
    )


def make_embedder(cfg: Config) -> CachedEmbedder:
    return CachedEmbedder(cfg.monitoring.checks.embedding_model, cache_dir=cfg.resolve_path(cfg.runtime.cache_dir),
                          base_dir=cfg.resolve_path("."), device=cfg.runtime.device)


def served_role(cfg: Config, bundle_ids: Sequence[str]) -> str:
    """"student" when the window's newest bundle is the distilled student's bundle in artifacts/, else "ensemble"."""
    manifest = Layout.of(cfg).student / "bundle" / "manifest.json"
    if bundle_ids and manifest.is_file() and read_json(manifest).get("bundle_id") == bundle_ids[-1]:
        return "student"
    return "ensemble"


def quality(y: np.ndarray, proba: np.ndarray, ece_bins: int) -> dict[str, float]:
    """Accuracy, log loss and ECE of probabilities `proba` (columns: class codes) for labels `y`."""
    y = np.asarray(y, dtype=np.int64)
    if y.size == 0:
        return {"n": 0, "accuracy": float("nan"), "log_loss": float("nan"), "ece": float("nan")}
    picked = np.clip(proba[np.arange(y.size), y], 1e-15, 1.0)
    return {"n": int(y.size), "accuracy": float(np.mean(proba.argmax(axis=1) == y)),
            "log_loss": float(-np.mean(np.log(picked))), "ece": expected_calibration_error(y, proba, ece_bins)}


def _holdout_proba(cfg: Config, role: str) -> tuple[np.ndarray, str]:
    layout = Layout.of(cfg)
    if role == "student":
        box, stage, bundle = layout.student, "distill", layout.student / "bundle"
    else:
        box, stage, bundle = layout.stack, "stack", layout.bundle
    require(box, stage)
    manifest = bundle / "manifest.json"
    return load_array(box / "holdout_proba.npy"), read_json(manifest).get("bundle_id", "") if manifest.is_file() else ""
