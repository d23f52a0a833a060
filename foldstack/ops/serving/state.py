"""The model being served: where it comes from, the loaded bundle, and the swap when its source moves.

A new bundle is loaded (and verified) beside the old one and swapped in with one assignment, so requests in
flight finish on the model they started with; one that fails to load is refused and the old one stays.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from foldstack.bundle import load_bundle
from foldstack.errors import FoldstackError
from foldstack.ops.registry import resolve_model_version

if TYPE_CHECKING:
    from foldstack.bundle import Bundle
    from foldstack.config import Config


class ModelSource:
    """Where the served model comes from: a bundle directory (fixed) or a registry reference (can move)."""

    def __init__(self, ref: str, cfg: Config | None = None):
        self.ref = str(ref)
        self.cfg = cfg
        self.movable = not (Path(self.ref) / "manifest.json").is_file()
        if self.movable and cfg is None:
            raise FoldstackError(f"{self.ref!r} is not a bundle directory; a registry reference needs the params "
                                 f"(registry settings)")

    def locate(self) -> tuple[Path, str]:
        """(bundle path, version) the reference points at now."""
        return resolve_model_version(self.ref, self.cfg)


@dataclass(frozen=True)
class LoadedModel:
    bundle: Bundle
    version: str
    path: Path
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def predict(self, texts: list[str], request_ids: list[str] | None = None) -> dict[str, Any]:
        """The /predict answer for `texts`; each prediction carries its request id (new ones if not given)."""
        labels, proba = self.predict_arrays(texts)
        return self.answer(labels, proba, request_ids or new_request_ids(len(texts)))

    def predict_arrays(self, texts: list[str]) -> tuple[list[Any], np.ndarray]:
        """(predicted labels, class probabilities (n texts, n labels) in `label_map.names` order)."""
        proba = self.bundle.predict_proba(texts)  # normalised by the bundle, as its training data was
        return self.bundle.label_map.decode(proba.argmax(axis=1)), proba

    def answer(self, labels: list[Any], proba: np.ndarray, request_ids: list[str]) -> dict[str, Any]:
        names = self.bundle.label_map.names
        return {
            "model_version": self.version,
            "labels": self.bundle.labels,
            "predictions": [{"label": label, "probabilities": {n: float(p) for n, p in zip(names, row, strict=True)},
                             "request_id": rid}
                            for label, row, rid in zip(labels, proba, request_ids, strict=True)],
        }


def new_request_ids(n: int) -> list[str]:
    """One new request id per text: a uuid4 in hex (what the prediction log and POST /feedback use)."""
    return [uuid.uuid4().hex for _ in range(n)]


class ModelHolder:
    """The model being served; `refresh()` swaps in a new one when the source moved."""

    def __init__(self, source: ModelSource, *, device: str = "cpu",
                 on_change: Callable[[LoadedModel | None, LoadedModel], None] | None = None):
        self.source = source
        self.device = device
        self.on_change = on_change
        self._model: LoadedModel | None = None
        self._lock = threading.Lock()  # one load at a time; readers never wait (they read one attribute)
        self._refused: tuple[str, str] | None = None  # (version, error) of a bundle that failed to load

    @property
    def model(self) -> LoadedModel:
        if self._model is None:
            raise RuntimeError("no model loaded yet; call load() first")
        return self._model

    def load(self) -> LoadedModel:
        path, version = self.source.locate()
        return self._swap(path, version)

    def _swap(self, path: Path, version: str) -> LoadedModel:
        with self._lock:
            loaded = LoadedModel(load_bundle(path, device=self.device), version, path)  # verifies every hash
            previous, self._model = self._model, loaded
        if self.on_change:
            self.on_change(previous, loaded)
        return loaded

    def refresh(self) -> bool:
        """Load the model the source points at now if it changed; True when a new model was swapped in.

        Raises when the new bundle cannot be loaded (the old model stays); a version that failed once is
        not retried until the source points elsewhere, so a broken promotion does not reload every poll.
        """
        if not self.source.movable:
            return False
        path, version = self.source.locate()
        if self._model is not None and version == self._model.version and path == self._model.path:
            return False
        if self._refused and self._refused[0] == version:
            return False
        try:
            self._swap(path, version)
        except Exception as exc:
            self._refused = (version, str(exc))
            raise
        self._refused = None
        return True
