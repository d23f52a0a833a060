"""The bundle: the one directory that is registered, served and versioned.

    manifest.json            format version, foldstack + library versions, label map, resolved params,
                             data hash, fold hash, metrics, and the sha256 of every other file
    base/<name>/<member>/    each base model's fold models (or its full refit), saved without pickle
    meta/                    the meta-learner (JSON)

`write_manifest` is the one writer of the format (the pipeline's bundle stage, foldstack.pipeline.bundle_stage,
and `FoldStackClassifier.save_bundle` call it); `load_bundle` verifies every hash (and that no file was added)
before any model file is opened.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import numpy as np

from foldstack.common.files import COMPLETE_MARKER, read_json, sha256_file, sha256_json, write_json
from foldstack.common.version import __version__ as foldstack_version
from foldstack.core.data import LabelMap, normalise_text
from foldstack.core.ensemble import StackedPredictor
from foldstack.core.meta import load_meta
from foldstack.errors import BundleError
from foldstack.models import model_class

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_LIBRARIES = ("numpy", "pandas", "scikit-learn", "torch", "transformers", "skops", "safetensors", "pydantic")


def library_versions() -> dict[str, str]:
    versions = {}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _file_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_file(p)
            for p in sorted(root.rglob("*")) if p.is_file() and p.name not in (MANIFEST, COMPLETE_MARKER)}


def manifest_digest(manifest: dict[str, Any]) -> str:
    """The bundle's id: a hash of everything in the manifest (labels, params, metrics, file hashes).

    Fields a registry adds after the fact (`registry_version`, `registry`) are not part of the trained model's identity.
    """
    content = {k: v for k, v in manifest.items() if k not in ("bundle_id", "registry_version", "registry")}
    return sha256_json(content)[:12]


def write_manifest(directory: Path, *, labels: list[Any], params: dict[str, Any], data_hash: str, fold_hash: str,
                   base_models: list[dict[str, Any]], meta: dict[str, Any], metrics: dict[str, Any],
                   **extra: Any) -> dict[str, Any]:
    """Hash every file of the bundle being assembled in `directory` and write its manifest, the last file.

    The one writer of the format, for the pipeline's bundle stage and `FoldStackClassifier.save_bundle`;
    `extra` fields (e.g. `trained_by`) are recorded beside the standard ones and covered by the bundle id.
    """
    manifest = {
        "format_version": FORMAT_VERSION,
        "foldstack_version": foldstack_version,
        "libraries": library_versions(),
        "labels": labels,
        "params": params,
        "data_hash": data_hash,
        "fold_hash": fold_hash,
        "base_models": base_models,
        "meta": meta,
        "metrics": metrics,
        **extra,
        "files": _file_hashes(directory),
    }
    manifest["bundle_id"] = manifest_digest(manifest)
    write_json(directory / MANIFEST, manifest)
    return manifest


def verify_bundle(path: Path) -> dict[str, Any]:
    """Check every file against the manifest; return the manifest. Raises BundleError on any mismatch."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{path}: not a bundle (no {MANIFEST})")
    try:
        manifest = read_json(manifest_path)
    except ValueError as exc:
        raise BundleError(f"{manifest_path}: not valid JSON ({exc})") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{path}: bundle format {manifest.get('format_version')!r}, this foldstack reads "
                          f"{FORMAT_VERSION}")
    expected: dict[str, str] = manifest.get("files", {})
    actual_files = {p.relative_to(path).as_posix() for p in path.rglob("*")
                    if p.is_file() and p.name not in (MANIFEST, COMPLETE_MARKER)}
    extra = sorted(actual_files - set(expected))
    missing = sorted(set(expected) - actual_files)
    if extra or missing:
        raise BundleError(f"{path}: files differ from the manifest (missing: {missing[:5]}, unexpected: {extra[:5]})")
    for rel, digest in expected.items():
        if sha256_file(path / rel) != digest:
            raise BundleError(f"{path / rel}: sha256 does not match the manifest; the bundle was modified")
    if manifest.get("bundle_id") != manifest_digest(manifest):
        raise BundleError(f"{manifest_path}: bundle_id does not match the manifest's content; the manifest was modified")
    return manifest


class Bundle:
    """A loaded, verified bundle: predict_proba / predict on raw texts."""

    def __init__(self, path: Path, manifest: dict[str, Any], predictor: Any):
        self.path = path
        self.manifest = manifest
        self.label_map = LabelMap.from_json(manifest["labels"])
        self._predictor = predictor

    @property
    def labels(self) -> list[Any]:
        return list(self.label_map.labels)

    @property
    def version(self) -> str:
        return self.manifest.get("registry_version") or self.manifest["bundle_id"]

    @property
    def lowercase(self) -> bool:
        return bool(self.manifest["params"]["data"].get("lowercase", False))

    def prepare(self, texts: list[str]) -> list[str]:
        """The texts as training saw them: `data.normalise_text` with this bundle's own `data.lowercase`.

        The bundle owns its input contract, so no caller (batch prediction, the service, the registry gate,
        a notebook) can skip or change the normalisation that was evaluated.
        """
        return [normalise_text(text, self.lowercase) for text in texts]

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Class probabilities (rows x `labels`) of raw texts."""
        return self._predictor.predict_proba(self.prepare(texts))

    def predict(self, texts: list[str]) -> list[Any]:
        return self.label_map.decode(self.predict_proba(texts).argmax(axis=1))

    def base_probas(self, texts: list[str]) -> dict[str, np.ndarray]:
        return self._predictor.base_probas(self.prepare(texts))


def load_bundle(path: str | Path, *, device: str = "cpu", cache_dir: Path | None = None) -> Bundle:
    path = Path(path)
    manifest = verify_bundle(path)
    members = {}
    for entry in manifest["base_models"]:
        cls = model_class(entry["kind"])
        members[entry["name"]] = [cls.load(path / "base" / entry["name"] / m, device=device, cache_dir=cache_dir)
                                  for m in entry["members"]]
    meta = load_meta(path / manifest["meta"]["path"])
    predictor = StackedPredictor(members, meta, n_classes=len(manifest["labels"]))
    return Bundle(path, manifest, predictor)
