"""Reading a user's data file into a clean, labelled table, and the snapshot every later stage reads.

Normalisation is minimal and explicit: Unicode NFC, surrounding whitespace stripped, optional lower-casing.
Rows are numbered from 1 in the order of the file (the header line is not a row), and every error names the
file, the column and the first offending rows.
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from foldstack.config import Config, DataConfig
from foldstack.errors import DataError
from foldstack.common.files import sha256_file, sha256_json
from foldstack.core.grouping import group_texts

FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet", ".pq": "parquet",
           ".jsonl": "jsonl", ".ndjson": "jsonl"}
_MAX_EXAMPLES = 5
log = logging.getLogger("foldstack")


def detect_format(path: Path, declared: str = "auto") -> str:
    if declared != "auto":
        return declared
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"{path}: cannot tell the format from the extension {path.suffix!r}; "
            f"set data.format to one of csv, tsv, parquet, jsonl"
        )
    return fmt


def _check_utf8(path: Path) -> None:
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path}: not valid UTF-8 at byte {exc.start} (line {line}): {raw[exc.start:exc.start + 4]!r}; "
            f"re-save the file as UTF-8"
        ) from None


def read_table(path: Path, fmt: str = "auto") -> pd.DataFrame:
    """Read a CSV/TSV/Parquet/JSONL file as strings-or-numbers, with clear errors."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: data file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a data file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    fmt = detect_format(path, fmt)
    try:
        if fmt in ("csv", "tsv", "jsonl"):
            _check_utf8(path)
        if fmt == "csv":
            df = pd.read_csv(path, dtype=object, keep_default_na=False, na_values=[""], encoding="utf-8")
        elif fmt == "tsv":
            df = pd.read_csv(path, sep="\t", dtype=object, keep_default_na=False, na_values=[""],
                             encoding="utf-8", quoting=3)
        elif fmt == "jsonl":
            df = _read_jsonl(path)
        else:
            df = pd.read_parquet(path)
    except DataError:
        raise
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file has no header and no rows") from None
    except pd.errors.ParserError as exc:
        problem = _extra_fields(path, fmt) or " ".join(str(exc).split())
        raise DataError(f"{path}: cannot be read as {fmt}: {problem}") from None
    except (ValueError, OSError) as exc:
        raise DataError(f"{path}: cannot be read as {fmt}: {exc}") from None
    if fmt in ("csv", "tsv") and not isinstance(df.index, pd.RangeIndex):
        # The first data rows have more fields than the header: pandas took the first column as the index
        # and shifted the others one to the left, without a word.
        problem = _extra_fields(path, fmt) or "the first data rows have more fields than the header"
        raise DataError(f"{path}: cannot be read as {fmt}: {problem}")
    if len(df) == 0:
        raise DataError(f"{path}: the file has a header but no data rows" if fmt in ("csv", "tsv")
                        else f"{path}: the file has no rows")
    return df


def _extra_fields(path: Path, fmt: str) -> str | None:
    """The lines of a CSV/TSV file with more fields than its header, as a sentence; None if there are none.

    Read again with the csv module, and only once pandas has stumbled: pandas counts records, not lines, in
    its errors, and says nothing when it takes the first column for the index.
    """
    import csv

    dialect = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if fmt == "tsv" else {"delimiter": ","}
    n_header, extra, start = None, [], 1
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle, **dialect)
            for record in reader:
                if n_header is None:
                    n_header = len(record)
                elif len(record) > n_header:
                    extra.append((start, len(record)))
                start = reader.line_num + 1  # a quoted text may span lines: the next record starts after them
    except csv.Error:  # e.g. a field over the csv module's size limit: pandas' own message has to do
        return None
    if not extra:
        return None
    (line, n_fields), others = extra[0], [line for line, _ in extra[1:]]
    also = ""
    if len(others) == 1:
        also = f" (so does line {others[0]})"
    elif others:
        more = len(others) - _MAX_EXAMPLES
        also = f" (so do lines {', '.join(map(str, others[:_MAX_EXAMPLES]))}{f' and {more} more' if more > 0 else ''})"
    advice = ("a TSV text cannot contain a tab: remove the extra tabs, or save the file as CSV with quoted texts"
              if fmt == "tsv" else 'put a text that contains a comma in double quotes ("like, this"), '
                                   "or remove the extra fields")
    return f"line {line} has {n_fields} fields, the header has {n_header}{also}; {advice}"


