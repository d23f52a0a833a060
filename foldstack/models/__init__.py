"""The registry of base-model kinds.

A kind registers itself with `@register_model`; the built-in kinds are listed below and imported
on first use (their heavy dependencies — torch, transformers — are imported inside their methods, so
validating params stays fast). Third-party kinds can register through the `foldstack.models` entry
point group: `mykind = "mypackage.module:MyModel"`.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re
import sys
import threading
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from foldstack.common.version import __version__

if TYPE_CHECKING:
    from foldstack.models.base import BaseModel, ModelContext

_BUILTIN_MODULES = (
    "foldstack.models.sklearn",
    "foldstack.models.transformers.embed_lr",
    "foldstack.models.transformers.finetune",
)
_REGISTRY: dict[str, type] = {}
# Filling the registry imports modules, which takes time and lets other threads run: the first look-up
# fills it under this lock, and `_loaded` turns true only once every kind is in, so a thread that sees it
# true (no lock needed then) sees a full registry. A re-entrant lock with `_loading`: a kind's module that
# looks kinds up while it is being imported (same thread) gets the kinds registered so far, not a deadlock.
_LOAD_LOCK = threading.RLock()
_loaded = False
_loading = False


def register_model(cls: type) -> type:
    """Class decorator: make `cls` available under `cls.kind`."""
    # No lock here: this runs while a kind's module is being imported, and a thread importing that module
    # on its own (holding the module's import lock) must not wait for `_LOAD_LOCK`, whose holder may be
    # waiting for that same import. One dict assignment is atomic.
    kind = getattr(cls, "kind", None)
    if not kind or not hasattr(cls, "Params"):
        raise TypeError(f"{cls.__name__} needs a `kind` string and a `Params` class to be registered")
    if kind in _REGISTRY and _REGISTRY[kind] is not cls:
        raise TypeError(f"model kind {kind!r} is registered twice ({_REGISTRY[kind].__name__}, {cls.__name__})")
    _REGISTRY[kind] = cls
    return cls


def _load_all() -> None:
    global _loaded, _loading
    if _loaded:
        return
    with _LOAD_LOCK:
        if _loaded or _loading:  # filled by the thread we waited for, or a re-entrant call during the imports
            return
        _loading = True
        try:
            for module in _BUILTIN_MODULES:
                importlib.import_module(module)
            for ep in entry_points(group="foldstack.models"):
                register_model(ep.load())
            _loaded = True  # only now: a failed import is raised again on the next look-up, never half-filled
        finally:
            _loading = False


def available_kinds() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def model_class(kind: str) -> type[BaseModel]:
    """The class registered under `kind`; KeyError if none."""
    _load_all()
    return _REGISTRY[kind]


def soft_target_kinds() -> list[str]:
    """The kinds able to fit soft targets (`SoftTargetModel`): what can be a distilled student."""
    _load_all()
    return sorted(kind for kind, cls in _REGISTRY.items() if getattr(cls, "soft_targets", False))


def make_model(kind: str, params: dict[str, Any], context: ModelContext) -> BaseModel:
    cls = model_class(kind)
    return cls(cls.Params.model_validate(params), context)


def code_version(kind: str) -> str:
    """A hash of the code that trains `kind` (part of a fold task's identity).

    Covers the kind's own module and the foldstack modules it imports (e.g. the shared transformer or
    persistence helpers), so a change to any of them retrains that kind's folds and no other kind's.
    """
    module = inspect.getmodule(model_class(kind))
    sources, seen, queue = [], set(), [module.__name__] if module else []
    while queue:
        name = queue.pop()
        if name in seen or name not in sys.modules:
            continue
        seen.add(name)
        source = inspect.getsource(sys.modules[name])
        sources.append(source)
        for dep in re.findall(r"^\s*(?:from|import)\s+(foldstack\.models\.[\w.]+)", source, flags=re.M):
            importlib.import_module(dep)
            queue.append(dep)
    digest = hashlib.sha256("\n".join(sources).encode()).hexdigest()[:12]
    return f"{__version__}+{digest}"
