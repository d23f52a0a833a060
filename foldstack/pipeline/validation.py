"""The data gate: Great Expectations checks the data before anything trains.

The validate stage calls `run_gate(cfg)` instead of building the snapshot directly. The gate

1. reads the data file as it is (before data.py's own checks, so that every broken row is reported at
   once rather than the first problem only), normalises the text the way training sees it, adds a few
   derived columns (how many labels a text carries, the share of a row's class), and validates that
   batch against the suite `foldstack_training_data`; a separate holdout file (`data.test_path`) is
   validated against the row-level rules (`foldstack_holdout_file`);
2. builds the snapshot (the train/holdout split) only if no error-level rule broke;
3. validates the holdout against `foldstack_holdout`: no holdout text may occur in the training rows.

Every suite is rebuilt from params on each run and saved into the file-mode context at
`validation.context_dir` (default `gx/`) only when it changed, so the committed suite files stay stable.
Validation results (the history) and the Data Docs site live under `gx/uncommitted/`; after each run only the
newest `validation.keep_history` results of each suite are kept (with their Data Docs pages), so that scheduled
retraining does not grow the history forever. Data Docs pages load their styling, scripts and a logo from
public CDNs: opened offline they show unstyled, still readable tables.
The gate therefore also writes a plain summary, `reports/validation.md`, beside the machine-readable
`reports/validation.json`; both are written on every run, passed or failed.

A broken error-level rule raises `DataError` carrying the summary (the CLI exits non-zero); warn-level rules
(by default the class-share rule) are logged and reported without stopping the run. Each rule's severity is
set in `validation.severity` (error, warn, off).
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from foldstack.config import VALIDATION_RULES, Config, DataConfig
from foldstack.core.data import Snapshot, build_snapshot, normalise_text, read_table
from foldstack.core.data import _normalise_label as normalise_label
from foldstack.errors import DataError
from foldstack.common.files import write_json

log = logging.getLogger("foldstack.pipeline.validation")

# The batches the gate validates; each has its own suite, validation definition and checkpoint.
TRAINING_DATA = "training_data"
HOLDOUT_FILE = "holdout_file"
HOLDOUT = "holdout"
_DATASOURCE = "foldstack"
_BATCH_DEFINITION = "whole_frame"

# Columns the gate derives before validating (row-level views of table-level rules, so that GX names rows).
LABELS_FOR_TEXT = "labels_for_this_text"
CLASS_SHARE = "share_of_this_label"
IN_TRAINING = "text_in_training_data"

_ROW = "row"  # the index name of every validated frame: row numbers from 1, as data.py counts them

REPORT_JSON = "validation.json"
REPORT_TEXT = "validation.md"
_TEXT_PREVIEW = 80


# ------------------------------------------------------------------------------------------ the suites
def build_expectations(cfg: Config, batch: str) -> list[Any]:
    """The expectations for one batch, built from params; rules set to `off` are left out.

    Each carries `meta.rule` (the rule's name in params) so that results map back to rules.
    """
    import great_expectations.expectations as gxe
    from great_expectations.expectations.metadata_types import FailureSeverity

    data, rules = cfg.data, cfg.validation
    text, label = data.text_column, data.label_column
    expectations: list[Any] = []

    def add(rule: str, expectation_class: type, description: str, **kwargs: Any) -> None:
        severity = rules.severity_of(rule)
        if severity == "off":
            return
        expectations.append(expectation_class(
            **kwargs, description=description, meta={"rule": rule},
            severity=FailureSeverity.WARNING if severity == "warn" else FailureSeverity.CRITICAL,
        ))

    if batch in (TRAINING_DATA, HOLDOUT_FILE):
        for column in dict.fromkeys([text, label, *rules.required_columns]):
            add("required_columns", gxe.ExpectColumnToExist, f"The file has a column {column!r}.", column=column)
        add("text_not_null", gxe.ExpectColumnValuesToNotBeNull, "Every row has a text.", column=text)
        add("text_not_blank", gxe.ExpectColumnValuesToNotMatchRegex,
            "No text is blank (empty or only whitespace).", column=text, regex=r"^\s*$")
        add("text_length", gxe.ExpectColumnValueLengthsToBeBetween,
            f"Every text has {data.min_text_chars} to {data.max_text_chars} characters after normalisation "
            f"(data.min_text_chars, data.max_text_chars).",
            column=text, min_value=data.min_text_chars, max_value=data.max_text_chars)
        add("label_not_null", gxe.ExpectColumnValuesToNotBeNull, "Every row has a label.", column=label)
        if data.labels is not None:
            add("label_in_set", gxe.ExpectColumnValuesToBeInSet,
                f"Every label is one of data.labels {list(data.labels)}.", column=label, value_set=list(data.labels))
    if batch == TRAINING_DATA:
        add("min_class_share", gxe.ExpectColumnValuesToBeBetween,
            f"Every class has at least {rules.min_class_share:.1%} of the rows (column {CLASS_SHARE!r}: "
            f"the share of the row's own class).", column=CLASS_SHARE, min_value=rules.min_class_share)
        add("max_duplicate_share", gxe.ExpectColumnProportionOfUniqueValuesToBeBetween,
            f"At most {rules.max_duplicate_share:.1%} of the rows repeat an earlier row's text.",
            column=text, min_value=round(1.0 - rules.max_duplicate_share, 12))
        add("consistent_labels", gxe.ExpectColumnValuesToBeBetween,
            f"The same text never carries two labels (column {LABELS_FOR_TEXT!r}: how many labels the "
            f"row's text carries).", column=LABELS_FOR_TEXT, min_value=1, max_value=1)
        add("row_count", gxe.ExpectTableRowCountToBeBetween,
            f"The file has {rules.min_rows} to {rules.max_rows} rows." if rules.max_rows is not None
            else f"The file has at least {rules.min_rows} rows.",
            min_value=rules.min_rows, max_value=rules.max_rows)
    if batch == HOLDOUT:
        add("holdout_not_in_training", gxe.ExpectColumnValuesToBeInSet,
            f"No holdout text occurs in the training rows (column {IN_TRAINING!r}).",
            column=IN_TRAINING, value_set=[False])
    return expectations


# ------------------------------------------------------------------------------------- the batches
def _is_missing(value: Any) -> bool:
    if isinstance(value, (list, tuple, dict, np.ndarray)):
        return False
    return bool(pd.isna(value))


def audit_frame(raw: pd.DataFrame, data: DataConfig, label_stats: bool = True) -> pd.DataFrame:
    """The raw table as the rules see it: indexed by row number (from 1, as data.py counts rows), text
    normalised as training sees it, labels as strings, and (with `label_stats`) the derived columns."""
    frame = raw.copy()
    frame.index = pd.RangeIndex(1, len(raw) + 1, name=_ROW)
    text, label = data.text_column, data.label_column
    if text in frame.columns:
        frame[text] = pd.Series([t if _is_missing(t) else normalise_text(str(t), data.lowercase)
                                 for t in frame[text]], index=frame.index, dtype=object)
    if label in frame.columns:
        frame[label] = pd.Series([None if _is_missing(v) or str(v).strip() == "" else str(normalise_label(v))
                                  for v in frame[label]], index=frame.index, dtype=object)
    if label_stats and text in frame.columns and label in frame.columns:
        # Rows with no text or no label get NaN, which the rules skip (their own rules report them): nunique
        # would give a null-labelled row 0 labels, a spurious break of consistent_labels.
        labels_for_text = frame.groupby(text, dropna=True)[label].transform("nunique")
        frame[LABELS_FOR_TEXT] = labels_for_text.where(frame[label].notna())
        frame[CLASS_SHARE] = frame[label].map(frame[label].value_counts(normalize=True)).astype(float)
    return frame


def holdout_frame(snapshot: Snapshot, data: DataConfig) -> pd.DataFrame:
    """The holdout rows (indexed by their row in their file) with whether each text is also a training text."""
    holdout = snapshot.holdout
    training_texts = set(snapshot.train["text"])
    return pd.DataFrame({
        data.text_column: holdout["text"].to_numpy(dtype=object),
        data.label_column: [str(x) for x in snapshot.label_map.decode(holdout["label"].to_numpy())],
        IN_TRAINING: holdout["text"].isin(training_texts).to_numpy(),
    }, index=pd.Index(holdout["row"].to_numpy(), name=_ROW))


# --------------------------------------------------------------------------------------- the outcome
@dataclass
class RuleOutcome:
    """One expectation's result, in the terms of the rule it checks."""

    rule: str
    batch: str
    severity: str  # error | warn
    passed: bool
    evaluated: bool  # False when GX could not evaluate it (e.g. its column is missing)
    expectation: str
    column: str | None
    description: str
    unexpected_count: int | None = None
    observed: Any = None
    detail: str = ""
    examples: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class GateReport:
    """Every rule's outcome for one run of the gate, and where its reports are."""

    data_path: str
    holdout_path: str | None
    enabled: bool = True
    outcomes: list[RuleOutcome] = field(default_factory=list)
    error: str | None = None  # a problem outside the rules: unreadable file, or the split itself failing
    data_docs: str | None = None
    report_json: str | None = None
    validated_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def failures(self) -> list[RuleOutcome]:
        return [o for o in self.outcomes if not o.passed and o.severity == "error"]

    @property
    def warnings(self) -> list[RuleOutcome]:
        return [o for o in self.outcomes if not o.passed and o.severity == "warn"]

    @property
    def passed(self) -> bool:
        return self.error is None and not self.failures

    @property
    def status(self) -> str:
        if not self.enabled:
            return "disabled"
        if not self.passed:
            return "failed"
        return "passed with warnings" if self.warnings else "passed"

    def brief(self) -> dict[str, Any]:
        """What the validate stage returns beside the snapshot summary."""
        return {"status": self.status, "rules_checked": len(self.outcomes),
                "warnings": [f"{o.rule}: {o.detail}" for o in self.warnings],
                "report": self.report_json, "data_docs": self.data_docs}

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "data": self.data_path, "holdout_file": self.holdout_path,
                "validated_at": self.validated_at, "error": self.error, "data_docs": self.data_docs,
                "rules": [asdict(o) for o in self.outcomes]}

    def summary(self) -> str:
        """A short human summary: each broken rule, its unexpected count and a few example rows."""
        head = {"failed": "Data validation FAILED", "passed": "Data validation passed",
                "passed with warnings": "Data validation passed with warnings",
                "disabled": "Data validation is disabled (validation.enabled: false)"}[self.status]
        lines = [f"{head} for {self.data_path}" + (f" (holdout file {self.holdout_path})" if self.holdout_path
                                                  else "")]
        if self.error:
            lines.append(f"  x ERROR {self.error}")
        unevaluated = [o for o in self.outcomes if not o.evaluated]
        for outcome in self.failures + self.warnings:
            if not outcome.evaluated:
                continue
            # No square brackets: the CLI prints this through rich, which would read them as markup.
            mark = "x ERROR" if outcome.severity == "error" else "! WARN "
            count = f"{outcome.unexpected_count} unexpected row(s); " if outcome.unexpected_count else ""
            where = f" on {outcome.column!r}" if outcome.column else ""
            lines.append(f"  {mark} {outcome.rule} ({outcome.batch}) — {outcome.expectation}"
                         f"{where}: {count}{outcome.detail}")
            for example in outcome.examples:
                lines.append("      " + ", ".join(f"{k}={_preview(v)}" for k, v in example.items()))
            if outcome.severity == "error" and outcome.rule in _RELAXABLE_RULES:
                lines.append(f"      (public benchmark sets often break this rule; to report it without stopping "
                             f"the run set validation.severity.{outcome.rule}: warn, or pass "
                             f"--set validation.severity.{outcome.rule}=warn)")
        if unevaluated:
            lines.append(f"  ({len(unevaluated)} rule(s) could not be evaluated: "
                         f"{', '.join(sorted({o.rule for o in unevaluated}))} — see the missing columns above)")
        if self.enabled and not self.error:
            lines.append(f"  {sum(o.passed for o in self.outcomes)} of {len(self.outcomes)} expectations met.")
        if self.report_json:
            lines.append(f"  report: {self.report_json}")
        if self.data_docs:
            lines.append(f"  Data Docs: {self.data_docs} (styles load from CDNs; offline, read validation.md)")
        return "\n".join(lines)


