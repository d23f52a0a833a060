"""The clean, labelled table: the text and label columns checked and normalised, and the label map.

Normalisation is minimal and explicit: Unicode NFC, surrounding whitespace stripped, optional lower-casing.
Rows are numbered from 1 in the order of the file (the header line is not a row), and every error names the
file, the column and the first offending rows.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from foldstack.config import DataConfig
from foldstack.common.tables import MAX_EXAMPLES, read_table
from foldstack.errors import DataError


def normalise_text(text: str, lowercase: bool = False) -> str:
    text = unicodedata.normalize("NFC", text).strip()
    return text.lower() if lowercase else text


def _rows(mask: np.ndarray) -> str:
    idx = np.flatnonzero(mask)[:MAX_EXAMPLES] + 1
    more = int(mask.sum()) - len(idx)
    return ", ".join(map(str, idx)) + (f" (and {more} more)" if more > 0 else "")


def normalise_label(value: Any) -> Any:
    """Integral numbers stay ints (1.0 -> 1); everything else becomes a stripped string."""
    if isinstance(value, (bool, np.bool_)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    text = str(value).strip()
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    return text


def clean_frame(df: pd.DataFrame, cfg: DataConfig, source: Path) -> pd.DataFrame:
    """Select and check the text and label columns; returns columns row, text, label (raw label values)."""
    missing = [c for c in (cfg.text_column, cfg.label_column) if c not in df.columns]
    if missing:
        raise DataError(
            f"{source}: missing column(s) {', '.join(map(repr, missing))}; the file has columns "
            f"{', '.join(map(repr, map(str, df.columns)))} (set data.text_column / data.label_column)"
        )
    texts = df[cfg.text_column]
    null_text = texts.isna().to_numpy()
    if null_text.any():
        raise DataError(f"{source}: column {cfg.text_column!r} is empty (null) at row(s) {_rows(null_text)}")
    texts = texts.map(lambda t: normalise_text(str(t), cfg.lowercase))
    lengths = texts.str.len().to_numpy()
    blank = lengths == 0
    if blank.any():
        raise DataError(f"{source}: column {cfg.text_column!r} is blank at row(s) {_rows(blank)}")
    too_short = lengths < cfg.min_text_chars
    if too_short.any():
        raise DataError(
            f"{source}: column {cfg.text_column!r} is shorter than data.min_text_chars={cfg.min_text_chars} "
            f"at row(s) {_rows(too_short)}"
        )
    too_long = lengths > cfg.max_text_chars
    if too_long.any():
        raise DataError(
            f"{source}: column {cfg.text_column!r} is longer than data.max_text_chars={cfg.max_text_chars} "
            f"at row(s) {_rows(too_long)}"
        )
    labels = df[cfg.label_column]
    null_label = labels.isna().to_numpy() | (labels.astype(str).str.strip() == "").to_numpy()
    if null_label.any():
        raise DataError(f"{source}: column {cfg.label_column!r} is empty at row(s) {_rows(null_label)}")
    labels = labels.map(normalise_label)
    if labels.map(type).nunique() > 1:  # a mix of numbers and words: treat all as strings
        labels = labels.map(str)
    if cfg.labels is not None:
        allowed = set(cfg.labels)
        bad = ~labels.map(lambda v: str(v) in allowed).to_numpy()
        if bad.any():
            unknown = sorted({str(v) for v in labels[bad]})
            raise DataError(
                f"{source}: column {cfg.label_column!r} has label(s) {unknown} outside data.labels "
                f"{sorted(allowed)} at row(s) {_rows(bad)}"
            )
    return pd.DataFrame({"row": np.arange(1, len(df) + 1), "text": texts.to_numpy(), "label": labels.to_numpy()})


def load_labelled(path: Path, cfg: DataConfig) -> pd.DataFrame:
    return clean_frame(read_table(path, cfg.format), cfg, path)


@dataclass(frozen=True)
class LabelMap:
    """Sorted labels; a label's code is its index. Ints sort numerically, strings lexically."""

    labels: tuple[Any, ...]

    @classmethod
    def from_values(cls, values: pd.Series) -> LabelMap:
        uniques = [v.item() if isinstance(v, np.generic) else v for v in pd.unique(values)]
        return cls(tuple(sorted(uniques, key=lambda v: (isinstance(v, str), v))))

    def encode(self, values: pd.Series, source: str) -> np.ndarray:
        index = {v: i for i, v in enumerate(self.labels)}
        codes = values.map(lambda v: index.get(v, -1)).to_numpy(dtype=np.int64)
        unseen = codes < 0
        if unseen.any():
            names = sorted({str(v) for v in values[unseen]})
            raise DataError(
                f"{source}: label(s) {names} never seen in the training data (known: "
                f"{[str(x) for x in self.labels]}) at row(s) {_rows(unseen)}"
            )
        return codes

    def decode(self, codes: np.ndarray) -> list[Any]:
        return [self.labels[int(c)] for c in codes]

    @property
    def names(self) -> list[str]:
        return [str(x) for x in self.labels]

    def to_json(self) -> list[Any]:
        return list(self.labels)

    @classmethod
    def from_json(cls, labels: list[Any]) -> LabelMap:
        return cls(tuple(labels))
