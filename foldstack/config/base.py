"""What every params section shares: unknown keys are errors, and a pydantic error reads as dotted keys.

A section model forbids extra keys and validates assignments; `describe_errors` turns a pydantic
ValidationError into the one-line `dotted.key: what is wrong` form that every config error uses, and
a section's `retired_keys` is how it refuses a key that was renamed or removed, with a message saying so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator


class Section(BaseModel):
    """A params section: unknown keys are errors, values are checked on assignment too.

    `retired_keys` (key -> what to say) names keys that were renamed or removed: a params file that still sets
    one gets that message rather than the bare "unknown key".
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    retired_keys: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _retired_keys(cls, raw: Any) -> Any:
        return reject_retired_keys(raw, cls.retired_keys)


def describe_errors(exc: ValidationError, model_names: list[Any] | None = None,
                    tagged: Mapping[str, Mapping[str, type[BaseModel]]] | None = None) -> str:
    """Every error of `exc` as `dotted.key: message`, joined by `; ` (base models named, not numbered).

    `tagged` names the fields that are unions told apart by `kind` (dotted field -> kind -> class): pydantic
    puts the kind into the error's location (meta.logreg.C), the user writes meta.C.
    """
    model_names = model_names or []
    parts = []
    for err in exc.errors():
        loc = list(err["loc"])
        # pydantic numbers the base models; the user knows them by name (base_models.tfidf_lr.kind).
        if len(loc) > 1 and loc[0] == "base_models" and isinstance(loc[1], int) and loc[1] < len(model_names) \
                and model_names[loc[1]] is not None:
            loc[1] = model_names[loc[1]]
        field, kind, kinds = _drop_union_tag(loc, tagged or {})
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key" if kind is None or len(loc) != len(field.split(".")) + 1 else \
                f"unknown key for {field} kind {kind!r} (its keys: {', '.join(kinds[kind].model_fields)})"
        elif err["type"] == "literal_error" and "expected" in err.get("ctx", {}):
            msg = f"must be one of {err['ctx']['expected']}"
        elif err["type"] == "union_tag_invalid":
            loc.append(err["ctx"]["discriminator"].strip("'"))
            msg = f"must be one of {err['ctx']['expected_tags']}"
        dotted = ".".join(str(x) for x in loc)
        parts.append(f"{dotted}: {msg}" if dotted else msg)
    return "; ".join(parts)


def _drop_union_tag(loc: list[Any], tagged: Mapping[str, Mapping[str, type[BaseModel]]],
                    ) -> tuple[str, str | None, Mapping[str, type[BaseModel]]]:
    """Remove, in place, the kind pydantic put after a tagged field in `loc`; the field, that kind, its kinds."""
    for field, kinds in tagged.items():
        n = len(field.split("."))
        if [str(x) for x in loc[:n]] == field.split(".") and len(loc) > n and loc[n] in kinds:
            return field, loc.pop(n), kinds
    return "", None, {}


def reject_retired_keys(raw: Any, retired: dict[str, str]) -> Any:
    """A `mode="before"` validator's body: a key of `retired` (key -> what to say) in `raw` is an error whose
    message says what became of it, rather than the bare "unknown key"."""
    if isinstance(raw, dict):
        for key, message in retired.items():
            if key in raw:
                raise ValueError(message)
    return raw
