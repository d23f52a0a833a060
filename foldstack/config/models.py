"""The `base_models` entries: a name, a registered kind, and that kind's params, validated by the kind."""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationError, model_validator

from foldstack.config.base import Section, describe_errors
from foldstack.models import available_kinds, model_class


class BaseModelSpec(Section):
    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)
    kind: str
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_kind_and_params(self) -> BaseModelSpec:
        try:
            cls = model_class(self.kind)
        except KeyError:
            raise ValueError(
                f"unknown model kind {self.kind!r}; available kinds: {', '.join(available_kinds())}"
            ) from None
        try:
            validated = cls.Params.model_validate(self.params)
        except ValidationError as exc:
            raise ValueError(f"params of {self.kind!r}: {describe_errors(exc)}") from None
        # Store the complete, defaulted params: they are what the fold identity hashes.
        object.__setattr__(self, "params", validated.model_dump(mode="json"))
        return self

