"""Small HTML views for Jupyter (``_repr_html_``): a card, and the tables a :class:`~tilecast.model.Model` shows.

Plain tables with inline styles only (no scripts, no CSS classes), so they render the same in Jupyter, VS Code and
GitHub's notebook viewer; every value is escaped.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import TilecastError
from .params import describe_card

if TYPE_CHECKING:
    from .schema import Card

__all__ = ["card_html", "class_list", "section", "swatch", "table"]

_CELL = "padding:1px 8px;text-align:left;border:none"


def swatch(color: Sequence[int] | str | None) -> str:
    """A small coloured square for an ``(r, g, b[, a])`` tuple or a ``RRGGBB`` hex string (MLM's ``color_hint``)."""
    if color is None:
        return ""
    if isinstance(color, str):
        text = color.lstrip("#")
        if len(text) not in (6, 8) or any(c not in "0123456789abcdefABCDEF" for c in text):
            return ""
        css = f"#{text[:6]}"
    else:
        r, g, b = (int(c) for c in list(color)[:3])
        css = f"rgb({r},{g},{b})"
    return (f'<span style="display:inline-block;width:0.9em;height:0.9em;background:{css};'
            f'border:1px solid #888;vertical-align:middle;margin-right:3px" title="{html.escape(css)}"></span>')


def class_list(classes: Iterable[tuple[Any, str, Sequence[int] | str | None]]) -> str:
    """``value name`` pairs, each after its colour swatch."""
    return ", ".join(f"{swatch(c)}{html.escape(str(v))}&nbsp;{html.escape(str(n))}" for v, n, c in classes)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], raw: Sequence[int] = ()) -> str:
    """A table; the columns in ``raw`` hold HTML already (e.g. :func:`class_list`), the rest is escaped."""
    head = "".join(f'<th style="{_CELL}">{html.escape(h)}</th>' for h in headers)
    body = "".join(
        "<tr>" + "".join(f'<td style="{_CELL}">{v if i in raw else html.escape(str(v))}</td>'
                         for i, v in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f'<table style="border-collapse:collapse;margin:2px 0"><tr>{head}</tr>{body}</table>'


def section(title: str, content: str) -> str:
    return f'<div style="margin-top:4px"><b>{html.escape(title)}</b>{content}</div>'


def card_html(card: Card) -> str:
    """The card's name, where it came from, its tiling, bands and outputs (classes with their colours)."""
    p = card.properties
    title = (f"<b>Model card</b> {html.escape(str(p.get('mlm:name') or '(unnamed)'))} "
             f"<small>({html.escape(card.source)})</small>")
    parts = [title]
    try:
        facts = describe_card(card)
    except TilecastError as exc:  # show a broken card rather than fail to display it
        return f"<div>{title}<br>cannot read it: {html.escape(str(exc))}</div>"
    keys = ("tasks", "layout", "tile", "overlap", "output tile", "blend", "gsd policy", "nodata")
    parts.append(table(["", ""], [(k, facts[k]) for k in keys if facts.get(k) not in (None, "")]))
    bands = facts.get("bands") or []
    if bands:
        parts.append(section("Bands", table(["input", "band", "common name", "scaling"],
                                            [(b["input"], b["band"], b["common_name"], b["scaling"]) for b in bands])))
    rows = []
    for o in card.outputs:
        classes = [(c.get("value"), c.get("description") or c.get("name", ""), c.get("color_hint"))
                   for c in o.get("classification:classes") or []]
        rows.append((o.get("name", ""), o.get("result", {}).get("data_type", ""), class_list(classes)))
    if rows:
        parts.append(section("Outputs", table(["name", "dtype", "classes"], rows, raw=(2,))))
    return "<div>" + "".join(parts) + "</div>"
