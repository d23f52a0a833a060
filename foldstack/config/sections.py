"""The params sections of the data and its checks, the folds, evaluation, the registry and tracking.

Each is a `Section`: unknown keys are errors, and every field's description says what it does.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, get_args

from pydantic import Field, field_validator, model_validator

from foldstack.config.base import Section


class DataConfig(Section):
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


class SplitConfig(Section):
    holdout_fraction: float = Field(0.2, gt=0.0, lt=0.9)


class GroupingConfig(Section):
    """Which overlapping texts share a group (kept whole by the folds and the holdout split); see grouping.py."""

    exact: bool = Field(True, description="texts equal up to case, punctuation and spacing")
    containment: bool = Field(True, description="a text found, at word boundaries, inside a longer one joins it")
    near_duplicates: bool = Field(True, description="word-shingle Jaccard >= jaccard_threshold (MinHash LSH)")
    min_contained_tokens: int = Field(3, ge=1, description="shorter texts never attach to a container: generic "
                                                           "phrases ('the film') would chain unrelated texts")
    jaccard_threshold: float = Field(0.7, gt=0.0, le=1.0, description="near-duplicate similarity threshold")
    shingle_tokens: int = Field(2, ge=1, le=10, description="words per shingle for near-duplicates")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations (more: a tighter estimate)")


class FoldsConfig(Section):
    k: int = Field(5, ge=2, le=50)
    repeats: int = Field(1, ge=1, le=20)
    grouping: GroupingConfig = Field(default_factory=GroupingConfig)

    retired_keys: ClassVar[dict[str, str]] = {
            "group_near_duplicates": "group_near_duplicates was replaced by folds.grouping "
                                     "(exact / containment / near_duplicates, each true or false)",
        }


class EvaluateConfig(Section):
    ece_bins: int = Field(15, ge=2, le=100)
    baselines: list[Literal["weighted_mean", "vote"]] = Field(default_factory=lambda: ["weighted_mean", "vote"])
    plots: bool = True
    learning_curve: bool = Field(False, description="the evaluate stage also writes eval/learning_curve/ "
                                                    "(the ensemble and base models refit on fractions of the "
                                                    "training rows, scored on the same holdout)")
    learning_curve_fractions: list[float] = Field(
        default_factory=lambda: [0.1, 0.25, 0.5, 1.0],
        description="the training-row fractions of the learning curve: each > 0 and <= 1, ascending, no repeats")

    @field_validator("learning_curve_fractions")
    @classmethod
    def _fractions(cls, fractions: list[float]) -> list[float]:
        if not fractions:
            raise ValueError("give at least one fraction")
        for f in fractions:
            if not 0.0 < f <= 1.0:
                raise ValueError(f"fraction {f:g} is out of range: each must be > 0 and <= 1")
        if any(b <= a for a, b in zip(fractions, fractions[1:])):
            raise ValueError(f"fractions {[float(f) for f in fractions]} must be ascending, without repeats")
        return fractions

    retired_keys: ClassVar[dict[str, str]] = {
            "primary_metric": "primary_metric was removed: nothing read it (the registry's gate compares "
                              "registry.gate_metric); delete it from the params",
        }


class RegistryConfig(Section):
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


class TrackingConfig(Section):
    mode: Literal["auto", "online", "offline", "disabled"] = Field(
        "auto", description="auto: online with W&B credentials, else offline; WANDB_MODE=disabled always wins")
    project: str = "foldstack"
    entity: str | None = None
    dir: str = Field(".wandb", description="W&B's local directory (offline runs, pending registry links)")
    init_timeout_seconds: float = Field(30.0, gt=0, description="give up on reaching W&B after this; go offline")
    log_plots: bool = True


# The data gate's rules (foldstack/pipeline/validation/); `validation.severity` sets any of them to error, warn or off.
ValidationRule = Literal[
    "required_columns", "text_not_null", "text_not_blank", "text_length", "label_not_null", "label_in_set",
    "min_class_share", "max_duplicate_share", "consistent_labels", "row_count", "holdout_not_in_training",
]
VALIDATION_RULES: tuple[str, ...] = get_args(ValidationRule)


class ValidationConfig(Section):
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


