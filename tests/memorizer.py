"""A test-only base model that memorises its training rows (for the leakage test).

For a text it has seen (up to case, punctuation and spacing) it predicts that row's label with certainty;
for anything else, a uniform distribution. Out of fold it can only be right by chance — unless
validation rows (or their near-duplicates) leaked into its training part.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import numpy as np

from foldstack.grouping import exact_key
from foldstack.models import register_model
from foldstack.models.base import ModelContext, ModelParams


@register_model
class Memorizer:
    kind: ClassVar[str] = "memorizer"

    class Params(ModelParams):
        pass

    def __init__(self, params: Params, context: ModelContext):
        self.params = params
        self.context = context

    def fit(self, texts, y):
        self.memory_ = {exact_key(t): int(label) for t, label in zip(texts, y, strict=True)}
        return self

    def predict_proba(self, texts):
        c = self.context.n_classes
        out = np.full((len(texts), c), 1.0 / c)
        for i, t in enumerate(texts):
            if (label := self.memory_.get(exact_key(t))) is not None:
                out[i] = np.eye(c)[label]
        return out

    def save(self, directory: Path) -> None:
        (Path(directory) / "memory.json").write_text(json.dumps(
            {"n_classes": self.context.n_classes, "memory": self.memory_}))

    @classmethod
    def load(cls, directory: Path, *, device: str = "cpu", cache_dir=None):
        raw = json.loads((Path(directory) / "memory.json").read_text())
        model = cls(cls.Params(), ModelContext(n_classes=raw["n_classes"]))
        model.memory_ = raw["memory"]
        return model
