"""The fold tasks: one per (base model, repeat, fold), each with the identity that decides whether a rerun
must train it again (`foldstack.core.crossfit.fold_identity`)."""

from __future__ import annotations

from dataclasses import dataclass

from foldstack.common.files import is_complete, read_json
from foldstack.config import Config
from foldstack.core import crossfit
from foldstack.core.crossfit import FULL_FIT
from foldstack.pipeline.layout import Layout, load_folds


@dataclass(frozen=True)
class FoldTask:
    model: str
    repeat: int
    fold: int
    identity: str

    @property
    def label(self) -> str:
        return crossfit.unit_label(self.model, self.repeat, self.fold)


def fold_unit(cfg: Config, model: str, repeat: int, fold: int, folds_hash: str) -> crossfit.FoldUnit:
    return crossfit.FoldUnit.of(cfg.base_model(model), repeat, fold, seed=cfg.seed, folds_hash=folds_hash)


def fold_identity(cfg: Config, model: str, repeat: int, fold: int, data_hash: str, folds_hash: str) -> str:
    return crossfit.fold_identity(fold_unit(cfg, model, repeat, fold, folds_hash), data_hash, folds_hash)


def plan_fold_tasks(cfg: Config, models: list[str] | None = None) -> list[FoldTask]:
    """Every (model, repeat, fold) task with its identity, in a stable order."""
    snapshot_meta = read_json(Layout.of(cfg).snapshot / "snapshot.json")
    folds = load_folds(cfg)
    names = models or [m.name for m in cfg.base_models]
    pairs = folds.tasks() + ([(0, FULL_FIT)] if cfg.runtime.refit_full else [])
    return [FoldTask(name, r, f, fold_identity(cfg, name, r, f, snapshot_meta["data_hash"], folds.hash))
            for name in names for r, f in pairs]


def fold_task_done(cfg: Config, task: FoldTask) -> bool:
    directory = Layout.of(cfg).fold_dir(task.model, task.repeat, task.fold)
    if not is_complete(directory):
        return False
    try:
        return read_json(directory / "task.json").get("identity") == task.identity
    except (OSError, ValueError):
        return False