def _read_jsonl(path: Path) -> pd.DataFrame:
    """One JSON object per line. pandas' reader gives a character position for a broken line, accepts some
    invalid JSON, and fails obscurely on a line that is not an object: each is named by its line here."""
    records = []
    with path.open(encoding="utf-8-sig") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line.rstrip("\r\n"))  # so that the error's column is within this line
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: line {number} is not valid JSON ({exc.msg} at column {exc.colno}); "
                                f"each line must be one JSON object, such as {{\"text\": \"...\", \"label\": \"...\"}}"
                                ) from None
            if not isinstance(record, dict):
                raise DataError(f"{path}: line {number} is a JSON {type(record).__name__}, not an object; each line "
                                f"must be one JSON object, such as {{\"text\": \"...\", \"label\": \"...\"}}")
            records.append(record)
    # dtype=object keeps each value as the file gives it (an integer text stays "7", not "7.0", beside a null).
    return pd.DataFrame(records, dtype=object)


def normalise_text(text: str, lowercase: bool = False) -> str:
    text = unicodedata.normalize("NFC", text).strip()
    return text.lower() if lowercase else text


def _rows(mask: np.ndarray) -> str:
    idx = np.flatnonzero(mask)[:_MAX_EXAMPLES] + 1
    more = int(mask.sum()) - len(idx)
    return ", ".join(map(str, idx)) + (f" (and {more} more)" if more > 0 else "")


def _normalise_label(value: Any) -> Any:
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
    labels = labels.map(_normalise_label)
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


