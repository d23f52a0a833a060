"""params.yaml -> one validated `Config`: the sections together, the YAML reader and dotted overrides.

Every knob of foldstack lives in params.yaml and is validated here, in full, before any work starts.
Unknown keys, wrong types and impossible values fail with a message that names the dotted key and what
is allowed. A CLI flag or a flow parameter overrides one key by its dotted path (`meta.kind=vote`,
`base_models.tfidf_lr.params.C=2`: base models are addressed by their `name`).
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator

from foldstack.config.base import Section, describe_errors
from foldstack.config.distill import DistillConfig
from foldstack.config.meta import META_CONFIGS, AutoMetaConfig, MetaSection, default_kind
from foldstack.common.tables import read_table
from foldstack.config.models import BaseModelSpec, models_within_row_limits
from foldstack.config.monitoring import MonitoringConfig
from foldstack.config.runtime import RuntimeConfig
from foldstack.config.sections import (
    DataConfig, EvaluateConfig, FoldsConfig, RegistryConfig, SplitConfig, TrackingConfig, ValidationConfig,
)
from foldstack.errors import ConfigError, DataError
from foldstack.models.transformers.hf import TINY_PREFIX, TRANSFORMER_KINDS, resolve_model_source

DEFAULT_PARAMS_FILE = "params.yaml"
log = logging.getLogger("foldstack.config")


class Config(Section):
    seed: int = Field(0, ge=0)
    data: DataConfig = Field(default_factory=DataConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    folds: FoldsConfig = Field(default_factory=FoldsConfig)
    # validate_default: params without base_models get the "at least one" error, not an empty run.
    base_models: list[BaseModelSpec] = Field(default_factory=list, validate_default=True)
    meta: MetaSection = Field(default_factory=AutoMetaConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)

    @field_validator("meta", mode="before")
    @classmethod
    def _meta_kind(cls, meta: Any) -> Any:
        return default_kind(meta)

    @field_validator("base_models", mode="before")
    @classmethod
    def _mapping_form(cls, models: Any) -> Any:
        """`base_models` may be a mapping name -> {kind, params} (what lets DVC name stages train@<name>)."""
        if isinstance(models, dict):
            out = []
            for name, spec in models.items():
                if not isinstance(spec, dict):
                    raise ValueError(f"base model {name!r}: expected a mapping with `kind` and `params`")
                if "name" in spec and spec["name"] != name:
                    raise ValueError(f"base model {name!r}: its `name` key says {spec['name']!r}")
                out.append({**spec, "name": name})
            return out
        return models

    @field_validator("base_models")
    @classmethod
    def _non_empty_unique(cls, models: list[BaseModelSpec]) -> list[BaseModelSpec]:
        if not models:
            raise ValueError("at least one base model is needed: a mapping of names to {kind, params}, "
                             "e.g. base_models: {tfidf_lr: {kind: tfidf_lr}}")
        names = [m.name for m in models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"base model names must be unique; repeated: {', '.join(dupes)}")
        return models

    def base_model(self, name: str) -> BaseModelSpec:
        for spec in self.base_models:
            if spec.name == name:
                return spec
        raise ConfigError(
            f"no base model named {name!r} in params; names: {', '.join(m.name for m in self.base_models)}"
        )

    def check_model_sources(self) -> None:
        """Every transformer a base model names is there: a missing model directory fails before any fold
        trains, not when that model's turn comes after the others have trained. Not part of validation
        itself: a machine that only loads a bundle (serving, predicting) needs no model sources."""
        for spec in self.base_models:
            source = spec.params.get("model")
            # A tiny:<seed> model is built on first use (that imports torch): nothing to look for yet.
            if spec.kind not in TRANSFORMER_KINDS or not isinstance(source, str) or source.startswith(TINY_PREFIX):
                continue
            try:
                # The project's cache: a model joined from split packages here is the one the folds load.
                resolve_model_source(source, base_dir=self.resolve_path("."),
                                     cache_dir=self.resolve_path(self.runtime.cache_dir))
            except ConfigError as exc:
                where = (f" A relative directory is looked for in {self.resolve_path('.')} (the params file's "
                         f"directory), then in the working directory." if not Path(source).is_absolute() else "")
                raise ConfigError(f"base_models.{spec.name}.params.model: {exc}{where}") from None

    def check_writable_dirs(self, *keys: str) -> None:
        """Each directory named by a dotted key (`runtime.artifacts_dir`) exists or can be made, and can be
        written; else a ConfigError naming the key and the path. Creates nothing."""
        for key in keys:
            section, field_name = key.split(".")
            _require_writable_dir(self.resolve_path(getattr(getattr(self, section), field_name)), key)

    def resolve_path(self, value: str) -> Path:
        """Relative paths in params are relative to the directory of the params file."""
        p = Path(value)
        # normpath: a preset's `../artifacts` reads as <project>/artifacts in every message (the root is resolved,
        # so dropping `..` here cannot cross a symlink).
        return p if p.is_absolute() else Path(os.path.normpath(self._root / p))

    _root: Path = Path(".")


def _require_writable_dir(path: Path, key: str) -> None:
    nearest = path
    while not nearest.exists():
        nearest = nearest.parent
    if not nearest.is_dir():
        where = "is a file" if nearest == path else f"cannot be created: {nearest} is a file"
        raise ConfigError(f"{key}: {path} {where}, not a directory; set {key} to a directory "
                          f"(in params or --set {key}=PATH)")
    if not os.access(nearest, os.W_OK | os.X_OK):
        where = "cannot be written" if nearest == path else f"cannot be created: {nearest} is not writable"
        raise ConfigError(f"{key}: {path} {where}; set {key} to a directory you can write "
                          f"(in params or --set {key}=PATH)")


def _model_names(raw: Any) -> list[Any]:
    """The base models' names in the order validation numbers them (either form of `base_models`)."""
    models = raw.get("base_models") if isinstance(raw, dict) else None
    if isinstance(models, dict):
        return list(models)
    if isinstance(models, list):
        return [m.get("name") if isinstance(m, dict) else None for m in models]
    return []


