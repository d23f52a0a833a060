"""Encode throughput: the embedding counters a fold task records (texts encoded, from the cache, encode seconds),
a rerun on a warm cache encoding nothing, and the per-model line in the run log, the run report and report.html."""

from __future__ import annotations

import io
import json
import logging

import pandas as pd
import pytest
from rich.console import Console

from foldstack.cli.progress import ProgressReporter, progress_display
from foldstack.config import load_config
from foldstack.pipeline.embedding_stats import EMBEDDING, EmbeddingTotals, recorded_totals, tally
from foldstack.pipeline.report import REPORT_HTML
from foldstack.pipeline.stages import Layout, plan_fold_tasks, run_pipeline
from tasks.report import embedding_section
from tests.conftest import write_params

EMBED = {"name": "tiny_embed", "kind": "embed_lr", "params": {"model": "tiny:0", "batch_size": 32}}
TFIDF = {"name": "tfidf_lr", "kind": "tfidf_lr", "params": {}}


def _records(cfg, model: str) -> list[dict]:
    layout = Layout.of(cfg)
    return [json.loads((layout.fold_dir(t.model, t.repeat, t.fold) / "task.json").read_text())
            for t in plan_fold_tasks(cfg, [model])]


def _unique_texts(cfg) -> int:
    snapshot = Layout.of(cfg).snapshot
    texts = pd.concat([pd.read_parquet(snapshot / f"{part}.parquet")["text"] for part in ("train", "holdout")])
    return texts.nunique()


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _run(cfg) -> list[str]:
    """run_pipeline with the CLI's progress reporter; returns what it logged about embedding."""
    log = logging.getLogger("foldstack.test.embedding")
    log.setLevel(logging.INFO)
    handler = _Lines()
    log.addHandler(handler)
    try:
        with progress_display(Console(file=io.StringIO()), transient=True) as progress:
            run_pipeline(cfg, report=ProgressReporter(progress, log))
    finally:
        log.removeHandler(handler)
    return [line for line in handler.lines if line.startswith("embedding")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demo_csv):
    """A cold run (empty cache), then a rerun whose embed_lr folds retrain (new C) on the warm cache."""
    directory = tmp_path_factory.mktemp("embedding")
    cold_cfg = load_config(write_params(directory, demo_csv, base_models=[EMBED, TFIDF]))
    cold_lines = _run(cold_cfg)
    cold = (cold_cfg, _records(cold_cfg, "tiny_embed"), _records(cold_cfg, "tfidf_lr"), cold_lines,
            (Layout.of(cold_cfg).eval / REPORT_HTML).read_text(encoding="utf-8"))
    warm_embed = {**EMBED, "params": {**EMBED["params"], "C": 2.0}}
    warm_cfg = load_config(write_params(directory, demo_csv, base_models=[warm_embed, TFIDF]))
    warm_lines = _run(warm_cfg)
    return cold, (warm_cfg, _records(warm_cfg, "tiny_embed"), warm_lines)


def test_cold_fold_tasks_record_their_embedding_counters(runs):
    (cfg, embed, tfidf, _, _), _ = runs
    per_fold = len(pd.read_parquet(Layout.of(cfg).snapshot / "train.parquet")) + \
        len(pd.read_parquet(Layout.of(cfg).snapshot / "holdout.parquet"))
    counters = [r[EMBEDDING] for r in embed]
    assert len(counters) == 3
    # Each fold embeds its fit part, its validation part and the holdout: every text once, cached or not.
    assert all(c["texts_encoded"] + c["texts_from_cache"] == per_fold for c in counters)
    assert sum(c["texts_encoded"] for c in counters) == _unique_texts(cfg)  # once per (model, text)
    assert counters[0]["texts_encoded"] > 0 and counters[0]["encode_seconds"] > 0
    assert all(EMBEDDING not in r for r in tfidf)  # a kind without counters records nothing new


def test_warm_rerun_encodes_nothing(runs):
    (cold_cfg, cold_embed, _, _, _), (cfg, embed, lines) = runs
    assert {r["identity"] for r in embed}.isdisjoint(r["identity"] for r in cold_embed)  # retrained: new C
    per_fold = sum(cold_embed[0][EMBEDDING][k] for k in ("texts_encoded", "texts_from_cache"))
    for record in embed:
        assert record[EMBEDDING] == {"texts_encoded": 0, "texts_from_cache": per_fold, "encode_seconds": 0.0}
    assert lines == [f"embedding tiny_embed: 0 texts encoded, {3 * per_fold:,} from cache"]
    assert recorded_totals(cfg)["tiny_embed"].texts_encoded == 0


def test_run_log_has_the_throughput_line(runs):
    (cfg, embed, _, lines, _), _ = runs
    encoded = sum(r[EMBEDDING]["texts_encoded"] for r in embed)
    cached = sum(r[EMBEDDING]["texts_from_cache"] for r in embed)
    assert len(lines) == 1, lines  # one per base model that embeds; none for tfidf_lr
    assert lines[0].startswith(f"embedding tiny_embed: {encoded:,} texts encoded in ")
    assert " texts/s), " in lines[0] and lines[0].endswith(f", {cached:,} from cache")


def test_html_report_has_an_embedding_table(runs):
    (cfg, embed, _, _, html), _ = runs
    from tests.unit.pipeline.test_report import parse

    rows = parse(html).table("Embedding")
    assert rows[0] == ["model", "texts encoded", "encode seconds", "texts/s", "from cache"]
    assert [r[0] for r in rows[1:]] == ["tiny_embed"]
    assert rows[1][1] == f"{sum(r[EMBEDDING]['texts_encoded'] for r in embed):,}"


def test_run_report_markdown_and_line_format():
    totals = tally([("minilm_lr", {"texts_encoded": 10_662, "texts_from_cache": 10_000, "encode_seconds": 96.1}),
                    ("minilm_lr", {"texts_encoded": 0, "texts_from_cache": 32_648, "encode_seconds": 0.0}),
                    ("tfidf_lr", None)])
    assert list(totals) == ["minilm_lr"]
    assert totals["minilm_lr"].line() == "minilm_lr: 10,662 texts encoded in 96.1 s (111 texts/s), 42,648 from cache"
    lines = embedding_section(totals)
    assert "## Embedding" in lines
    assert lines[-1] == "| minilm_lr | 10,662 | 96.1 | 111 | 42,648 |"
    assert embedding_section({}) == []
    assert EmbeddingTotals("m").cells() == ["m", "0", "0.00", "n/a", "0"]
