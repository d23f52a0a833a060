"""The `meta` section: which meta-learner combines the base models, and that kind's params.

Like a base model, a meta-learner kind takes only its own keys: `meta: {kind: logreg, C: 0.5}`, while
`meta: {kind: vote, C: 0.5}` is an error naming `meta.C`. The section is a union of one class per kind,
told apart by `kind` (absent: `auto`); `cv_folds` is shared by every kind. Each kind's knobs are a params
class of their own (`LogregParams`, ...), so `auto` can hold one per candidate: `meta: {kind: auto,
logreg: {C: 0.5}}` compares a logreg of C 0.5 against the other candidates at their defaults.
`MetaConfig` is the base class; `MetaConfig(kind=...)` with no knobs stands for that kind at its defaults
(what the evaluate stage's baselines use), `resolved()` gives the kind's own class.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from foldstack.config.base import Section

# The kinds that are a learner (auto picks one of them).
MetaKind = Literal["logreg", "ensemble_selection", "weighted_mean", "vote"]
DEFAULT_AUTO_CANDIDATES: tuple[str, ...] = ("weighted_mean", "ensemble_selection", "logreg")


class MetaConfig(Section):
    """What every kind shares. Instantiated itself (a kind and nothing else), it means that kind's defaults."""

    kind: Literal["auto", "logreg", "ensemble_selection", "weighted_mean", "vote"] = Field(
        "auto", description="auto: the candidate of best CV log loss on the OOF, the simpler one on a tie")
    cv_folds: int = Field(5, ge=2, le=20, description="folds of the CV that estimates the meta-learner's quality")

    def learner_params(self) -> dict[str, Any]:
        """The kind's own knobs: what its meta-learner is built with."""
        return self.model_dump(exclude={"kind", "cv_folds"})

    def resolved(self) -> MetaConfig:
        """This config as its kind's own class (a bare `MetaConfig(kind=...)` becomes that kind's defaults)."""
        return self if type(self) is not MetaConfig else META_CONFIGS[self.kind](cv_folds=self.cv_folds)


class LogregParams(Section):
    C: float = Field(1.0, gt=0, description="inverse regularisation strength of the logistic regression")
    logit: bool = Field(True, description="feed log-odds of the OOF probabilities, not the probabilities")
    passthrough: bool = Field(False, description="with logit, also feed the base models' raw probabilities")
    max_iter: int = Field(1000, ge=1, description="iterations of the solver")


class EnsembleSelectionParams(Section):
    rounds: int = Field(50, ge=1, le=1000, description="greedy selection rounds (with replacement)")

    retired_keys: ClassVar[dict[str, str]] = {"selection_rounds": "selection_rounds was renamed to rounds"}


class WeightedMeanParams(Section):
    weighting: Literal["uniform", "softmax_neg_log_loss"] = Field(
        "uniform", description="uniform: the plain mean; softmax_neg_log_loss: weights exp(-OOF log loss)")


class VoteParams(Section):
    tie_break_weight: float = Field(0.5, gt=0.0, lt=1.0, description="weight of the mean probability, "
                                                                     "which breaks ties between vote counts")
    smoothing: float = Field(0.01, gt=0.0, description="added to every class's score: keeps log loss finite")


class LogregMetaConfig(LogregParams, MetaConfig):
    """Multinomial logistic regression on the stacked (log-odds of the) base models' probabilities."""

    kind: Literal["logreg"] = "logreg"


class EnsembleSelectionMetaConfig(EnsembleSelectionParams, MetaConfig):
    """Caruana's greedy forward selection: a weighted mean whose weights are selection counts."""

    kind: Literal["ensemble_selection"] = "ensemble_selection"


class WeightedMeanMetaConfig(WeightedMeanParams, MetaConfig):
    """The mean of the base models' probabilities."""

    kind: Literal["weighted_mean"] = "weighted_mean"


class VoteMetaConfig(VoteParams, MetaConfig):
    """Majority vote of the base models' top classes."""

    kind: Literal["vote"] = "vote"


class AutoMetaConfig(MetaConfig):
    """The candidate of best CV log loss on the OOF, the simpler one on a tie. Each candidate is built with
    its params below (its kind's defaults where not given) and this section's `cv_folds`."""

    kind: Literal["auto"] = "auto"
    candidates: list[MetaKind] = Field(
        default_factory=lambda: list(DEFAULT_AUTO_CANDIDATES), min_length=1,
        description="the kinds compared, simplest first: ties go to the earlier one")
    tie_se: float = Field(1.0, ge=0.0, description="a simpler kind within this many standard errors of the best "
                                                   "one's CV log loss is a tie")
    logreg: LogregParams = Field(default_factory=LogregParams)
    ensemble_selection: EnsembleSelectionParams = Field(default_factory=EnsembleSelectionParams)
    weighted_mean: WeightedMeanParams = Field(default_factory=WeightedMeanParams)
    vote: VoteParams = Field(default_factory=VoteParams)

    retired_keys: ClassVar[dict[str, str]] = {"auto_candidates": "auto_candidates was renamed to candidates",
                                         "auto_tie_se": "auto_tie_se was renamed to tie_se"}

    def candidate(self, kind: str) -> MetaConfig:
        """The config of one candidate kind: its params from this section, this section's cv_folds."""
        params: Section = getattr(self, kind)
        return META_CONFIGS[kind](cv_folds=self.cv_folds, **params.model_dump())


META_CONFIGS: dict[str, type[MetaConfig]] = {
    cls.model_fields["kind"].default: cls
    for cls in (AutoMetaConfig, LogregMetaConfig, EnsembleSelectionMetaConfig, WeightedMeanMetaConfig,
                VoteMetaConfig)
}

# The `meta` field of the params: one class per kind, told apart by `kind`.
MetaSection = Annotated[
    AutoMetaConfig | LogregMetaConfig | EnsembleSelectionMetaConfig | WeightedMeanMetaConfig | VoteMetaConfig,
    Field(discriminator="kind"),
]


def default_kind(raw: Any) -> Any:
    """`meta` without a `kind` is `auto` (what the discriminated union needs said)."""
    return {"kind": "auto", **raw} if isinstance(raw, dict) and "kind" not in raw else raw
