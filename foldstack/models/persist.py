"""Saving and loading the files of a base model, without pickle: the one place that reads and writes them.

- `model.json` (`write_model_json` / `read_model_json`, and `restore_model`, which rebuilds a model from it):
  kind, format version, params, n_classes and seed, plus what the kind adds; every kind writes it last, so a
  directory with a model.json holds a complete model.
- JSON and `.npy` files are written with `foldstack.common.files` (`write_json`, ASCII-escaped so any string —
  even a lone surrogate — survives; `save_array`, which refuses object arrays); `load_json` / `load_array`
  here read them back, a missing or malformed file being a `BundleError` that names it, an array never
  unpickled.
- skops files (`save_sklearn` / `load_sklearn`) for fitted estimators. Before an estimator is rebuilt,
  every type named in the file is checked against `TRUSTED_TYPES`, an explicit allow-list; anything
  else — including types skops itself would trust by default — is refused with a `BundleError` that
  names the types.
"""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from foldstack.common import files
from foldstack.errors import BundleError
from foldstack.models.base import ModelContext, params_dict

MODEL_JSON = "model.json"

# Every type a saved foldstack scikit-learn estimator may contain. The list is deliberately narrow: a
# file that names anything else was not written by foldstack (or was tampered with) and is not loaded.
TRUSTED_TYPES: frozenset[str] = frozenset(
    {
        # containers and JSON scalars (skops records every JSON value as `builtins.str`)
        "builtins.dict",
        "builtins.list",
        "builtins.tuple",
        "builtins.str",
        "builtins.int",
        "builtins.float",
        "builtins.bool",
        "builtins.NoneType",
        # numpy arrays, scalars and dtypes
        "numpy.ndarray",
        "numpy.dtype",
        "numpy.float32",
        "numpy.float64",
        "numpy.int32",
        "numpy.int64",
        "numpy.dtypes.Float32DType",
        "numpy.dtypes.Float64DType",
        "numpy.dtypes.Int32DType",
        "numpy.dtypes.Int64DType",
        # the estimators of tfidf_lr and tfidf_char_svm
        "sklearn.linear_model._logistic.LogisticRegression",
        "sklearn.svm._classes.LinearSVC",
        "sklearn.calibration.CalibratedClassifierCV",
        "sklearn.calibration._CalibratedClassifier",
        "sklearn.calibration._SigmoidCalibration",
        "sklearn.model_selection._split.StratifiedKFold",
    }
)


# ------------------------------------------------------------------------------------------ model.json
def write_model_json(model: Any, directory: Path, format_version: int, **extra: Any) -> None:
    """The `model.json` that `restore_model` reads: kind, format, params, classes and seed, plus `extra`."""
    files.write_json(Path(directory) / MODEL_JSON, {
        "kind": model.kind, "format_version": format_version, "params": params_dict(model.params),
        "n_classes": model.context.n_classes, "seed": model.context.seed, **extra,
    })


def read_model_json(directory: Path, kind: str, format_version: int) -> dict[str, Any]:
    """The `model.json` of a saved model of `kind`, or a BundleError naming what does not match."""
    path = Path(directory) / MODEL_JSON
    if not path.is_file():
        raise BundleError(f"{directory}: no {MODEL_JSON}; not a saved {kind} model")
    meta = load_json(path)
    if not isinstance(meta, dict):
        raise BundleError(f"{path}: expected a JSON object")
    if meta.get("kind") != kind:
        raise BundleError(f"{path}: holds a {meta.get('kind')!r} model, not {kind!r}")
    if meta.get("format_version") != format_version:
        raise BundleError(
            f"{path}: format version {meta.get('format_version')}, this foldstack reads {format_version}; re-train it"
        )
    return meta


def restore_model(cls: type, directory: Path, format_version: int, *, device: str,
                  cache_dir: Path | None) -> tuple[Any, dict[str, Any]]:
    """A model of `cls` rebuilt from its saved `model.json` (params, classes, seed) on `device`, and that JSON;
    the caller restores the learned state."""
    meta = read_model_json(directory, cls.kind, format_version)
    try:
        params = cls.Params.model_validate(meta["params"])
        context = ModelContext(n_classes=meta["n_classes"], device=device, seed=meta["seed"], cache_dir=cache_dir)
    except (KeyError, TypeError, ValueError, ValidationError) as exc:
        raise BundleError(f"{Path(directory) / MODEL_JSON}: incomplete or invalid model metadata ({exc})") from None
    return cls(params, context), meta


# ---------------------------------------------------------------------------------------- JSON, arrays
def load_json(path: Path) -> Any:
    """`files.read_json`, with a missing or malformed file a `BundleError` naming it."""
    path = Path(path)
    try:
        return files.read_json(path)
    except FileNotFoundError:
        raise BundleError(f"{path}: file missing from the saved model") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: not a readable JSON file ({exc})") from None


