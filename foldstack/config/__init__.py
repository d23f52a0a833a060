"""params.yaml -> typed, validated configuration.

Every knob of foldstack lives in params.yaml and is validated here, in full, before any work starts.
Unknown keys, wrong types and impossible values fail with a message that names the dotted key and what
is allowed. A CLI flag or a flow parameter overrides one key by its dotted path (`meta.kind=vote`,
`base_models.tfidf_lr.params.C=2`: base models are addressed by their `name`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from foldstack.errors import ConfigError

DEFAULT_PARAMS_FILE = "params.yaml"


class _Section(BaseModel):
    """A params section: unknown keys are errors, values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    path: str = Field("data/demo/reviews.csv", description="training data file (csv, tsv, parquet, jsonl)")
    format: Literal["auto", "csv", "tsv", "parquet", "jsonl"] = "auto"
    text_column: str = "text"
    label_column: str = "label"
    test_path: str | None = Field(None, description="a separate holdout file; replaces the split")
    labels: list[str] | None = Field(None, description="the allowed label set (as strings); any other is an error")
    min_text_chars: int = Field(1, ge=1)
    max_text_chars: int = Field(100_000, ge=1)
    lowercase: bool = False
    max_rows: int | None = Field(None, ge=1, description="use only the first N rows (after a seeded shuffle)")

    @model_validator(mode="after")
    def _bounds(self) -> DataConfig:
        if self.min_text_chars > self.max_text_chars:
            raise ValueError(
                f"min_text_chars ({self.min_text_chars}) is larger than max_text_chars ({self.max_text_chars})"
            )
        return self


class SplitConfig(_Section):
    holdout_fraction: float = Field(0.2, gt=0.0, lt=0.9)


class GroupingConfig(_Section):
    """Which overlapping texts share a group (kept whole by the folds and the holdout split); see grouping.py."""

    exact: bool = Field(True, description="texts equal up to case, punctuation and spacing")
    containment: bool = Field(True, description="a text found, at word boundaries, inside a longer one joins it")
    near_duplicates: bool = Field(True, description="word-shingle Jaccard >= jaccard_threshold (MinHash LSH)")
    min_contained_tokens: int = Field(3, ge=1, description="shorter texts never attach to a container: generic "
                                                           "phrases ('the film') would chain unrelated texts")
    jaccard_threshold: float = Field(0.7, gt=0.0, le=1.0, description="near-duplicate similarity threshold")
    shingle_tokens: int = Field(2, ge=1, le=10, description="words per shingle for near-duplicates")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations (more: a tighter estimate)")


class FoldsConfig(_Section):
    k: int = Field(5, ge=2, le=50)
    repeats: int = Field(1, ge=1, le=20)
    grouping: GroupingConfig = Field(default_factory=GroupingConfig)

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and "group_near_duplicates" in raw:
            raise ValueError("group_near_duplicates was replaced by folds.grouping "
                             "(exact / containment / near_duplicates, each true or false)")
        return raw


class BaseModelSpec(_Section):
    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)
    kind: str
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_kind_and_params(self) -> BaseModelSpec:
        from foldstack.models import available_kinds, model_class

        try:
            cls = model_class(self.kind)
        except KeyError:
            raise ValueError(
                f"unknown model kind {self.kind!r}; available kinds: {', '.join(available_kinds())}"
            ) from None
        try:
            validated = cls.Params.model_validate(self.params)
        except ValidationError as exc:
            raise ValueError(f"params of {self.kind!r}: {_describe(exc)}") from None
        # Store the complete, defaulted params: they are what the fold identity hashes.
        object.__setattr__(self, "params", validated.model_dump(mode="json"))
        return self


MetaKind = Literal["logreg", "ensemble_selection", "weighted_mean", "vote"]


class MetaConfig(_Section):
    kind: Literal["auto", "logreg", "ensemble_selection", "weighted_mean", "vote"] = Field(
        "auto", description="auto: the candidate of best CV log loss on the OOF, the simpler one on a tie")
    auto_candidates: list[MetaKind] = Field(
        default_factory=lambda: ["weighted_mean", "ensemble_selection", "logreg"], min_length=1,
        description="(auto) the kinds compared, simplest first: ties go to the earlier one")
    auto_tie_se: float = Field(1.0, ge=0.0, description="(auto) a simpler kind within this many standard errors "
                                                        "of the best one's CV log loss is a tie")
    C: float = Field(1.0, gt=0)
    logit: bool = Field(True, description="feed log-odds of the OOF probabilities to logreg")
    passthrough: bool = Field(False, description="(logreg) also feed the base models' raw probabilities")
    selection_rounds: int = Field(50, ge=1, le=1000, description="(ensemble_selection) greedy rounds")
    cv_folds: int = Field(5, ge=2, le=20, description="folds of the CV that estimates the meta-learner's quality")


