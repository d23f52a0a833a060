"""run_gate: validate the data file(s), build the snapshot, validate the holdout, write the reports."""

from __future__ import annotations

import logging

from foldstack.config import Config
from foldstack.core.data import Snapshot, build_snapshot, read_table
from foldstack.errors import DataError
from foldstack.pipeline.validation.context import ExpectationsContext
from foldstack.pipeline.validation.report import GateReport, outcomes_from_results, write_reports
from foldstack.pipeline.validation.rules import (HOLDOUT, HOLDOUT_FILE, TRAINING_DATA, audit_frame, build_expectations,
                                                 holdout_frame)

log = logging.getLogger("foldstack.pipeline.validation")


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
    except DataError as exc:  # unreadable file, or foldstack.core.data's own checks while splitting
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
