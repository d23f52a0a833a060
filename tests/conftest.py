"""Shared fixtures: small demo data, cheap params files, offline tool settings."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import yaml

# Offline, quiet, single-threaded: torch on a busy 2-core box is 30x slower with more threads.
for var, value in {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                   "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled", "DVC_NO_ANALYTICS": "1",
                   "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "TOKENIZERS_PARALLELISM": "false",
                   "GX_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING"}.items():
    os.environ.setdefault(var, value)

from foldstack.core.demo import write_demo_data  # noqa: E402

CHEAP_MODELS = [
    {"name": "tfidf_lr", "kind": "tfidf_lr", "params": {}},
    {"name": "nb_svm", "kind": "nb_svm", "params": {}},
]


@pytest.fixture(scope="session")
def demo_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("demo") / "reviews.csv"
    write_demo_data(path, rows=600, n_classes=3, noise=0.05, seed=0)
    return path


def write_params(directory: Path, data_path: Path, **sections) -> Path:
    """A params.yaml in `directory` for `data_path` with cheap models; sections override whole keys."""
    params = {
        "seed": 0,
        "data": {"path": str(data_path)},
        "folds": {"k": 3},
        "base_models": CHEAP_MODELS,
        "meta": {"kind": "logreg"},
        "evaluate": {"plots": False},
        "runtime": {"artifacts_dir": str(directory / "artifacts"), "cache_dir": str(directory / "cache"),
                    "max_workers": 1, "device": "cpu"},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(params.get(key), dict):
            params[key] = {**params[key], **value}
        else:
            params[key] = value
    path = directory / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.fixture
def params_file(tmp_path, demo_csv) -> Path:
    return write_params(tmp_path, demo_csv)


# A toy task the transformer kinds must learn: texts that differ only in "good" (class 0) or "bad" (class 1).
FILLERS = ["fun", "long", "new", "old", "short", "big", "red", "odd", "blue", "green", "nice", "plain"]


def toy_task(fillers: list[str]) -> tuple[list[str], np.ndarray]:
    texts = [f"this {filler} movie was {word}" for filler in fillers for word in ("good", "bad")]
    return texts, np.array([0 if t.endswith("good") else 1 for t in texts])


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny BERT built from a config with a vocabulary made on the fly: no weights to download."""
    from foldstack.models.transformers.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)
