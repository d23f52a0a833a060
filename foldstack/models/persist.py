"""Saving and loading the pieces of scikit-learn base models without pickle.

Three file kinds, each loaded without executing code from the file:

- JSON (`save_json` / `load_json`) for small metadata (`model.json`: kind, params, n_classes, seed) and
  for vectorizer vocabularies.
- `.npy` arrays (`save_array` / `load_array`), read with `allow_pickle=False`.
- skops files (`save_sklearn` / `load_sklearn`) for fitted estimators. Before an estimator is rebuilt,
  every type named in the file is checked against `TRUSTED_TYPES`, an explicit allow-list; anything
  else — including types skops itself would trust by default — is refused with a `BundleError` that
  names the types.

Every failure to read a file the model needs is a `BundleError` naming the file.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from foldstack.errors import BundleError

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


# ----------------------------------------------------------------------------------------------- JSON
def save_json(data: Any, path: Path, *, indent: int | None = 2) -> None:
    """Write `data` as JSON (ASCII-escaped, so any string — even a lone surrogate — survives)."""
    text = json.dumps(data, indent=indent, sort_keys=True, ensure_ascii=True)
    Path(path).write_text(text + "\n", encoding="utf-8")


def load_json(path: Path) -> Any:
    """Read a JSON file; a missing or malformed file is a `BundleError` naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{path}: file missing from the saved model") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: not a readable JSON file ({exc})") from None


# --------------------------------------------------------------------------------------------- arrays
def save_array(array: np.ndarray, path: Path) -> None:
    """Write a numeric array as `.npy`; object arrays (which would need pickle) are refused."""
    np.save(Path(path), np.asarray(array), allow_pickle=False)


def load_array(path: Path) -> np.ndarray:
    """Read an `.npy` file written by `save_array`, never unpickling anything."""
    path = Path(path)
    try:
        return np.load(path, allow_pickle=False)
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
    import hashlib

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