# Rules about the data's quality rather than its shape: a user may knowingly accept breaking them.
_RELAXABLE_RULES = frozenset({"holdout_not_in_training", "consistent_labels", "max_duplicate_share",
                              "min_class_share", "row_count"})


def _preview(value: Any) -> str:
    if isinstance(value, str):
        return repr(value if len(value) <= _TEXT_PREVIEW else value[:_TEXT_PREVIEW] + "…")
    if isinstance(value, float):
        return f"{value:.4g}"
    return repr(value) if isinstance(value, (list, tuple)) else str(value)


# ------------------------------------------------------------------------------------ GX plumbing
class ExpectationsContext:
    """The file-mode GX context at `directory`, set up idempotently: suites, validation definitions and
    checkpoints are created once and re-saved only when params change them."""

    def __init__(self, directory: Path, *, data_docs: bool = True, max_examples: int = 5):
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # no network: never try to send usage stats
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self._gx = gx
        self.directory = Path(directory)
        self.data_docs = data_docs
        self.result_format = {"result_format": "SUMMARY", "partial_unexpected_count": max_examples,
                              # the query string lists every unexpected index: too big to keep in history
                              "return_unexpected_index_query": False}
        self.context = gx.get_context(mode="file", context_root_dir=str(self.directory))
        variables = self.context.variables
        if variables.analytics_enabled is not False or getattr(variables.progress_bars, "globally", True):
            variables.analytics_enabled = False
            variables.progress_bars = ProgressBarsConfig(globally=False)  # no tqdm bars in CLI/flow logs
            variables.save()

    def _batch_definition(self, batch: str) -> Any:
        sources = self.context.data_sources
        try:
            source = sources.get(_DATASOURCE)
        except KeyError:
            source = sources.add_pandas(_DATASOURCE)
        asset = next((a for a in source.assets if a.name == batch), None) or source.add_dataframe_asset(batch)
        existing = [d for d in asset.batch_definitions if d.name == _BATCH_DEFINITION]
        return existing[0] if existing else asset.add_batch_definition_whole_dataframe(_BATCH_DEFINITION)

    def _suite(self, name: str, expectations: list[Any]) -> Any:
        from great_expectations.exceptions import DataContextError

        try:
            existing = self.context.suites.get(name)
        except DataContextError:
            existing = None
        if existing is not None and _configs(existing.expectations) == _configs(expectations):
            return existing
        return self.context.suites.add_or_update(self._gx.ExpectationSuite(name=name, expectations=expectations))

    def _checkpoint(self, name: str, batch_definition: Any, suite: Any) -> Any:
        from great_expectations.checkpoint import UpdateDataDocsAction
        from great_expectations.exceptions import DataContextError

        try:
            definition = self.context.validation_definitions.get(name)
            if definition.suite.id != suite.id or definition.data.id != batch_definition.id:
                raise DataContextError(f"validation definition {name} points at an older suite or asset")
        except DataContextError:
            definition = self.context.validation_definitions.add_or_update(
                self._gx.ValidationDefinition(name=name, data=batch_definition, suite=suite))
        actions = [UpdateDataDocsAction(name="update_data_docs")] if self.data_docs else []
        try:
            checkpoint = self.context.checkpoints.get(name)
            if ([a.name for a in checkpoint.actions] == [a.name for a in actions]
                    and checkpoint.result_format == self.result_format
                    and [v.name for v in checkpoint.validation_definitions] == [name]):
                return checkpoint
        except DataContextError:
            pass
        return self.context.checkpoints.add_or_update(self._gx.Checkpoint(
            name=name, validation_definitions=[definition], actions=actions, result_format=self.result_format))

    def validate(self, batch: str, frame: pd.DataFrame, expectations: list[Any]) -> list[Any]:
        """Validate `frame` against the suite `foldstack_<batch>`; return GX's per-expectation results."""
        name = f"foldstack_{batch}"
        suite = self._suite(name, expectations)
        checkpoint = self._checkpoint(name, self._batch_definition(batch), suite)
        result = checkpoint.run(batch_parameters={"dataframe": frame})
        return [r for run in result.run_results.values() for r in run.results]

    def prune_history(self, keep: int) -> list[Any]:
        """Delete each suite's stored validation results beyond its newest `keep`, and their Data Docs pages;
        return the removed results' keys (GX `ValidationResultIdentifier`s), oldest first per suite.

        GX stores one result per checkpoint run at `uncommitted/validations/<suite>/<run name>/<run time>/
        <batch>.json` and, with Data Docs, renders it to the same path under the site's `validations/` as
        .html. Results are removed through GX's store; rebuilding the Data Docs index for the removed keys
        renders no page (their results are gone) but makes GX drop the pages whose results are missing, so
        the index never links to a deleted page.
        """
        if keep < 1:
            raise ValueError(f"keep must be at least 1 (the run just made), got {keep}")
        store = self.context.validation_results_store
        by_suite: dict[str, list[Any]] = defaultdict(list)
        for key in store.list_keys():
            by_suite[key.expectation_suite_identifier.name].append(key)
        removed = []
        for keys in by_suite.values():
            keys.sort(key=lambda key: key.run_id.run_time)
            removed += keys[:-keep]
        if not removed:
            return []
        for key in removed:
            store.remove_key(key)
        history_dirs = [Path(store.store_backend.full_base_directory)]
        if self.data_docs:
            self.context.build_data_docs(resource_identifiers=removed)
            history_dirs += [self.directory / site["store_backend"]["base_directory"] / "validations"
                             for site in (self.context.variables.data_docs_sites or {}).values()
                             if "base_directory" in site.get("store_backend", {})]
        # GX deletes the files but leaves each run's directories behind, empty: they would pile up instead.
        for base in history_dirs:
            for key in removed:
                _remove_empty_directories(base, base.joinpath(*key.to_tuple()[:-1]))
        return removed

    def docs_index(self) -> str | None:
        if not self.data_docs:
            return None
        sites = self.context.get_docs_sites_urls()
        return sites[0]["site_url"] if sites and sites[0].get("site_url") else None


