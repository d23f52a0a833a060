"""What each base model's embedding pass cost: the counters a fold task records in its task.json (texts encoded,
texts served by the embedding cache, seconds in the encoder's forward passes), totalled per base model for the
run log, the Prefect run report and eval/report.html, e.g.

    minilm_lr: 10,662 texts encoded in 96.1 s (111 texts/s), 42,648 from cache

Only kinds that embed texts with a frozen encoder keep such counters (`embed_lr`: n_embedded_, n_from_cache_,
embed_seconds_); the others record nothing here. These are results, never part of a fold task's identity.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from foldstack.common.files import read_json
from foldstack.config import Config
from foldstack.pipeline.identities import fold_task_done, plan_fold_tasks
from foldstack.pipeline.layout import Layout

EMBEDDING = "embedding"  # the key of the counters in task.json and in a fold task's result
COLUMNS = ("model", "texts encoded", "encode seconds", "texts/s", "from cache")


def embedding_counters(model: object) -> dict[str, Any] | None:
    """A fitted base model's embedding counters, or None for a kind that keeps none."""
    encoded = getattr(model, "n_embedded_", None)
    if encoded is None:
        return None
    return {"texts_encoded": int(encoded), "texts_from_cache": int(getattr(model, "n_from_cache_", 0)),
            "encode_seconds": round(float(getattr(model, "embed_seconds_", 0.0)), 4)}


@dataclass
class EmbeddingTotals:
    """One base model's embedding counters summed over its fold tasks."""

    model: str
    tasks: int = 0
    texts_encoded: int = 0
    texts_from_cache: int = 0
    encode_seconds: float = 0.0

    def add(self, counters: Mapping[str, Any]) -> None:
        self.tasks += 1
        self.texts_encoded += int(counters.get("texts_encoded", 0))
        self.texts_from_cache += int(counters.get("texts_from_cache", 0))
        self.encode_seconds += float(counters.get("encode_seconds", 0.0))

    @property
    def texts_per_second(self) -> float | None:
        """Encode throughput; None when nothing was encoded (every text came from the cache)."""
        if self.texts_encoded == 0 or self.encode_seconds <= 0:
            return None
        return self.texts_encoded / self.encode_seconds

    def line(self) -> str:
        """`<model>: N texts encoded in S s (R texts/s), M from cache`."""
        rate = self.texts_per_second
        encoded = f"{self.texts_encoded:,} texts encoded"
        if rate is not None:
            encoded += f" in {format_seconds(self.encode_seconds)} s ({rate:,.0f} texts/s)"
        return f"{self.model}: {encoded}, {self.texts_from_cache:,} from cache"

    def cells(self) -> list[str]:
        """The report tables' row, in COLUMNS order, formatted (texts/s n/a when nothing was encoded)."""
        rate = self.texts_per_second
        return [self.model, f"{self.texts_encoded:,}", format_seconds(self.encode_seconds),
                "n/a" if rate is None else f"{rate:,.0f}", f"{self.texts_from_cache:,}"]


def format_seconds(value: float) -> str:
    """Seconds to one decimal, two below a second (a tiny model encodes in a fraction of one)."""
    return f"{value:.1f}" if value >= 1 else f"{value:.2f}"


def tally(records: Iterable[tuple[str, Mapping[str, Any] | None]]) -> dict[str, EmbeddingTotals]:
    """Per base model, in order of first appearance, the totals of (model, counters) pairs; a pair whose
    counters are None (a kind without them, a reused fold) adds nothing."""
    totals: dict[str, EmbeddingTotals] = {}
    for model, counters in records:
        if counters:
            totals.setdefault(model, EmbeddingTotals(model)).add(counters)
    return totals


def recorded_totals(cfg: Config) -> dict[str, EmbeddingTotals]:
    """The totals over the fold tasks of `cfg` finished on disk with their current identity (whichever run
    trained them), from their task.json, in params order."""
    layout = Layout.of(cfg)
    records = []
    for task in plan_fold_tasks(cfg):
        if fold_task_done(cfg, task):
            record = read_json(layout.fold_dir(task.model, task.repeat, task.fold) / "task.json")
            records.append((task.model, record.get(EMBEDDING)))
    return tally(records)
