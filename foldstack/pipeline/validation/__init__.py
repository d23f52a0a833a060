"""The data gate: Great Expectations checks the data before anything trains.

The validate stage calls `run_gate(cfg)` instead of building the snapshot directly. The gate

1. reads the data file as it is (before foldstack.core.data's own checks, so that every broken row is reported at
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
retraining does not grow the history forever. Data Docs pages are cleaned of their CDN scripts and styles after
each build (`context.py`): plain, inline-styled pages that open offline.
The gate therefore also writes a plain summary, `reports/validation.md`, beside the machine-readable
`reports/validation.json`; both are written on every run, passed or failed.

A broken error-level rule raises `DataError` carrying the summary (the CLI exits non-zero); warn-level rules
(by default the class-share rule) are logged and reported without stopping the run. Each rule's severity is
set in `validation.severity` (error, warn, off).

rules (the expectations and the frames they check), context (the GX file-mode context and Data Docs),
report (rule outcomes, the summary and the report files) and gate (run_gate, what the validate stage calls).
"""

from foldstack.pipeline.validation.context import ExpectationsContext
from foldstack.pipeline.validation.gate import run_gate
from foldstack.pipeline.validation.report import (REPORT_JSON, REPORT_TEXT, GateReport, RuleOutcome,
                                                  outcomes_from_results, write_reports)
from foldstack.pipeline.validation.rules import (CLASS_SHARE, HOLDOUT, HOLDOUT_FILE, IN_TRAINING, LABELS_FOR_TEXT,
                                                 TRAINING_DATA, audit_frame, build_expectations, holdout_frame)

__all__ = [
    "CLASS_SHARE", "HOLDOUT", "HOLDOUT_FILE", "IN_TRAINING", "LABELS_FOR_TEXT", "REPORT_JSON", "REPORT_TEXT",
    "TRAINING_DATA", "ExpectationsContext", "GateReport", "RuleOutcome", "audit_frame", "build_expectations",
    "holdout_frame", "outcomes_from_results", "run_gate", "write_reports",
]