def _remove_empty_directories(base: Path, directory: Path) -> None:
    """Remove `directory` and then its parents while they are empty, stopping below `base`."""
    base = base.resolve()
    directory = directory.resolve()
    while directory != base and base in directory.parents and directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()
        directory = directory.parent


def _configs(expectations: list[Any]) -> list[str]:
    """Expectations compared by what they check, not by their stored ids."""
    keys = []
    for expectation in expectations:
        config = expectation.configuration.to_json_dict()
        config.pop("id", None)
        config.pop("rendered_content", None)
        keys.append(json.dumps(config, sort_keys=True, default=str))
    return keys


def _raised(exception_info: dict[str, Any]) -> str | None:
    """GX's exception info is either one record or a mapping of metric id -> record."""
    records = [exception_info] if "raised_exception" in exception_info else list(exception_info.values())
    for record in records:
        if isinstance(record, dict) and record.get("raised_exception"):
            return str(record.get("exception_message") or "an exception")
    return None


# --------------------------------------------------------------------------------- reading results
def _example(frame: pd.DataFrame, row: Any, data: DataConfig, extra: dict[str, Any] | None = None) -> dict:
    example: dict[str, Any] = {"row": int(row)}
    for column in (data.text_column, data.label_column):
        if column in frame.columns:
            value = frame.at[row, column]
            example[column] = None if _is_missing(value) else value
    example.update(extra or {})
    return example