class EvaluateConfig(_Section):
    ece_bins: int = Field(15, ge=2, le=100)
    baselines: list[Literal["weighted_mean", "vote"]] = Field(default_factory=lambda: ["weighted_mean", "vote"])
    primary_metric: Literal["accuracy", "macro_f1", "log_loss", "roc_auc"] = "log_loss"
    plots: bool = True


class RegistryConfig(_Section):
    model_name: str = Field("foldstack-ensemble", pattern=r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$",
                            description="the artifact name: GTO tags `<model_name>@vX.Y.Z`, W&B artifact name")
    gate_metric: Literal["accuracy", "macro_f1", "log_loss", "roc_auc"] = "log_loss"
    gate_tolerance: float = Field(0.0, ge=0.0, description="a candidate must beat production by more than this")
    auto_promote: bool = True
    wandb_collection: str = Field("foldstack", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                                  description="collection in the W&B model registry (wandb-registry-model/<this>)")
    wandb_registry: str = Field("model", pattern=r"^[a-z0-9][a-z0-9-]*$",
                                description="the W&B registry: links go to wandb-registry-<this>/<collection>")
    git_registry: bool = True
    store_dir: str = Field(".foldstack/registry",
                           description="where the registered bundles' bytes are kept, one directory per version")
    version_bump: Literal["major", "minor", "patch"] = Field("minor", description="semver part a new version bumps")
    push_tags: bool = Field(False, description="push the GTO tags to the git remote `origin` as they are made")
    link_retries: int = Field(3, ge=0, le=10, description="retries of a W&B registry link before it is left pending")


class TrackingConfig(_Section):
    mode: Literal["auto", "online", "offline", "disabled"] = Field(
        "auto", description="auto: online with W&B credentials, else offline; WANDB_MODE=disabled always wins")
    project: str = "foldstack"
    entity: str | None = None
    dir: str = Field(".wandb", description="W&B's local directory (offline runs, pending registry links)")
    init_timeout_seconds: float = Field(30.0, gt=0, description="give up on reaching W&B after this; go offline")
    log_plots: bool = True


class RuntimeConfig(_Section):
    artifacts_dir: str = "artifacts"
    cache_dir: str = ".cache/foldstack"
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    max_workers: int = Field(2, ge=1, le=256, description="fold trainings run at once on CPU; GPU kinds run "
                                                          "one per visible GPU besides these")
    fits_per_gpu: int = Field(1, ge=1, le=16, description="fold fits sharing one GPU at once (small fine-tunes "
                                                          "fill a big GPU better several at a time)")
    executor: Literal["local", "workpool", "ray"] = Field(
        "local", description="where fold trainings run: this machine, a Prefect work pool, or a Ray cluster")
    work_pool: str = Field("gpu", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                           description="(workpool) the Prefect work pool whose workers run the train-fold flow")
    shared_storage: str | None = Field(None, description="(workpool) fsspec URL where workers exchange artifacts, "
                                                         "e.g. s3://bucket/foldstack or file:///mnt/shared")
    ray_address: str | None = Field(None, description="(ray) address of the Ray cluster; none: RAY_ADDRESS or "
                                                      "a local Ray")
    retrain_cron: str = Field("0 3 * * 1", description="schedule of the `retrain` deployment (cron, or @daily...)")
    watch_interval_seconds: int = Field(300, ge=10, description="how often `watch-data` hashes the data")
    refit_full: bool = Field(False, description="also fit each base model on all training rows for prediction")

    @field_validator("retrain_cron")
    @classmethod
    def _cron_shape(cls, value: str) -> str:
        aliases = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
        if value.strip() not in aliases and len(value.split()) != 5:
            raise ValueError(f"{value!r} is not a cron schedule: five fields (minute hour day month weekday), "
                             f"e.g. '0 3 * * 1', or one of {', '.join(sorted(aliases))}")
        return value.strip()