@dataclass
class Snapshot:
    """The validated data: training rows, holdout rows, label map and content hashes."""

    train: pd.DataFrame  # columns row, text, label (int code), group
    holdout: pd.DataFrame  # columns row, text, label (int code)
    label_map: LabelMap
    source_sha256: str
    grouping: dict[str, Any] = field(default_factory=dict)  # statistics of the training rows' overlap groups
    data_hash: str = field(init=False)

    def __post_init__(self) -> None:
        self.data_hash = sha256_json({
            "labels": self.label_map.to_json(),
            "train": [self.train["text"].tolist(), self.train["label"].tolist()],
            "holdout": [self.holdout["text"].tolist(), self.holdout["label"].tolist()],
        })[:16]

    @property
    def n_classes(self) -> int:
        return len(self.label_map.labels)

    def summary(self) -> dict[str, Any]:
        def counts(df: pd.DataFrame) -> dict[str, int]:
            vc = df["label"].value_counts()
            return {self.label_map.names[c]: int(vc.get(c, 0)) for c in range(self.n_classes)}

        return {
            "data_hash": self.data_hash,
            "source_sha256": self.source_sha256,
            "labels": self.label_map.to_json(),
            "n_train": len(self.train),
            "n_holdout": len(self.holdout),
            "train_class_counts": counts(self.train),
            "holdout_class_counts": counts(self.holdout),
            "mean_text_chars": float(self.train["text"].str.len().mean()),
            "grouping": self.grouping,
        }

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.train.to_parquet(directory / "train.parquet", index=False)
        self.holdout.to_parquet(directory / "holdout.parquet", index=False)
        (directory / "snapshot.json").write_text(json.dumps(self.summary(), indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> Snapshot:
        meta = json.loads((directory / "snapshot.json").read_text())
        snap = cls(
            train=pd.read_parquet(directory / "train.parquet"),
            holdout=pd.read_parquet(directory / "holdout.parquet"),
            label_map=LabelMap.from_json(meta["labels"]),
            source_sha256=meta["source_sha256"],
            grouping=meta.get("grouping", {}),
        )
        if snap.data_hash != meta["data_hash"]:
            raise DataError(f"{directory}: snapshot files do not match the hash in snapshot.json; rerun validate")
        return snap


def _stratified_group_holdout(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of holdout rows: whole overlap groups, stratified by each group's label."""
    from sklearn.model_selection import train_test_split

    frame = pd.DataFrame({"label": labels, "group": groups})
    group_label = frame.groupby("group")["label"].agg(lambda s: s.value_counts().index[0])
    n_per_class = group_label.value_counts()
    stratify = group_label.to_numpy() if n_per_class.min() >= 2 else None
    _, test_groups = train_test_split(
        group_label.index.to_numpy(), test_size=fraction, random_state=seed, stratify=stratify
    )
    return np.isin(groups, test_groups)


def build_snapshot(cfg: Config) -> Snapshot:
    """Read, check and split the data named in params (the pure part of the validate stage)."""
    dcfg = cfg.data
    path = cfg.resolve_path(dcfg.path)
    frame = load_labelled(path, dcfg)
    if dcfg.max_rows is not None and len(frame) > dcfg.max_rows:
        frame = frame.sample(n=dcfg.max_rows, random_state=cfg.seed).sort_values("row").reset_index(drop=True)
    source_sha = sha256_file(path)

    grouping = cfg.folds.grouping
    if dcfg.test_path:
        test_path = cfg.resolve_path(dcfg.test_path)
        test = load_labelled(test_path, dcfg)
        source_sha = sha256_json([source_sha, sha256_file(test_path)])
        train = frame
        train_groups = group_texts(train["text"], grouping)
    else:
        label_map = LabelMap.from_values(frame["label"])
        if len(label_map.labels) < 2:
            raise DataError(f"{path}: column {dcfg.label_column!r} has a single class {label_map.names}; "
                            f"a classifier needs at least two")
        all_groups = group_texts(frame["text"], grouping)
        mask = _stratified_group_holdout(label_map.encode(frame["label"], str(path)), all_groups.groups,
                                         cfg.split.holdout_fraction, cfg.seed)
        train, test = frame[~mask].reset_index(drop=True), frame[mask].reset_index(drop=True)
        _check_split_kept_every_class(frame, mask, all_groups.groups, label_map, path, dcfg.label_column)
        # The training rows' groups are the full file's, renumbered by first appearance.
        all_groups.groups = pd.factorize(all_groups.groups[~mask])[0].astype(np.int64)
        train_groups = all_groups

    label_map = LabelMap.from_values(train["label"])
    if len(label_map.labels) < 2:
        raise DataError(f"{path}: the training data has a single class {label_map.names}; "
                        f"a classifier needs at least two")
    train = train.assign(label=label_map.encode(train["label"], str(path)))
    test = test.assign(label=label_map.encode(test["label"], str(cfg.resolve_path(dcfg.test_path or dcfg.path))))

    counts = np.bincount(train["label"].to_numpy(), minlength=len(label_map.labels))
    small = [(label_map.names[c], int(n)) for c, n in enumerate(counts) if n < cfg.folds.k]
    if small:
        desc = ", ".join(f"{name!r} has {n}" for name, n in small)
        raise DataError(
            f"{path}: too few training rows for folds.k={cfg.folds.k}: {desc} (each class needs at least k rows); "
            f"lower folds.k or add data"
        )
    train = train.assign(group=train_groups.groups)
    stats = train_groups.stats(cfg.folds.k)
    log.info("overlap groups of %d training rows: %d groups, %s links, in %s", len(train), stats["n_groups"],
             stats["links"], ", ".join(f"{kind} {s:.2f}s" for kind, s in train_groups.seconds.items()))
    if "warning" in stats:
        log.warning("%s: %s", path, stats["warning"])
    return Snapshot(train=train, holdout=test, label_map=label_map, source_sha256=source_sha, grouping=stats)


def _check_split_kept_every_class(frame: pd.DataFrame, mask: np.ndarray, groups: np.ndarray, label_map: LabelMap,
                                  path: Path, label_column: str) -> None:
    """A class whose rows all went to the holdout (its overlap groups are few) gets its own message."""
    in_train = set(frame.loc[~mask, "label"])
    for label in label_map.labels:
        if label not in in_train:
            rows = (frame["label"] == label).to_numpy()
            n_groups = len(np.unique(groups[rows]))
            raise DataError(
                f"{path}: every row of class {str(label)!r} in column {label_column!r} ({int(rows.sum())} rows in "
                f"{n_groups} overlap group(s)) went to the holdout, since groups are kept whole; add rows of that "
                f"class, lower split.holdout_fraction, or relax folds.grouping")
