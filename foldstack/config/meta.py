"""The `meta` section: which meta-learner combines the base models, and its knobs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from foldstack.config.base import Section


MetaKind = Literal["logreg", "ensemble_selection", "weighted_mean", "vote"]


class MetaConfig(Section):
    kind: Literal["auto", "logreg", "ensemble_selection", "weighted_mean", "vote"] = Field(
        "auto", description="auto: the candidate of best CV log loss on the OOF, the simpler one on a tie")
    auto_candidates: list[MetaKind] = Field(
        default_factory=lambda: ["weighted_mean", "ensemble_selection", "logreg"], min_length=1,
        description="(auto) the kinds compared, simplest first: ties go to the earlier one")
    auto_tie_se: float = Field(1.0, ge=0.0, description="(auto) a simpler kind within this many standard errors "
                                                        "of the best one's CV log loss is a tie")
    C: float = Field(1.0, gt=0)
    logit: bool = Field(True, description="feed log-odds of the OOF probabilities to logreg")
    passthrough: bool = Field(False, description="(logreg) also feed the base models' raw probabilities")
    selection_rounds: int = Field(50, ge=1, le=1000, description="(ensemble_selection) greedy rounds")
    cv_folds: int = Field(5, ge=2, le=20, description="folds of the CV that estimates the meta-learner's quality")

