"""The flow's fan-out totals the embedding counters of the fold tasks it trained, per base model, for the flow's
log and the run report; reused folds and kinds without counters add nothing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from foldstack.pipeline.identities import FoldTask
from tasks.fanout import BaseModelRuns
from tasks.fold import SKIPPED
from tasks.report import embedding_section


@dataclass
class _State:
    name: str = "Completed"

    def is_completed(self) -> bool:
        return True


@dataclass
class _Future:
    result_: dict[str, Any]
    state: _State

    def result(self) -> dict[str, Any]:
        return self.result_


def test_trained_folds_embedding_counters_are_totalled_per_model() -> None:
    runs = BaseModelRuns()
    counters = [{"texts_encoded": 900, "texts_from_cache": 100, "encode_seconds": 9.0},
                {"texts_encoded": 0, "texts_from_cache": 1000, "encode_seconds": 0.0}]
    for k, embedding in enumerate(counters):
        runs.record(FoldTask("minilm_lr", 0, k, f"m{k}"), _Future({"seconds": 10.0, "embedding": embedding}, _State()))
    runs.record(FoldTask("minilm_lr", 0, 2, "m2"), _Future({"seconds": 0.0}, _State(SKIPPED)))
    runs.record(FoldTask("tfidf_lr", 0, 0, "t0"), _Future({"seconds": 1.0}, _State()))
    assert list(runs.embedding) == ["minilm_lr"]
    assert runs.embedding["minilm_lr"].line() == "minilm_lr: 900 texts encoded in 9.0 s (100 texts/s), 1,100 from cache"
    assert embedding_section(runs.embedding)[-1] == "| minilm_lr | 900 | 9.0 | 100 | 1,100 |"
