"""A phrase-level data set built from a sentence-level one: the shape that breaks fold grouping by exact text.

Phrase-level sentiment corpora label whole sentences and many of their sub-phrases. Here each training
sentence comes with several random contiguous word spans of itself, each labelled like the sentence, while
the holdout holds whole sentences that no training row came from. A fold assignment that keeps only exact
copies together puts a phrase and its sentence in different folds, so memorising models look far better out
of fold than on the holdout; containment grouping keeps them together. The leakage tests and
`bench/leakage.py` use it on `../shared/data/rt_polarity`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from foldstack.core.data import read_table
from foldstack.errors import DataError


def sub_spans(words: list[str], n_spans: int, rng: np.random.Generator, min_share: float = 0.6,
              max_share: float = 0.95, min_words: int = 3) -> list[str]:
    """Up to `n_spans` distinct contiguous spans of `words`, each `min_share`..`max_share` of its length."""
    if len(words) < min_words + 1:
        return []
    spans: set[str] = set()
    for _ in range(4 * n_spans):  # distinct spans are few in short sentences: give up after a few draws
        if len(spans) == n_spans:
            break
        length = int(rng.integers(max(min_words, int(np.ceil(min_share * len(words)))),
                                  max(min_words, int(max_share * len(words))) + 1))
        length = min(length, len(words) - 1)
        start = int(rng.integers(0, len(words) - length + 1))
        spans.add(" ".join(words[start:start + length]))
    return sorted(spans)


def phrase_dataset(sentences: pd.DataFrame, *, n_train: int, n_holdout: int, spans_per_sentence: int = 3,
                   seed: int = 0, text_column: str = "text",
                   label_column: str = "label") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training rows: sentences and their sub-spans, holdout rows: other whole sentences), shuffled."""
    for column in (text_column, label_column):
        if column not in sentences.columns:
            raise DataError(f"phrase data: the source has no column {column!r} (columns: {list(sentences.columns)})")
    unique = sentences.drop_duplicates(text_column).reset_index(drop=True)
    if n_train + n_holdout > len(unique):
        raise DataError(f"phrase data: {n_train} training + {n_holdout} holdout sentences asked for, but the source "
                        f"has {len(unique)} distinct sentences")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(unique))
    train_sentences = unique.iloc[order[:n_train]]
    holdout = unique.iloc[order[n_train:n_train + n_holdout]]
    rows = []
    for text, label in zip(train_sentences[text_column], train_sentences[label_column], strict=True):
        rows.append((text, label))
        rows += [(span, label) for span in sub_spans(str(text).split(), spans_per_sentence, rng)]
    train = pd.DataFrame(rows, columns=[text_column, label_column])
    train = train.iloc[rng.permutation(len(train))].reset_index(drop=True)
    return train, holdout[[text_column, label_column]].reset_index(drop=True)


def write_phrase_dataset(source: Path, out_dir: Path, **options: Any) -> dict[str, Any]:
    """Write `train.csv` and `holdout.csv` under `out_dir` (params: data.path and data.test_path)."""
    train, holdout = phrase_dataset(read_table(Path(source)), **options)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train.to_csv(out_dir / "train.csv", index=False)
    holdout.to_csv(out_dir / "holdout.csv", index=False)
    return {"train": str(out_dir / "train.csv"), "holdout": str(out_dir / "holdout.csv"),
            "train_rows": len(train), "holdout_rows": len(holdout)}