def outcomes_from_results(results: list[Any], frame: pd.DataFrame, batch: str, cfg: Config) -> list[RuleOutcome]:
    """GX results -> rule outcomes with a sentence of detail and a few example rows each."""
    data, n_examples = cfg.data, cfg.validation.max_examples
    outcomes = []
    for result in results:
        config = result.expectation_config
        rule = (config.meta or {}).get("rule", config.type)
        column = config.kwargs.get("column")
        severity = "warn" if str(getattr(config.severity, "value", config.severity)) == "warning" else "error"
        payload = dict(result.result or {})
        problem = _raised(result.exception_info or {})
        outcome = RuleOutcome(rule=rule, batch=batch, severity=severity, passed=bool(result.success),
                              evaluated=problem is None, expectation=config.type, column=column,
                              description=config.description or "", unexpected_count=payload.get("unexpected_count"),
                              observed=payload.get("observed_value"))
        if problem is not None:
            outcome.detail = f"not evaluated: {problem}"
        elif not outcome.passed:
            _explain(outcome, payload, frame, config.kwargs, data, n_examples)
        outcomes.append(outcome)
    # GX groups results by column; report them in the order of the rules instead.
    return sorted(outcomes, key=lambda o: VALIDATION_RULES.index(o.rule) if o.rule in VALIDATION_RULES else 99)


