"""A test-only base model that memorises its training rows (for the leakage test).

For a text it has seen (up to case, punctuation and spacing) it predicts that row's label with certainty;
with `contained: true` also for a text that occurs inside a seen text, or contains one, at word boundaries.
For anything else, a uniform distribution. Out of fold it can only be right by chance — unless validation
rows (or texts overlapping them) leaked into its training part.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import numpy as np

from foldstack.core.grouping import exact_key, word_tokens
from foldstack.models import register_model
from foldstack.models.base import ModelContext, ModelParams


@register_model
class Memorizer:
    kind: ClassVar[str] = "memorizer"

    class Params(ModelParams):
        contained: bool = False

    def __init__(self, params: Params, context: ModelContext):
        self.params = params
        self.context = context

    def fit(self, texts, y):
        self.memory_ = {exact_key(t): int(label) for t, label in zip(texts, y, strict=True)}
        self.words_ = {_padded(t): int(label) for t, label in zip(texts, y, strict=True)}
        return self

    def _recall(self, text: str) -> int | None:
        if (label := self.memory_.get(exact_key(text))) is not None:
            return label
        if self.params.contained:
            query = _padded(text)
            for seen, label in self.words_.items():  # quadratic, fine for a test's few hundred rows
                if query in seen or seen in query:
                    return label
        return None

    def predict_proba(self, texts):
        c = self.context.n_classes
        out = np.full((len(texts), c), 1.0 / c)
        for i, t in enumerate(texts):
            if (label := self._recall(t)) is not None:
                out[i] = np.eye(c)[label]
        return out

    def save(self, directory: Path) -> None:
        (Path(directory) / "memory.json").write_text(json.dumps(
            {"n_classes": self.context.n_classes, "contained": self.params.contained, "memory": self.memory_,
             "words": self.words_}))

    @classmethod
    def load(cls, directory: Path, *, device: str = "cpu", cache_dir=None):
        raw = json.loads((Path(directory) / "memory.json").read_text())
        model = cls(cls.Params(contained=raw["contained"]), ModelContext(n_classes=raw["n_classes"]))
        model.memory_, model.words_ = raw["memory"], raw["words"]
        return model


def _padded(text: str) -> str:
    return " " + " ".join(word_tokens(text)) + " "
