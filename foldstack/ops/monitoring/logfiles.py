"""The prediction log on disk: file names, the row schema, reading it back and finding request ids in it.

Under `<log_dir>/predictions/`: `part-<UTC yyyymmddTHHMMSS>-<pid>-<seq>.parquet`, each written whole through a
temporary (`.part-....parquet.tmp-<pid>-<hex>`, which readers never look at) and `os.replace`, so a reader
sees a part as it was before or after a write, never half of one. One row per predicted text (SCHEMA, plus one
`proba_<label>` float64 column per label of the bundle, between `confidence` and `latency_ms`).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger("foldstack.ops.monitoring")

PREDICTIONS = "predictions"
PART_NAME = re.compile(r"^part-\d{8}T\d{6}-\d+-\d+\.parquet$")
TIME = pa.timestamp("ns", tz="UTC")
LEADING = [("request_id", pa.string()), ("time", TIME), ("model_version", pa.string()), ("bundle_id", pa.string()),
           ("text_sha256", pa.string()), ("text_chars", pa.int32()), ("text_words", pa.int32()),
           ("text", pa.string()), ("predicted", pa.string()), ("confidence", pa.float64())]
TRAILING = [("latency_ms", pa.float64()), ("source", pa.string())]
PROBA_PREFIX = "proba_"
_EPOCH = pd.Timestamp(0, tz="UTC")


def row_schema(label_names: Iterable[str]) -> pa.Schema:
    """The schema of a part written for a bundle with these labels."""
    probas = [(f"{PROBA_PREFIX}{name}", pa.float64()) for name in label_names]
    return pa.schema(LEADING + probas + TRAILING)


def predictions_dir(log_dir: Path) -> Path:
    return Path(log_dir) / PREDICTIONS


def part_files(log_dir: Path) -> list[Path]:
    """The finished parts, oldest name first; temporaries (dot names) and strangers are ignored."""
    directory = predictions_dir(log_dir)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if PART_NAME.match(p.name))


def write_table_atomically(table: pa.Table, path: Path) -> None:
    """`table` as the Parquet file `path`, via a temporary in the same directory: never half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_part(path: Path, columns: list[str] | None = None) -> pa.Table | None:
    try:
        return pq.read_table(path, columns=columns)
    except FileNotFoundError:
        return None  # gone between listing and reading
    except Exception as exc:  # a foreign or damaged file must not take the whole log down
        log.warning("skipping unreadable prediction log file %s: %s", path, " ".join(str(exc).split()))
        return None


def _newest_time(path: Path) -> pd.Timestamp | None:
    """The largest `time` in a part, from its footer's statistics (None: unknown, so read it)."""
    try:
        meta = pq.read_metadata(path)
        index = meta.schema.to_arrow_schema().get_field_index("time")
        values = [meta.row_group(i).column(index).statistics for i in range(meta.num_row_groups)]
        if index < 0 or not values or any(s is None or not s.has_min_max for s in values):
            return None
        return max(pd.Timestamp(s.max) for s in values)
    except Exception:
        return None


def _enough(frames: list[pd.DataFrame], last: int) -> pd.Timestamp | None:
    """The time of the `last`-th newest row read so far (None while fewer rows were read)."""
    times = pd.concat([f["time"] for f in frames]) if frames else pd.Series([], dtype="datetime64[ns, UTC]")
    return times.nlargest(last).min() if len(times) >= last else None


def read_prediction_log(log_dir: Path, last: int | None = None) -> pd.DataFrame:
    """The logged predictions in time order (the newest `last` rows when given).

    Parts of bundles with other label sets have other `proba_*` columns: the union is returned, NaN where a
    part has no such column. An unreadable file is skipped with a warning; temporaries are never read.
    """
    files = part_files(log_dir)
    if last is not None:
        # Newest first by their footers' largest time (parts without statistics before all: always read);
        # stop once no remaining part can hold a row newer than the newest `last` read so far.
        stamps = {p: _newest_time(p) for p in files}
        files = sorted(files, key=lambda p: (stamps[p] is None, stamps[p] or _EPOCH), reverse=True)
    frames: dict[Path, pd.DataFrame] = {}
    for path in files:
        if last is not None and frames:
            cutoff = _enough(list(frames.values()), last)
            if cutoff is not None and stamps[path] is not None and stamps[path] < cutoff:
                break
        table = _read_part(path)
        if table is not None and table.num_rows:
            frames[path] = table.to_pandas()
    if not frames:
        return row_schema([]).empty_table().to_pandas()
    # Parts in name order, then a stable sort on time: rows of one request (one time) keep their order.
    frame = pd.concat([frames[p] for p in sorted(frames)], ignore_index=True, sort=False)
    frame = _ordered_columns(frame).sort_values("time", kind="stable").reset_index(drop=True)
    return frame if last is None else frame.tail(last).reset_index(drop=True)


def _ordered_columns(frame: pd.DataFrame) -> pd.DataFrame:
    probas = [c for c in frame.columns if c.startswith(PROBA_PREFIX)]
    lead, trail = [n for n, _ in LEADING], [n for n, _ in TRAILING]
    rest = [c for c in frame.columns if c not in lead + trail + probas]
    return frame[lead + probas + trail + rest]


class IdIndex:
    """Which request ids the finished parts hold; a part's ids are cached by (name, size, mtime) (parts are
    replaced whole, so a changed part gets a new key), the newest `capacity` parts' ids at most."""

    def __init__(self, log_dir: Path, capacity: int = 32):
        self.log_dir = Path(log_dir)
        self.capacity = capacity
        self._cache: OrderedDict[tuple[str, int, int], frozenset[str]] = OrderedDict()
        self._lock = threading.Lock()

    def find(self, ids: Iterable[str], skip: Path | None = None) -> set[str]:
        """The ids of `ids` found in some part (newest parts first; `skip`: a part the caller knows)."""
        wanted, found = set(ids), set()
        for path in reversed(part_files(self.log_dir)):
            if not wanted - found:
                break
            if skip is not None and path == skip:
                continue
            found |= wanted & self._ids(path)
        return found

    def _ids(self, path: Path) -> frozenset[str]:
        try:
            stat = path.stat()
        except FileNotFoundError:
            return frozenset()
        key = (path.name, stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        table = _read_part(path, columns=["request_id"])
        ids = frozenset(table.column("request_id").to_pylist()) if table is not None else frozenset()
        with self._lock:
            self._cache[key] = ids
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        return ids
