"""The meta-learners' base class (params, JSON persistence) and the registry of kinds.

Every meta-learner takes `probas`, a list with one (n_rows, n_classes) probability matrix per base model
(always in the same model order), and integer labels `y`. A kind registers its class with
`@register_meta("<kind>")`; `make_meta` builds the one a `meta` config names, `load_meta` the one a
directory holds. All of them save as a single JSON file (no pickle).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np

from foldstack.config import MetaConfig

META_FILE = "meta.json"
META_FORMAT_VERSION = 1

# kind -> the class that implements it (`auto`'s is no learner: it only says how it is resolved).
_REGISTRY: dict[str, type] = {}


def register_meta(kind: str) -> Callable[[type], type]:
    """Class decorator: `cls` implements the meta kind `kind` (and gets it as `cls.kind`)."""
    def register(cls: type) -> type:
        if kind in _REGISTRY and _REGISTRY[kind] is not cls:
            raise TypeError(f"meta kind {kind!r} is registered twice ({_REGISTRY[kind].__name__}, {cls.__name__})")
        cls.kind = kind
        _REGISTRY[kind] = cls
        return cls
    return register


def registered_kinds() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def meta_class(kind: str) -> type:
    """The class registered for `kind`."""
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise ValueError(f"unknown meta-learner kind {kind!r}; available: {', '.join(_REGISTRY)}") from None


def make_meta(cfg: MetaConfig, n_classes: int, seed: int) -> MetaLearner:
    """Build the (unfitted) meta-learner that `cfg.kind` names, with that kind's params from `cfg`."""
    if n_classes < 2:
        raise ValueError(f"a meta-learner needs at least 2 classes, got n_classes={n_classes}")
    cfg = cfg.resolved()
    return meta_class(cfg.kind).from_config(cfg, n_classes, seed)


class MetaLearner:
    """Shared plumbing. Subclasses set `_param_names`, `_learned_names` and implement fit/predict; their
    `kind` comes from `@register_meta`."""

    kind: ClassVar[str]
    _param_names: ClassVar[tuple[str, ...]]
    _learned_names: ClassVar[tuple[str, ...]]

    n_classes: int

    @classmethod
    def from_config(cls, cfg: MetaConfig, n_classes: int, seed: int) -> Self:
        """The learner of `cfg`'s params; a kind that uses the seed overrides this to pass it."""
        return cls(n_classes, **cfg.learner_params())

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
        target = _REGISTRY.get(kind)
        if target is None or not issubclass(target, MetaLearner):
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
