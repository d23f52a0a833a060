"""The registry of base-model kinds.

A kind registers itself with `@register_model`; the built-in kinds are listed below and imported
on first use (their heavy dependencies — torch, transformers — are imported inside their methods, so
validating params stays fast). Third-party kinds can register through the `foldstack.models` entry
point group: `mykind = "mypackage.module:MyModel"`.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from foldstack.models.base import BaseModel, ModelContext

_BUILTIN_MODULES = (
    "foldstack.models.sklearn_models",
    "foldstack.models.embed_lr",
    "foldstack.models.finetune",
)
_REGISTRY: dict[str, type] = {}
_loaded = False


def register_model(cls: type) -> type:
    """Class decorator: make `cls` available under `cls.kind`."""
    kind = getattr(cls, "kind", None)
    if not kind or not hasattr(cls, "Params"):
        raise TypeError(f"{cls.__name__} needs a `kind` string and a `Params` class to be registered")
    if kind in _REGISTRY and _REGISTRY[kind] is not cls:
        raise TypeError(f"model kind {kind!r} is registered twice ({_REGISTRY[kind].__name__}, {cls.__name__})")
    _REGISTRY[kind] = cls
    return cls


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)
    for ep in entry_points(group="foldstack.models"):
        register_model(ep.load())


def available_kinds() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def model_class(kind: str) -> type[BaseModel]:
    """The class registered under `kind`; KeyError if none."""
    _load_all()
    return _REGISTRY[kind]


def make_model(kind: str, params: dict[str, Any], context: ModelContext) -> BaseModel:
    cls = model_class(kind)
    return cls(cls.Params.model_validate(params), context)


def code_version(kind: str) -> str:
    """A hash of the source of the module that trains `kind` (part of a fold task's identity)."""
    import hashlib
    import inspect

    import foldstack

    cls = model_class(kind)
    module = inspect.getmodule(cls)
    source = inspect.getsource(module) if module else ""
    digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    return f"{foldstack.__version__}+{digest}"
