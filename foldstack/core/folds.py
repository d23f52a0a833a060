"""One stratified, group-aware fold assignment shared by every base model.

Overlapping texts (exact copies, contained texts, near-duplicates: see `foldstack.core.grouping`) share a group,
and a group never straddles the training and validation parts of a fold, so a memorising model cannot score
its own copies out of fold.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from foldstack.errors import DataError
from foldstack.common.files import read_json, sha256_json


@dataclass(frozen=True)
class FoldAssignment:
    """fold[r, i] = the fold in which training row i is predicted out of fold, for repeat r."""

    fold: np.ndarray  # (repeats, n_rows) int
    group: np.ndarray  # (n_rows,) int
    k: int

    @property
    def repeats(self) -> int:
        return int(self.fold.shape[0])

    @property
    def n_rows(self) -> int:
        return int(self.fold.shape[1])

    @property
    def hash(self) -> str:
        return sha256_json({"k": self.k, "fold": self.fold.tolist(), "group": self.group.tolist()})[:16]

    def split(self, repeat: int, fold: int) -> tuple[np.ndarray, np.ndarray]:
        """(training row indices, validation row indices) of one fold."""
        in_fold = self.fold[repeat] == fold
        return np.flatnonzero(~in_fold), np.flatnonzero(in_fold)

    def tasks(self) -> list[tuple[int, int]]:
        return [(r, f) for r in range(self.repeats) for f in range(self.k)]

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        frame = pd.DataFrame({
            "repeat": np.repeat(np.arange(self.repeats), self.n_rows),
            "row_index": np.tile(np.arange(self.n_rows), self.repeats),
            "fold": self.fold.reshape(-1),
            "group": np.tile(self.group, self.repeats),
        })
        frame.to_parquet(directory / "folds.parquet", index=False)
        # Not write_json, which sorts the keys: folds.json keeps the order (and so the DVC hash) it always had.
        (directory / "folds.json").write_text(json.dumps(
            {"hash": self.hash, "k": self.k, "repeats": self.repeats, "n_rows": self.n_rows}, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> FoldAssignment:
        meta = read_json(directory / "folds.json")
        frame = pd.read_parquet(directory / "folds.parquet").sort_values(["repeat", "row_index"])
        fold = frame["fold"].to_numpy().reshape(meta["repeats"], meta["n_rows"])
        group = frame.loc[frame["repeat"] == 0, "group"].to_numpy()
        assignment = cls(fold=fold, group=group, k=meta["k"])
        if assignment.hash != meta["hash"]:
            raise DataError(f"{directory}: folds.parquet does not match the hash in folds.json; rerun folds")
        return assignment


def assign_folds(labels: np.ndarray, groups: np.ndarray, k: int, repeats: int, seed: int,
                 n_classes: int) -> FoldAssignment:
    """Stratified group K-fold, `repeats` times with seeds derived from `seed`."""
    from sklearn.model_selection import StratifiedGroupKFold

    labels = np.asarray(labels)
    groups = np.asarray(groups)
    n_groups = len(np.unique(groups))
    if n_groups < k:
        raise DataError(f"the {len(labels)} training rows form only {n_groups} overlap group(s), fewer than "
                        f"folds.k={k}: lower folds.k, add distinct texts, or relax folds.grouping")
    folds = np.full((repeats, len(labels)), -1, dtype=np.int64)
    for r in range(repeats):
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed + 1000 * r)
        for f, (_, val_idx) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
            folds[r, val_idx] = f
    assert (folds >= 0).all(), "every training row must belong to exactly one fold per repeat"
    assignment = FoldAssignment(fold=folds, group=groups, k=k)
    _check_every_class_in_every_training_part(assignment, labels, n_classes)
    return assignment


def _check_every_class_in_every_training_part(assignment: FoldAssignment, labels: np.ndarray,
                                              n_classes: int) -> None:
    for r, f in assignment.tasks():
        train_idx, val_idx = assignment.split(r, f)
        if len(val_idx) == 0:
            raise DataError(f"fold {f} of repeat {r} is empty: too few distinct texts for folds.k={assignment.k}")
        present = np.bincount(labels[train_idx], minlength=n_classes)
        if (present == 0).any():
            raise DataError(
                f"fold {f} of repeat {r}: its training part has no row of class code(s) "
                f"{np.flatnonzero(present == 0).tolist()} (overlap groups too large for folds.k="
                f"{assignment.k}); lower folds.k"
            )
