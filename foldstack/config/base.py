"""What every params section shares: unknown keys are errors, and a pydantic error reads as dotted keys.

A section model forbids extra keys and validates assignments; `describe_errors` turns a pydantic
ValidationError into the one-line `dotted.key: what is wrong` form that every config error uses, and
`reject_retired_keys` is how a section refuses a key that was renamed or removed, with a message saying so.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError


class Section(BaseModel):
    """A params section: unknown keys are errors, values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def describe_errors(exc: ValidationError, model_names: list[Any] | None = None) -> str:
    """Every error of `exc` as `dotted.key: message`, joined by `; ` (base models named, not numbered)."""
    model_names = model_names or []
    parts = []
    for err in exc.errors():
        loc = list(err["loc"])
        # pydantic numbers the base models; the user knows them by name (base_models.tfidf_lr.kind).
        if len(loc) > 1 and loc[0] == "base_models" and isinstance(loc[1], int) and loc[1] < len(model_names) \
                and model_names[loc[1]] is not None:
            loc[1] = model_names[loc[1]]
        loc = ".".join(str(x) for x in loc)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "literal_error" and "expected" in err.get("ctx", {}):
            msg = f"must be one of {err['ctx']['expected']}"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)



def reject_retired_keys(raw: Any, retired: dict[str, str]) -> Any:
    """A `mode="before"` validator's body: a key of `retired` (key -> what to say) in `raw` is an error whose
    message says what became of it, rather than the bare "unknown key"."""
    if isinstance(raw, dict):
        for key, message in retired.items():
            if key in raw:
                raise ValueError(message)
    return raw
