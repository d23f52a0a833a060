"""The first two stages: validate (the data gate, then the snapshot with its holdout) and folds."""

from __future__ import annotations

from typing import Any

from foldstack.common.faults import failpoint
from foldstack.common.files import atomic_directory
from foldstack.config import Config
from foldstack.core.folds import assign_folds
from foldstack.pipeline.layout import Layout, load_snapshot
from foldstack.pipeline.validation import run_gate


def validate(cfg: Config) -> dict[str, Any]:
    """Read and check the data (the Great Expectations gate), split off the holdout, write the snapshot."""
    # Before any work: a missing model directory would otherwise stop the run after the other base models
    # trained, and an artifacts directory that cannot be made with an OSError instead of naming its key.
    cfg.check_model_sources()
    cfg.check_writable_dirs("runtime.artifacts_dir", "runtime.cache_dir")
    snapshot, gate = run_gate(cfg)  # raises DataError, before anything is written, if a rule broke
    layout = Layout.of(cfg)
    with atomic_directory(layout.snapshot) as tmp:
        snapshot.save(tmp)
    return {**snapshot.summary(), "validation": gate.brief()}


def make_folds(cfg: Config) -> dict[str, Any]:
    snapshot = load_snapshot(cfg)
    assignment = assign_folds(snapshot.train["label"].to_numpy(), snapshot.train["group"].to_numpy(),
                              cfg.folds.k, cfg.folds.repeats, cfg.seed, snapshot.n_classes)
    with atomic_directory(Layout.of(cfg).folds) as tmp:
        assignment.save(tmp)
    failpoint("folds-written")
    return {"hash": assignment.hash, "k": assignment.k, "repeats": assignment.repeats,
            "n_rows": assignment.n_rows, "grouping": snapshot.grouping}
