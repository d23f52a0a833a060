"""The snapshot every later stage reads: the training rows and the holdout split off them, with hashes.

The holdout takes whole overlap groups (foldstack.core.grouping), stratified by class, so that no near
duplicate of a training text is held out.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from foldstack.common.files import read_json, sha256_file, sha256_json
from foldstack.config import Config
from foldstack.core.data.labels import LabelMap, load_labelled
from foldstack.core.grouping import group_texts
from foldstack.errors import DataError

log = logging.getLogger("foldstack")


@dataclass
class Snapshot:
    """The validated data: training rows, holdout rows, label map and content hashes."""

    train: pd.DataFrame  # columns row, text, label (int code), group
    holdout: pd.DataFrame  # columns row, text, label (int code)
    label_map: LabelMap
    source_sha256: str
    grouping: dict[str, Any] = field(default_factory=dict)  # statistics of the training rows' overlap groups
    data_hash: str = field(init=False)

    def __post_init__(self) -> None:
        self.data_hash = sha256_json({
            "labels": self.label_map.to_json(),
            "train": [self.train["text"].tolist(), self.train["label"].tolist()],
            "holdout": [self.holdout["text"].tolist(), self.holdout["label"].tolist()],
        })[:16]

    @property
    def n_classes(self) -> int:
        return len(self.label_map.labels)

    def summary(self) -> dict[str, Any]:
        def counts(df: pd.DataFrame) -> dict[str, int]:
            vc = df["label"].value_counts()
            return {self.label_map.names[c]: int(vc.get(c, 0)) for c in range(self.n_classes)}

        return {
            "data_hash": self.data_hash,
            "source_sha256": self.source_sha256,
            "labels": self.label_map.to_json(),
            "n_train": len(self.train),
            "n_holdout": len(self.holdout),
            "train_class_counts": counts(self.train),
            "holdout_class_counts": counts(self.holdout),
            "mean_text_chars": float(self.train["text"].str.len().mean()),
            "grouping": self.grouping,
        }

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.train.to_parquet(directory / "train.parquet", index=False)
        self.holdout.to_parquet(directory / "holdout.parquet", index=False)
        # Not write_json, which sorts the keys: snapshot.json keeps the order (and so the DVC hash) it always had.
        (directory / "snapshot.json").write_text(json.dumps(self.summary(), indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> Snapshot:
        meta = read_json(directory / "snapshot.json")
        snap = cls(
            train=pd.read_parquet(directory / "train.parquet"),
            holdout=pd.read_parquet(directory / "holdout.parquet"),
            label_map=LabelMap.from_json(meta["labels"]),
            source_sha256=meta["source_sha256"],
            grouping=meta.get("grouping", {}),
        )
        if snap.data_hash != meta["data_hash"]:
            raise DataError(f"{directory}: snapshot files do not match the hash in snapshot.json; rerun validate")
        return snap


def _stratified_group_holdout(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of holdout rows: whole overlap groups, stratified by each group's label."""
    from sklearn.model_selection import train_test_split

    frame = pd.DataFrame({"label": labels, "group": groups})
    group_label = frame.groupby("group")["label"].agg(lambda s: s.value_counts().index[0])
    n_per_class = group_label.value_counts()
    stratify = group_label.to_numpy() if n_per_class.min() >= 2 else None
    _, test_groups = train_test_split(
        group_label.index.to_numpy(), test_size=fraction, random_state=seed, stratify=stratify
    )
    return np.isin(groups, test_groups)


def build_snapshot(cfg: Config) -> Snapshot:
    """Read, check and split the data named in params (the pure part of the validate stage)."""
    dcfg = cfg.data
    path = cfg.resolve_path(dcfg.path)
    frame = load_labelled(path, dcfg)
    if dcfg.max_rows is not None and len(frame) > dcfg.max_rows:
        frame = frame.sample(n=dcfg.max_rows, random_state=cfg.seed).sort_values("row").reset_index(drop=True)
    source_sha = sha256_file(path)

    grouping = cfg.folds.grouping
    if dcfg.test_path:
        test_path = cfg.resolve_path(dcfg.test_path)
        test = load_labelled(test_path, dcfg)
        source_sha = sha256_json([source_sha, sha256_file(test_path)])
        train = frame
        train_groups = group_texts(train["text"], grouping)
    else:
        label_map = LabelMap.from_values(frame["label"])
        if len(label_map.labels) < 2:
            raise DataError(f"{path}: column {dcfg.label_column!r} has a single class {label_map.names}; "
                            f"a classifier needs at least two")
        all_groups = group_texts(frame["text"], grouping)
        mask = _stratified_group_holdout(label_map.encode(frame["label"], str(path)), all_groups.groups,
                                         cfg.split.holdout_fraction, cfg.seed)
        train, test = frame[~mask].reset_index(drop=True), frame[mask].reset_index(drop=True)
        _check_split_kept_every_class(frame, mask, all_groups.groups, label_map, path, dcfg.label_column)
        # The training rows' groups are the full file's, renumbered by first appearance.
        all_groups.groups = pd.factorize(all_groups.groups[~mask])[0].astype(np.int64)
        train_groups = all_groups

    label_map = LabelMap.from_values(train["label"])
    if len(label_map.labels) < 2:
        raise DataError(f"{path}: the training data has a single class {label_map.names}; "
                        f"a classifier needs at least two")
    train = train.assign(label=label_map.encode(train["label"], str(path)))
    test = test.assign(label=label_map.encode(test["label"], str(cfg.resolve_path(dcfg.test_path or dcfg.path))))

    counts = np.bincount(train["label"].to_numpy(), minlength=len(label_map.labels))
    small = [(label_map.names[c], int(n)) for c, n in enumerate(counts) if n < cfg.folds.k]
    if small:
        desc = ", ".join(f"{name!r} has {n}" for name, n in small)
        raise DataError(
            f"{path}: too few training rows for folds.k={cfg.folds.k}: {desc} (each class needs at least k rows); "
            f"lower folds.k or add data"
        )
    train = train.assign(group=train_groups.groups)
    stats = train_groups.stats(cfg.folds.k)
    log.info("overlap groups of %d training rows: %d groups, %s links, in %s", len(train), stats["n_groups"],
             stats["links"], ", ".join(f"{kind} {s:.2f}s" for kind, s in train_groups.seconds.items()))
    if "warning" in stats:
        log.warning("%s: %s", path, stats["warning"])
    return Snapshot(train=train, holdout=test, label_map=label_map, source_sha256=source_sha, grouping=stats)


def _check_split_kept_every_class(frame: pd.DataFrame, mask: np.ndarray, groups: np.ndarray, label_map: LabelMap,
                                  path: Path, label_column: str) -> None:
    """A class whose rows all went to the holdout (its overlap groups are few) gets its own message."""
    in_train = set(frame.loc[~mask, "label"])
    for label in label_map.labels:
        if label not in in_train:
            rows = (frame["label"] == label).to_numpy()
            n_groups = len(np.unique(groups[rows]))
            raise DataError(
                f"{path}: every row of class {str(label)!r} in column {label_column!r} ({int(rows.sum())} rows in "
                f"{n_groups} overlap group(s)) went to the holdout, since groups are kept whole; add rows of that "
                f"class, lower split.holdout_fraction, or relax folds.grouping")
