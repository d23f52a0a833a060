"""Reading a user's data file (CSV, TSV, Parquet, JSONL) as a table, with errors that name the line.

Nothing is checked or normalised here beyond the file being readable: foldstack.core.data.labels checks the
columns, and the data gate reads the same table to report every broken row at once.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd

from foldstack.errors import DataError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet", ".pq": "parquet",
           ".jsonl": "jsonl", ".ndjson": "jsonl"}
MAX_EXAMPLES = 5  # rows or lines an error names before "and N more"


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
        more = len(others) - MAX_EXAMPLES
        also = f" (so do lines {', '.join(map(str, others[:MAX_EXAMPLES]))}{f' and {more} more' if more > 0 else ''})"
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