def _explain(outcome: RuleOutcome, payload: dict, frame: pd.DataFrame, kwargs: dict, data: DataConfig,
             n_examples: int) -> None:
    """Fill `detail` and `examples` of a broken rule from GX's result and the validated frame."""
    text, label = data.text_column, data.label_column
    # With a named index GX lists each unexpected row as {<checked column>: value, "row": <index>}.
    rows = [r[_ROW] if isinstance(r, dict) else r for r in payload.get("partial_unexpected_index_list") or []]
    rows = rows[:n_examples]
    rule = outcome.rule
    if rule == "required_columns":
        outcome.detail = (f"column {kwargs['column']!r} is missing; the file has columns "
                          f"{[str(c) for c in frame.columns if c not in (LABELS_FOR_TEXT, CLASS_SHARE)]}")
    elif rule == "row_count":
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        outcome.detail = (f"the file has {outcome.observed} rows; expected "
                          + (f"{low} to {high}" if high is not None else f"at least {low}"))
    elif rule == "max_duplicate_share":
        texts = frame[text]
        repeats = texts.duplicated(keep="first") & texts.notna()
        first_row = {t: r for r, t in texts[~texts.duplicated(keep="first") & texts.notna()].items()}
        outcome.unexpected_count = int(repeats.sum())
        share = repeats.sum() / max(int(texts.notna().sum()), 1)
        outcome.detail = (f"{share:.1%} of the rows repeat an earlier row's text (at most "
                          f"{1 - kwargs['min_value']:.1%} allowed)")
        outcome.examples = [_example(frame, r, data, {"repeats_row": int(first_row[frame.at[r, text]])})
                            for r in repeats[repeats].index[:n_examples]]
    elif rule == "min_class_share":
        shares = frame[label].value_counts(normalize=True)
        counts = frame[label].value_counts()
        rare = shares[shares < kwargs["min_value"]]
        outcome.detail = "; ".join(f"class {name!r} has {share:.1%} of the rows ({counts[name]} of "
                                   f"{int(counts.sum())})" for name, share in rare.items())
        outcome.detail += f" — minimum {kwargs['min_value']:.1%}"
        # One row of each rare class says more than the first rows of the first one.
        first_rows = frame.reset_index().groupby(label, sort=False)[_ROW].first()
        outcome.examples = [_example(frame, first_rows[name], data) for name in rare.index[:n_examples]]
    elif rule == "consistent_labels":
        labels_of = frame.groupby(text, dropna=True)[label].agg(lambda s: sorted(set(s.dropna())))
        outcome.detail = (f"{frame.loc[frame[LABELS_FOR_TEXT] > 1, text].nunique()} text(s) carry more than "
                          f"one label")
        outcome.examples = [_example(frame, r, data, {"labels_of_this_text": labels_of[frame.at[r, text]]})
                            for r in rows]
    elif rule == "holdout_not_in_training":
        outcome.detail = "holdout rows whose text is also a training text (rows of the holdout's file)"
        outcome.examples = [_example(frame, r, data) for r in rows]
    elif rule == "text_length":
        outcome.detail = f"texts outside {kwargs['min_value']} to {kwargs['max_value']} characters"
        outcome.examples = [_example(frame, r, data, {"chars": len(frame.at[r, text])}) for r in rows]
    else:
        outcome.detail = {"text_not_null": "rows without a text", "text_not_blank": "rows whose text is blank",
                          "label_not_null": "rows without a label",
                          "label_in_set": f"labels outside {kwargs.get('value_set')}: "
                                          f"{sorted({str(v) for v in payload.get('partial_unexpected_list', [])})}",
                          }.get(rule, "unexpected rows")
        outcome.examples = [_example(frame, r, data) for r in rows]