# The data gate's rules (foldstack/pipeline/validation.py); `validation.severity` sets any of them to error, warn or off.
ValidationRule = Literal[
    "required_columns", "text_not_null", "text_not_blank", "text_length", "label_not_null", "label_in_set",
    "min_class_share", "max_duplicate_share", "consistent_labels", "row_count", "holdout_not_in_training",
]
VALIDATION_RULES: tuple[str, ...] = get_args(ValidationRule)


class ValidationConfig(_Section):
    """The Great Expectations data gate run by the validate stage (text length bounds and the label set
    come from `data`)."""

    enabled: bool = Field(True, description="run the gate; off leaves only the reader's own checks in data.py")
    required_columns: list[str] = Field(default_factory=list,
                                        description="columns the data file must have beside the text and label")
    min_rows: int = Field(20, ge=1, description="fewest rows the data file may have")
    max_rows: int | None = Field(None, ge=1, description="most rows the data file may have (none: no bound)")
    min_class_share: float = Field(0.05, ge=0.0, lt=1.0, description="each class's least share of the rows")
    max_duplicate_share: float = Field(0.1, ge=0.0, le=1.0,
                                       description="most share of rows that repeat an earlier row's text")
    severity: dict[ValidationRule, Literal["error", "warn", "off"]] = Field(
        default_factory=dict, description="per-rule override; min_class_share warns, the others are errors")
    context_dir: str = Field("gx", description="the Great Expectations file context (suites, history, Data Docs)")
    report_dir: str = Field("reports", description="where validation.json and validation.md are written")
    data_docs: bool = Field(True, description="build the Data Docs site for every run")
    max_examples: int = Field(5, ge=1, le=100, description="example rows shown per broken rule")
    keep_history: int = Field(50, ge=1, description="validation results kept per suite under "
                              "<context_dir>/uncommitted/ (older ones and their Data Docs pages are deleted)")

    @model_validator(mode="after")
    def _row_bounds(self) -> ValidationConfig:
        if self.max_rows is not None and self.min_rows > self.max_rows:
            raise ValueError(f"min_rows ({self.min_rows}) is larger than max_rows ({self.max_rows})")
        return self

    def severity_of(self, rule: str) -> str:
        default = "warn" if rule == "min_class_share" else "error"
        return self.severity.get(rule, default)


class Config(_Section):
    seed: int = Field(0, ge=0)
    data: DataConfig = Field(default_factory=DataConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    folds: FoldsConfig = Field(default_factory=FoldsConfig)
    # validate_default: params without base_models get the "at least one" error, not an empty run.
    base_models: list[BaseModelSpec] = Field(default_factory=list, validate_default=True)
    meta: MetaConfig = Field(default_factory=MetaConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)

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
        from foldstack.models.transformers.hf import TINY_PREFIX, TRANSFORMER_KINDS, resolve_model_source

        for spec in self.base_models:
            source = spec.params.get("model")
            # A tiny:<seed> model is built on first use (that imports torch): nothing to look for yet.
            if spec.kind not in TRANSFORMER_KINDS or not isinstance(source, str) or source.startswith(TINY_PREFIX):
                continue
            try:
                resolve_model_source(source, base_dir=self.resolve_path("."))
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

    def section_hash(self, *sections: str) -> str:
        """A stable hash of the named top-level sections (what a stage's identity depends on)."""
        dumped = self.model_dump(mode="json")
        payload = {s: dumped[s] for s in sections}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def resolve_path(self, value: str) -> Path:
        """Relative paths in params are relative to the directory of the params file."""
        p = Path(value)
        return p if p.is_absolute() else (self._root / p)

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


def _describe(exc: ValidationError, model_names: list[Any] | None = None) -> str:
    model_names = model_names or []
    parts = []
    for err in exc.errors():
        loc = list(err["loc"])
        # pydantic numbers the base models; the user knows them by name (base_models.tfidf_lr.kind).
        if len(loc) > 1 and loc[0] == "base_models" and isinstance(loc[1], int) and loc[1] < len(model_names) \
                and model_names[loc[1]] is not None:
            loc[1] = model_names[loc[1]]
        loc = ".".join(str(x) for x in loc)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "literal_error" and "expected" in err.get("ctx", {}):
            msg = f"must be one of {err['ctx']['expected']}"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def config_from_dict(raw: dict[str, Any], *, root: Path | str = ".", source: str = "params") -> Config:
    """Validate a raw mapping; raise ConfigError naming every bad key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: invalid params — {_describe(exc, _model_names(raw))}") from None
    cfg._root = Path(root).resolve()
    return cfg


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
