"""pydantic's validation errors as a person reads them: which field, and what was wrong with it.

Used by every protocol's error renderer and by the start-up check of the settings, so that a field is
named the same way everywhere and no message keeps pydantic's "Value error, " prefix.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def field_of(error: Mapping[str, Any]) -> str:
    """The field's dotted path ("stop", "prompt.0"); "" when the error is about the whole object.
    FastAPI's "body" prefix is dropped: every field of a request is in its body."""
    loc = list(error.get("loc", ()))
    if loc and loc[0] == "body":
        loc = loc[1:]
    return ".".join(str(p) for p in loc)


def message_of(error: Mapping[str, Any]) -> str:
    """The message without pydantic's "Value error, " prefix (a validator's own words)."""
    cause = error.get("ctx", {}).get("error")
    if error.get("type") == "value_error" and cause is not None:
        return str(cause)
    return str(error.get("msg", ""))


def summary(errors: Iterable[Mapping[str, Any]], limit: int = 5, upper: bool = False) -> str:
    """ "field: message; ..." for the first `limit` errors; a whole-object error has no "field: "."""
    parts = []
    for e in list(errors)[:limit]:
        field = field_of(e)
        field = field.upper() if upper else field
        parts.append(f"{field}: {message_of(e)}" if field else message_of(e))
    return "; ".join(parts)