def config_from_dict(raw: dict[str, Any], *, root: Path | str = ".", source: str = "params") -> Config:
    """Validate a raw mapping; raise ConfigError naming every bad key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as exc:
        problems = describe_errors(exc, _model_names(raw), tagged={"meta": META_CONFIGS})
        raise ConfigError(f"{source}: invalid params — {problems}") from None
    cfg._root = Path(root).resolve()
    _leave_out_models_over_their_row_limit(cfg, source)
    return cfg


def _leave_out_models_over_their_row_limit(cfg: Config, source: str) -> None:
    """Apply each base model's `max_data_rows` to the training data's row count, once, at load: every stage,
    flow and worker then sees the same list. Without a readable data file (a serving machine) nothing is left out;
    the data's own errors are the validate stage's to report."""
    if all(spec.max_data_rows is None for spec in cfg.base_models):
        return
    try:
        n_rows = len(read_table(cfg.resolve_path(cfg.data.path), cfg.data.format))
    except (DataError, OSError):
        return
    if cfg.data.max_rows is not None:
        n_rows = min(n_rows, cfg.data.max_rows)
    kept, left_out = models_within_row_limits(cfg.base_models, n_rows)
    if not kept:
        raise ConfigError(f"{source}: every base model is left out on {n_rows} rows by its max_data_rows; "
                          "raise a limit or add a base model without one")
    for name, why in left_out.items():
        log.warning("base model %s is left out: %s", name, why)
    cfg.base_models = kept


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    if not all(keys):
        raise ConfigError(f"override {dotted!r}: expected KEY.PATH=VALUE with a dotted key such as folds.k")
    node: Any = raw
    for i, key in enumerate(keys[:-1]):
        if isinstance(node, list):  # base_models.<name>
            match = [m for m in node if isinstance(m, dict) and m.get("name") == key]
            if not match:
                names = [m.get("name") for m in node if isinstance(m, dict)]
                raise ConfigError(f"override {dotted!r}: no entry named {key!r} (names: {names})")
            node = match[0]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {'.'.join(keys[:i])} is not a section")
        if i == 1 and keys[0] == "base_models" and key not in node:
            # A misspelt name would otherwise add a base model with no kind.
            raise ConfigError(f"override {dotted!r}: no entry named {key!r} (names: {list(node)})")
        node = node.setdefault(key, {})
    if isinstance(node, list):
        raise ConfigError(f"override {dotted!r}: address a list entry by its name, then a key")
    if not isinstance(node, dict):
        raise ConfigError(f"override {dotted!r}: {'.'.join(keys[:-1])} is a value, not a section")
    node[keys[-1]] = value


def apply_overrides(raw: dict[str, Any], overrides: list[str] | dict[str, Any] | None) -> dict[str, Any]:
    """Return a copy of `raw` with `key.path=value` overrides applied (values parsed as YAML)."""
    raw = copy.deepcopy(raw)
    if not overrides:
        return raw
    items = overrides.items() if isinstance(overrides, dict) else [_split_override(o) for o in overrides]
    for dotted, value in items:
        _set_dotted(raw, dotted, value)
    return raw


def _split_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY.PATH=VALUE")
    key, value = text.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({_yaml_problem(exc)}); "
                          f"put it in quotes to pass it as a string") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a key given twice in one mapping: YAML keeps the last one silently, which
    would drop a base model (or a setting) without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                repeated = key in seen
            except TypeError:  # an unhashable key: SafeLoader's own error reports it
                continue
            if repeated:
                raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} appears twice in one mapping",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error on one line: where, what, and what it was parsing (PyYAML's own text spans several)."""
    mark = getattr(exc, "problem_mark", None)
    problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
    text = f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark is not None else problem
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and context_mark is not None:
        text += f" ({context} at line {context_mark.line + 1}, column {context_mark.column + 1})"
    return text


def load_config(
    path: str | Path = DEFAULT_PARAMS_FILE, overrides: list[str] | dict[str, Any] | None = None
) -> Config:
    """Read, override and validate params.yaml."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, expected a params file (YAML); pass it with --params")
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save the params file as UTF-8") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML — {_yaml_problem(exc)}") from None
    if raw is None:
        raise ConfigError(f"{path}: the params file is empty; it needs at least base_models, "
                          f"e.g. base_models: {{tfidf_lr: {{kind: tfidf_lr}}}}")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level (seed, data, base_models, ...), "
                          f"got a YAML {type(raw).__name__}")
    return config_from_dict(apply_overrides(raw, overrides), root=path.parent, source=str(path))
