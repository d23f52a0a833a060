"""Reading a user's data file into a clean, labelled table, and the snapshot every later stage reads.

tables (reading CSV/TSV/Parquet/JSONL files), labels (checking and normalising the text and label columns;
the label map) and snapshot (the train/holdout split and its hashes).
"""

from foldstack.core.data.labels import LabelMap, clean_frame, load_labelled, normalise_label, normalise_text
from foldstack.core.data.snapshot import Snapshot, build_snapshot
from foldstack.common.tables import FORMATS, detect_format, read_table

__all__ = [
    "FORMATS", "LabelMap", "Snapshot", "build_snapshot", "clean_frame", "detect_format", "load_labelled",
    "normalise_label", "normalise_text", "read_table",
]
