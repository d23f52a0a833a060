"""The `base_models` entries: a name, a registered kind, and that kind's params, validated by the kind."""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationError, model_validator

from foldstack.config.base import Section, describe_errors
from foldstack.models import available_kinds, model_class


def validated_params(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """`params` checked by the registered kind's `Params` and completed with its defaults (a ValueError naming
    the kind or the key otherwise): what a fold identity hashes, so that spelled-out defaults change nothing."""
    try:
        cls = model_class(kind)
    except KeyError:
        raise ValueError(f"unknown model kind {kind!r}; available kinds: {', '.join(available_kinds())}") from None
    try:
        return cls.Params.model_validate(params).model_dump(mode="json")
    except ValidationError as exc:
        raise ValueError(f"params of {kind!r}: {describe_errors(exc)}") from None


class BaseModelSpec(Section):
    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)
    kind: str
    params: dict[str, Any] = Field(default_factory=dict)
    # exclude=True: a rule for taking part, not part of what the model computes; left out of every dump, so fold
    # identities and seeds are those of the same spec without it.
    max_data_rows: int | None = Field(
        None, ge=1, exclude=True, description="train this base model only when the training data has at most this many rows "
                                "(after data.max_rows); on bigger data it is left out, with a log line saying so "
                                "(presets/cpu-quality.yaml keeps CPU fine-tuning to small sets this way)")

    @model_validator(mode="after")
    def _known_kind_and_params(self) -> BaseModelSpec:
        object.__setattr__(self, "params", validated_params(self.kind, self.params))
        return self


def models_within_row_limits(specs: list[BaseModelSpec], n_rows: int) -> tuple[list[BaseModelSpec], dict[str, str]]:
    """(the specs that take part on data of `n_rows` rows, {left-out name: why}) by each one's `max_data_rows`."""
    kept, left_out = [], {}
    for spec in specs:
        if spec.max_data_rows is not None and n_rows > spec.max_data_rows:
            left_out[spec.name] = f"the data has {n_rows} rows, over its max_data_rows {spec.max_data_rows}"
        else:
            kept.append(spec)
    return kept, left_out
