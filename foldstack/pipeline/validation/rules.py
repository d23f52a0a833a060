"""The gate's rules as GX expectations, built from params, and the frames they are checked against.

The table-level rules (class share, one label per text, holdout not in training) are checked through
derived row-level columns, so that GX names the rows that break them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from foldstack.config import Config, DataConfig
from foldstack.core.data import Snapshot, normalise_label, normalise_text

# The batches the gate validates; each has its own suite, validation definition and checkpoint.
TRAINING_DATA = "training_data"
HOLDOUT_FILE = "holdout_file"
HOLDOUT = "holdout"

# Columns the gate derives before validating (row-level views of table-level rules, so that GX names rows).
LABELS_FOR_TEXT = "labels_for_this_text"
CLASS_SHARE = "share_of_this_label"
IN_TRAINING = "text_in_training_data"

ROW = "row"  # the index name of every validated frame: row numbers from 1, as foldstack.core.data counts them


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


def is_missing(value: Any) -> bool:
    if isinstance(value, (list, tuple, dict, np.ndarray)):
        return False
    return bool(pd.isna(value))


def audit_frame(raw: pd.DataFrame, data: DataConfig, label_stats: bool = True) -> pd.DataFrame:
    """The raw table as the rules see it: indexed by row number (from 1, as foldstack.core.data counts rows), text
    normalised as training sees it, labels as strings, and (with `label_stats`) the derived columns."""
    frame = raw.copy()
    frame.index = pd.RangeIndex(1, len(raw) + 1, name=ROW)
    text, label = data.text_column, data.label_column
    if text in frame.columns:
        frame[text] = pd.Series([t if is_missing(t) else normalise_text(str(t), data.lowercase)
                                 for t in frame[text]], index=frame.index, dtype=object)
    if label in frame.columns:
        frame[label] = pd.Series([None if is_missing(v) or str(v).strip() == "" else str(normalise_label(v))
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
    }, index=pd.Index(holdout["row"].to_numpy(), name=ROW))
