"""The prediction log writer and reader: the buffer, flushing by rows and by time, rotation, deterministic
sampling, texts only when asked, whole files only, and a reader that skips what it cannot read."""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from foldstack.config.monitoring import MonitoringConfig
from foldstack.errors import ConfigError
from foldstack.ops.monitoring import predlog
from foldstack.ops.monitoring import PredictionLog, is_sampled, read_prediction_log
from foldstack.ops.monitoring.logfiles import part_files

LABELS = ["negative", "neutral", "positive"]


def record(log: PredictionLog, n: int = 1, *, labels=LABELS, text: str = "a fine kettle", version: str = "v1"):
    ids = [uuid.uuid4().hex for _ in range(n)]
    proba = np.tile(np.linspace(1, 2, len(labels)) / np.linspace(1, 2, len(labels)).sum(), (n, 1))
    log.record(ids, [f"{text} {i}" for i in range(n)], [labels[-1]] * n, proba, labels=labels,
               model_version=version, bundle_id="b-1", latency_ms=3.5)
    return ids


def rows_on_disk(log_dir: Path) -> list[int]:
    return [pq.read_metadata(p).num_rows for p in part_files(log_dir)]


def wait_for(condition, seconds: float = 10.0) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < seconds, "timed out"
        time.sleep(0.02)
    return time.monotonic() - started


def test_the_buffer_is_written_when_it_holds_flush_rows(tmp_path):
    with PredictionLog(tmp_path, flush_rows=5, flush_seconds=3600) as log:
        first = record(log, 3)
        time.sleep(0.3)
        assert rows_on_disk(tmp_path) == []  # 3 < 5 rows and the hour is not up
        assert log.knows(first) == set(first)  # feedback can follow at once: the buffer is searched too
        record(log, 2)
        wait_for(lambda: rows_on_disk(tmp_path) == [5])
        later = record(log, 1)
        assert log.knows(later + first) == set(later + first)
    assert rows_on_disk(tmp_path) == [6]  # close() wrote the rest into the same part, rewritten whole


def test_the_buffer_is_written_flush_seconds_after_its_first_row(tmp_path):
    with PredictionLog(tmp_path, flush_rows=10_000, flush_seconds=0.5) as log:
        started = time.monotonic()
        record(log, 2)
        wait_for(lambda: rows_on_disk(tmp_path) == [2])
        assert time.monotonic() - started >= 0.45
        record(log, 1)
        wait_for(lambda: rows_on_disk(tmp_path) == [3])


def test_a_part_never_holds_more_than_rows_per_file(tmp_path):
    with PredictionLog(tmp_path, flush_rows=30, flush_seconds=3600, rows_per_file=100) as log:
        for _ in range(8):
            record(log, 30)
        record(log, 10)
    assert rows_on_disk(tmp_path) == [100, 100, 50]
    frame = read_prediction_log(tmp_path)
    assert len(frame) == 250 and frame["request_id"].is_unique
    assert frame["time"].is_monotonic_increasing


def test_one_large_flush_is_split_into_parts(tmp_path):
    with PredictionLog(tmp_path, flush_rows=1000, flush_seconds=3600, rows_per_file=100) as log:
        record(log, 250)
    assert rows_on_disk(tmp_path) == [100, 100, 50]


def test_sampling_is_decided_by_the_request_id_alone(tmp_path):
    ids = [hashlib.sha256(str(i).encode()).hexdigest()[:32] for i in range(20_000)]
    chosen = [rid for rid in ids if is_sampled(rid, 0.25)]
    assert chosen == [rid for rid in ids if is_sampled(rid, 0.25)]  # same ids, same answer
    assert abs(len(chosen) / len(ids) - 0.25) < 0.02
    assert all(is_sampled(rid, 1.0) for rid in ids[:100]) and not any(is_sampled(rid, 0.0) for rid in ids[:100])
    assert set(chosen) <= {rid for rid in ids if is_sampled(rid, 0.5)}  # a higher rate keeps every lower one's ids
    with PredictionLog(tmp_path, sample_rate=0.25, flush_rows=10_000) as log:
        batch = ids[:400]
        kept = log.record(batch, ["t"] * 400, ["a"] * 400, np.full((400, 2), 0.5), labels=["a", "b"],
                          model_version="v1", bundle_id="b", latency_ms=1.0)
    logged = read_prediction_log(tmp_path)["request_id"].tolist()
    assert kept == len(logged) and logged == [rid for rid in batch if is_sampled(rid, 0.25)]


