"""Where the pipeline's boxes live on disk (`Layout`), and reading the two inputs every later stage needs.

A box is a directory written atomically by one stage (see docs/ARCHITECTURE.md); a stage that needs a box
that is not finished yet names the stage to run first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foldstack.common.files import is_complete
from foldstack.config import Config
from foldstack.core import crossfit
from foldstack.core.data import Snapshot
from foldstack.core.folds import FoldAssignment
from foldstack.errors import StageError

log = logging.getLogger("foldstack")

Reporter = Callable[[str, dict[str, Any]], None]


def log_report(event: str, info: dict[str, Any]) -> None:
    """The default `Reporter`: each event to the log."""
    log.info("%s %s", event, info)


@dataclass(frozen=True)
class Layout:
    """Where every box of the pipeline lives."""

    root: Path

    @classmethod
    def of(cls, cfg: Config) -> Layout:
        return cls(cfg.resolve_path(cfg.runtime.artifacts_dir))

    @property
    def snapshot(self) -> Path:
        return self.root / "snapshot"

    @property
    def folds(self) -> Path:
        return self.root / "folds"

    def base(self, name: str) -> Path:
        return self.root / "base" / name

    def fold_dir(self, name: str, repeat: int, fold: int) -> Path:
        return self.base(name) / crossfit.member_name(repeat, fold)

    @property
    def stack(self) -> Path:
        return self.root / "stack"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def bundle(self) -> Path:
        return self.root / "bundle"

    @property
    def student(self) -> Path:
        """The distill stage's box: the student's bundle, holdout predictions and metrics."""
        return self.root / "student"


def require(path: Path, stage: str) -> None:
    """Raise StageError naming `stage` unless `path` is a file or a finished box."""
    if not (path.exists() and (path.is_file() or is_complete(path))):
        raise StageError(f"{path} does not exist yet: run the {stage!r} stage first")


def load_snapshot(cfg: Config) -> Snapshot:
    layout = Layout.of(cfg)
    require(layout.snapshot, "validate")
    return Snapshot.load(layout.snapshot)


def load_folds(cfg: Config) -> FoldAssignment:
    layout = Layout.of(cfg)
    require(layout.folds, "folds")
    return FoldAssignment.load(layout.folds)
