"""The smallest safe HTML builder: every value is escaped unless it is already ``Html``.

No template engine: the pages are a few tables, and one rule (text in, escaped out)
is easier to check than a template language's auto-escaping corners.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from typing import Any

from ..views import printable

VOID = frozenset({"input", "meta", "link", "br", "img"})


class Html(str):
    """Markup that is already safe (built here, from escaped parts)."""


def esc(value: Any) -> Html:
    """Text as HTML; ``Html`` passes through. Quotes are escaped too, so the result is
    safe in attribute values."""
    if isinstance(value, Html):
        return value
    return Html(html.escape("" if value is None else printable(value), quote=True))


def tag(element: str, /, *children: Any, **attrs: Any) -> Html:
    """``<element attrs>children</element>``; ``class_`` for class, ``data_x`` for data-x,
    True for a bare attribute, None or False to leave one out."""
    parts = [element]
    for key, value in attrs.items():
        if value is None or value is False:
            continue
        attr = key.rstrip("_").replace("_", "-")
        parts.append(attr if value is True else f'{attr}="{esc(value)}"')
    if element in VOID:
        return Html(f"<{' '.join(parts)}>")
    inner = "".join(esc(c) for c in children)
    return Html(f"<{' '.join(parts)}>{inner}</{element}>")


def join(items: Iterable[Any], sep: str = "") -> Html:
    return Html(esc(sep).join(esc(i) for i in items))
