"""The `distill` section: one fast student trained on the ensemble's honest soft targets (off by default).

    distill:
      enabled: true
      student: {kind: tfidf_lr, params: {}}   # any kind that can fit soft targets
      alpha: 0.3          # weight of the hard label in each target; the rest is the ensemble's probability
      temperature: 1.0    # < 1 sharpens the ensemble's probabilities, > 1 softens them
      augment: {methods: [word_dropout, span_deletion], copies: 2}   # teacher-labelled perturbed copies
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from foldstack.config.base import Section
from foldstack.config.models import validated_params
from foldstack.models import soft_target_kinds

AugmentMethodName = Literal["word_dropout", "span_deletion", "shuffle"]


class StudentSpec(Section):
    kind: str = Field("tfidf_lr", description="the student's base-model kind; it must be able to fit soft targets")
    params: dict[str, Any] = Field(default_factory=dict, description="that kind's params, as in base_models")

    @model_validator(mode="after")
    def _a_kind_that_learns_soft_targets(self) -> StudentSpec:
        params = validated_params(self.kind, self.params)
        if self.kind not in soft_target_kinds():
            raise ValueError(f"kind {self.kind!r} cannot fit soft targets; students: {', '.join(soft_target_kinds())}")
        object.__setattr__(self, "params", params)
        return self


class AugmentConfig(Section):
    methods: list[AugmentMethodName] = Field(default_factory=list, description="empty: no augmentation")
    copies: int = Field(2, ge=1, le=20, description="perturbed copies of each training text")


class DistillConfig(Section):
    enabled: bool = Field(False, description="run the distill stage after stack")
    student: StudentSpec = Field(default_factory=StudentSpec)
    alpha: float = Field(0.3, ge=0.0, le=1.0, description="weight of the hard label in each soft target")
    temperature: float = Field(1.0, gt=0.0, le=20.0, description="applied to the ensemble's probabilities")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
