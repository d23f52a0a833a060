"""The gate's outcome: each rule's result in the rule's own terms, the summary, and the report files."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from foldstack.common.files import write_json
from foldstack.config import VALIDATION_RULES, Config, DataConfig
from foldstack.pipeline.validation.rules import CLASS_SHARE, LABELS_FOR_TEXT, ROW, is_missing

REPORT_JSON = "validation.json"
REPORT_TEXT = "validation.md"
_TEXT_PREVIEW = 80


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
            lines.append(f"  Data Docs: {self.data_docs} (no CDN needed: plain pages that open offline)")
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
            example[column] = None if is_missing(value) else value
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
    rows = [r[ROW] if isinstance(r, dict) else r for r in payload.get("partial_unexpected_index_list") or []]
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
        first_rows = frame.reset_index().groupby(label, sort=False)[ROW].first()
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


def write_reports(cfg: Config, report: GateReport) -> Path:
    """Write validation.json and validation.md into `validation.report_dir`; return the JSON path."""
    directory = cfg.resolve_path(cfg.validation.report_dir)
    report.report_json = str(directory / REPORT_JSON)
    write_json(directory / REPORT_JSON, report.to_json())
    (directory / REPORT_TEXT).write_text(report.summary() + "\n", encoding="utf-8")
    return directory / REPORT_JSON