def test_rows_hold_hash_length_words_prediction_and_probabilities_but_no_text_unless_asked(tmp_path):
    for store_texts in (False, True):
        directory = tmp_path / str(store_texts)
        with PredictionLog(directory, store_texts=store_texts, source="predict") as log:
            ids = record(log, 2, text="  the  kettle is\tgreat")
        frame = read_prediction_log(directory)
        assert frame["request_id"].tolist() == ids
        row = frame.iloc[1]
        text = "  the  kettle is\tgreat 1"
        assert row["text_sha256"] == hashlib.sha256(text.encode()).hexdigest()
        assert (row["text_chars"], row["text_words"]) == (len(text), 5)
        assert (row["predicted"], row["model_version"], row["bundle_id"], row["source"]) == \
            ("positive", "v1", "b-1", "predict")
        assert row["confidence"] == pytest.approx(max(row[f"proba_{n}"] for n in LABELS))
        assert sum(row[f"proba_{n}"] for n in LABELS) == pytest.approx(1.0) and row["latency_ms"] == 3.5
        assert str(frame["time"].dtype) == "datetime64[ns, UTC]"
        assert (frame["text"].tolist() == [f"  the  kettle is\tgreat {i}" for i in range(2)]) if store_texts \
            else frame["text"].isna().all()


def test_close_writes_the_rest_and_refuses_more(tmp_path):
    log = PredictionLog(tmp_path, flush_rows=10_000, flush_seconds=3600)
    record(log, 7)
    log.close()
    log.close()  # idempotent
    assert rows_on_disk(tmp_path) == [7]
    with pytest.raises(RuntimeError, match="closed"):
        record(log, 1)


def test_a_bundle_with_other_labels_gets_a_part_of_its_own(tmp_path):
    with PredictionLog(tmp_path, flush_rows=10_000) as log:
        record(log, 2)
        log.flush()
        record(log, 3, labels=["bad", "good"], version="v2")
    assert rows_on_disk(tmp_path) == [2, 3]
    frame = read_prediction_log(tmp_path)
    assert frame["model_version"].tolist() == ["v1"] * 2 + ["v2"] * 3
    assert frame["proba_good"].isna().sum() == 2 and frame["proba_neutral"].isna().sum() == 3


def test_a_log_directory_that_cannot_be_made_fails_at_the_start(tmp_path):
    blocker = tmp_path / "log"
    blocker.write_text("a file where the log directory should be")
    with pytest.raises(ConfigError, match="monitoring.log_dir: cannot create"):
        PredictionLog(blocker)


def test_a_failed_write_loses_the_batch_not_the_service(tmp_path, monkeypatch):
    def disk_full(table, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(predlog, "write_table_atomically", disk_full)
    log = PredictionLog(tmp_path, flush_rows=10_000)
    record(log, 2)
    assert log.flush() == 0 and log.dropped_rows == 2  # logged as an error, never raised
    monkeypatch.undo()
    record(log, 1)
    log.close()
    assert rows_on_disk(tmp_path) == [1]


def test_from_config_resolves_the_log_dir_and_honours_log_predictions(tmp_path):
    cfg = MonitoringConfig(log_dir="logs/mon", sample_rate=0.5, store_texts=True, flush_rows=7)
    log = PredictionLog.from_config(cfg, tmp_path, source="predict")
    assert log is not None and log.log_dir == tmp_path / "logs" / "mon"
    assert (log.sample_rate, log.store_texts, log.flush_rows, log.source) == (0.5, True, 7, "predict")
    assert PredictionLog.from_config(MonitoringConfig(log_predictions=False), tmp_path) is None


# ------------------------------------------------------------------------------------------ reader
def test_the_reader_skips_temporaries_strangers_and_unreadable_parts(tmp_path, caplog):
    with PredictionLog(tmp_path, flush_rows=10_000) as log:
        ids = record(log, 4)
    directory = tmp_path / "predictions"
    (directory / ".part-20990101T000000-1-000001.parquet.tmp-1-abcd").write_bytes(b"PAR1 half a file")
    (directory / "notes.txt").write_text("not a part")
    (directory / "part-20990101T000000-2-000001.parquet").write_bytes(b"not parquet at all")
    with caplog.at_level(logging.WARNING, logger="foldstack.ops.monitoring"):
        frame = read_prediction_log(tmp_path)
    assert frame["request_id"].tolist() == ids
    assert "skipping unreadable prediction log file" in caplog.text and "part-20990101T000000-2" in caplog.text


def test_last_gives_the_newest_rows_in_time_order_across_parts(tmp_path):
    everything = []
    with PredictionLog(tmp_path, flush_rows=10_000, rows_per_file=100) as log:
        for _ in range(5):
            everything += record(log, 60)
            log.flush()
    assert rows_on_disk(tmp_path) == [100, 100, 100]
    assert read_prediction_log(tmp_path, last=130)["request_id"].tolist() == everything[-130:]
    assert read_prediction_log(tmp_path, last=1000)["request_id"].tolist() == everything
    assert read_prediction_log(tmp_path)["request_id"].tolist() == everything


def test_no_log_reads_as_an_empty_frame_with_the_columns(tmp_path):
    frame = read_prediction_log(tmp_path / "nothing-here")
    assert frame.empty and {"request_id", "time", "predicted", "confidence", "source"} <= set(frame.columns)


def test_knows_finds_ids_in_parts_another_process_wrote(tmp_path):
    with PredictionLog(tmp_path, flush_rows=10_000) as first:
        old = record(first, 3)
    with PredictionLog(tmp_path, flush_rows=10_000) as second:
        new = record(second, 2)
        assert second.knows(old + new + ["0" * 32]) == set(old + new)