# ------------------------------------------------------------------------------------------ the gate
def run_gate(cfg: Config) -> tuple[Snapshot, GateReport]:
    """Validate the data, build the snapshot, validate the holdout; raise DataError if an error-level
    rule broke (after writing the reports). Returns the snapshot and the gate's report."""
    rules = cfg.validation
    data_path = cfg.resolve_path(cfg.data.path)
    test_path = cfg.resolve_path(cfg.data.test_path) if cfg.data.test_path else None
    report = GateReport(data_path=str(data_path), holdout_path=str(test_path) if test_path else None,
                        enabled=rules.enabled)
    if not rules.enabled:
        return build_snapshot(cfg), report

    cfg.check_writable_dirs("validation.context_dir", "validation.report_dir")
    context = ExpectationsContext(cfg.resolve_path(rules.context_dir), data_docs=rules.data_docs,
                                  max_examples=rules.max_examples)
    snapshot = None
    try:
        batches = [(TRAINING_DATA, data_path)] + ([(HOLDOUT_FILE, test_path)] if test_path else [])
        for batch, path in batches:
            frame = audit_frame(read_table(path, cfg.data.format), cfg.data, label_stats=batch == TRAINING_DATA)
            results = context.validate(batch, frame, build_expectations(cfg, batch))
            report.outcomes += outcomes_from_results(results, frame, batch, cfg)
        if report.passed:
            snapshot = build_snapshot(cfg)
            expectations = build_expectations(cfg, HOLDOUT)
            if expectations:
                frame = holdout_frame(snapshot, cfg.data)
                report.outcomes += outcomes_from_results(context.validate(HOLDOUT, frame, expectations),
                                                         frame, HOLDOUT, cfg)
    except DataError as exc:  # unreadable file, or data.py's own checks while splitting
        report.error = str(exc)
    # Pass or fail, this run's results are stored: keep the history bounded either way.
    context.prune_history(rules.keep_history)
    report.data_docs = context.docs_index()
    write_reports(cfg, report)
    for warning in (w for w in report.warnings if w.evaluated):
        log.warning("data validation warning: %s: %s", warning.rule, warning.detail)
    if not report.passed:
        raise DataError(report.summary())
    assert snapshot is not None
    return snapshot, report


def write_reports(cfg: Config, report: GateReport) -> Path:
    """Write validation.json and validation.md into `validation.report_dir`; return the JSON path."""
    directory = cfg.resolve_path(cfg.validation.report_dir)
    report.report_json = str(directory / REPORT_JSON)
    write_json(directory / REPORT_JSON, report.to_json())
    (directory / REPORT_TEXT).write_text(report.summary() + "\n", encoding="utf-8")
    return directory / REPORT_JSON
