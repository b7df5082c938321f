"""The request's routing hints (GenerateRequest.metadata), checked at the edge: a misspelt key is refused
rather than silently ignored."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from cag.errors import InvalidFieldError
from cag.identifiers import check_name, check_text, echo
from cag.router.core.rules import RULE_KEYS

ROUTE_KEY = "route"
HINT_KEYS = (ROUTE_KEY, *RULE_KEYS)
MAX_HINT_CHARS = 128


@dataclass(frozen=True, kw_only=True)
class Hints:
    """`route`: the route named outright ("" = none); `values`: the rule keys given, casefolded."""

    route: str = ""
    values: Mapping[str, str] = field(default_factory=dict)


def hints_of(metadata: Mapping[str, str]) -> Hints:
    """The validated hints; InvalidFieldError (field "metadata" or "metadata.<key>") for an unknown key, a
    malformed route name or an empty, oversized or control-character value."""
    for key in metadata:
        if key not in HINT_KEYS:
            raise InvalidFieldError(
                "metadata", f"key {echo(key)} is not a routing hint: use one of {', '.join(HINT_KEYS)}"
            )
    values: dict[str, str] = {}
    for key, value in metadata.items():
        where = f"metadata.{key}"
        if key == ROUTE_KEY:
            check_name(where, value)
        else:
            values[key] = check_text(where, value, max_chars=MAX_HINT_CHARS, required=True).casefold()
    return Hints(route=metadata.get(ROUTE_KEY, ""), values=values)
