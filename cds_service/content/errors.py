"""ContentError, and how a pydantic ValidationError of a content file becomes one.

A message names the file, the card, the place in the file (the situation's id as well as
its position) and why, e.g.

    cards/rfa_recurrence.toml [rfa-recurrence] situations #2 (after-rfa) summary: unknown placeholder {x}
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from cds_service.config import ConfigError

_MESSAGES = {
    "missing": "missing",
    "dict_type": "must be a table",
    "model_type": "must be a table",
    "model_attributes_type": "must be a table",
    "list_type": "must be a list",
    "bool_type": "must be true or false",
    "string_type": "must be a text",
}
TAG_PREFIX = "~"  # tags of the union members (a text, or a table of variants); not places in the file


class ContentError(ConfigError):
    """A card file or the overlay's model section cannot be used; raised at start-up."""


def content_error(exc: ValidationError, where: str, data: Any) -> ContentError:
    """One ContentError listing every problem pydantic found, each with its place."""
    lines = []
    for error in exc.errors(include_url=False):
        place = _place(error["loc"], data)
        message = _MESSAGES.get(error["type"]) or str(error["msg"]).removeprefix("Value error, ")
        lines.append(f"{where}{' ' + place if place else ''}: {message}")
    return ContentError("\n".join(dict.fromkeys(lines)))


def _place(loc: tuple[int | str, ...], data: Any) -> str:
    parts: list[str] = []
    node = data
    for key in loc:
        if isinstance(key, str) and key.startswith(TAG_PREFIX):
            continue
        if isinstance(key, int) and isinstance(node, list):
            node = node[key] if key < len(node) else None
            label = f"#{key + 1}"
            if isinstance(node, dict) and isinstance(node.get("id"), str):
                label += f" ({node['id']})"
            if parts:
                parts[-1] += f" {label}"
            else:
                parts.append(label)
            continue
        node = node.get(key) if isinstance(node, dict) else None
        parts.append(str(key))
    return " ".join(parts)