def load_array(path: Path) -> np.ndarray:
    """`files.load_array` (never unpickling anything), with a missing file or an object array a `BundleError`."""
    path = Path(path)
    try:
        return files.load_array(path)
    except FileNotFoundError:
        raise BundleError(f"{path}: file missing from the saved model") from None
    except (OSError, ValueError) as exc:
        # ValueError is what numpy raises for an object array when pickle is not allowed.
        raise BundleError(f"{path}: not a plain numeric .npy array ({exc})") from None


# ---------------------------------------------------------------------------------------------- skops
def save_sklearn(obj: Any, path: Path, *, trusted: Iterable[str] = TRUSTED_TYPES) -> None:
    """Write a fitted estimator with `skops.io.dump`.

    The written file is audited at once with the same check `load_sklearn` applies, so an estimator
    that could not be loaded again fails here, when it is written, rather than in production.
    """
    import skops.io

    path = Path(path)
    skops.io.dump(obj, path)
    _normalise_zip(path)
    refused = sorted(skops_types(path) - frozenset(trusted))
    if refused:
        path.unlink()
        raise TypeError(
            f"{type(obj).__name__} contains types outside the skops allow-list of "
            f"foldstack.models.persist ({', '.join(refused)}); add them to TRUSTED_TYPES if they are safe"
        )


def _normalise_zip(path: Path) -> None:
    """Rewrite a skops zip so that the same model always gives the same bytes.

    skops names each array file after the array's id() in memory and stamps every entry with the current
    time, so an unchanged model would get a new hash in every bundle, and DVC and the registry would see a
    new artifact where nothing changed. Arrays are renamed after their content hash (the schema's
    references follow), entries are sorted and their timestamps fixed.
    """
    with zipfile.ZipFile(path) as source:
        contents = {info.filename: source.read(info) for info in source.infolist()}
    schema = contents.pop("schema.json").decode("utf-8")
    renamed: dict[str, bytes] = {}
    for old_name, data in contents.items():
        new_name = f"{hashlib.sha256(data).hexdigest()[:24]}{Path(old_name).suffix}"
        schema = schema.replace(f'"{old_name}"', f'"{new_name}"')
        renamed[new_name] = data
    # Object ids (memory addresses) tie repeated references together; number them by first appearance.
    ids: dict[str, str] = {}
    schema = re.sub(r'"__id__": (\d+)', lambda m: f'"__id__": {ids.setdefault(m.group(1), str(len(ids) + 1))}',
                    schema)
    renamed["schema.json"] = schema.encode("utf-8")
    tmp = path.with_name(f".{path.name}.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as target:
        for name in sorted(renamed):
            target.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), renamed[name])
    tmp.replace(path)


def skops_types(path: Path) -> set[str]:
    """Every type (`module.Name`) a skops file names: the ones it would import to rebuild the object.

    Read from the file's schema directly, unioned with what `skops.io.get_untrusted_types` reports, so
    that the allow-list is checked against all types, not only those skops itself distrusts.
    """
    import skops.io

    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            schema = json.loads(archive.read("schema.json"))
        reported = skops.io.get_untrusted_types(file=path)
    except FileNotFoundError:
        raise BundleError(f"{path}: file missing from the saved model") from None
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: not a readable skops file ({exc})") from None
    except Exception as exc:  # skops raises assorted errors for schemas it cannot parse
        raise BundleError(f"{path}: skops could not read the file's schema ({type(exc).__name__}: {exc})") from None
    found: set[str] = set(reported)
    _collect_types(schema, found)
    return found


def _collect_types(node: Any, found: set[str]) -> None:
    # Iterative walk: a hostile schema could be nested deeply enough to exhaust recursion.
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            # A schema node carries `__loader__`, `__module__` and `__class__`; a node missing one of
            # them yields a name like `None.x`, which is refused — the safe direction.
            if "__loader__" in item or "__module__" in item:
                found.add(f"{item.get('__module__')}.{item.get('__class__')}")
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def load_sklearn(path: Path, *, trusted: Iterable[str] = TRUSTED_TYPES) -> Any:
    """Rebuild an estimator written by `save_sklearn`, refusing any type outside `trusted`."""
    import skops.io

    path = Path(path)
    allowed = frozenset(trusted)
    present = skops_types(path)
    refused = sorted(present - allowed)
    if refused:
        raise BundleError(
            f"{path}: refusing to load a skops file that names types outside foldstack's allow-list: "
            f"{', '.join(refused)}"
        )
    try:
        # Every type in the file was checked above; tell skops to trust exactly those.
        return skops.io.load(path, trusted=sorted(present))
    except Exception as exc:  # a file that passed the audit can still be truncated or inconsistent
        raise BundleError(f"{path}: skops could not load the estimator ({type(exc).__name__}: {exc})") from None
