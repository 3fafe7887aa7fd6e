"""Minimal HTML building blocks for a single self-contained report file (inline CSS and script, data-URI
images)."""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Sequence
from html import escape

_CSS = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1150px;
       color: #222; padding: 0 16px; }
h1 { font-size: 24px; margin-bottom: 4px; } h2 { font-size: 19px; border-bottom: 1px solid #ddd; padding-bottom: 4px;
margin-top: 32px; } h3 { font-size: 15px; margin: 16px 0 6px; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 4px 9px; text-align: right; }
th:first-child, td:first-child { text-align: left; } th { background: #f3f3f3; }
img { max-width: 100%; } .note { color: #666; font-size: 13px; } figure { margin: 10px 0 22px; }
figcaption { font-size: 13px; color: #333; margin-bottom: 4px; } pre { font-size: 12px; background: #f7f7f7;
padding: 8px; overflow-x: auto; } .legend span { padding: 1px 6px; border-radius: 3px; color: white; margin-right: 6px; }
table.sortable th { cursor: pointer; } table.sortable th::after { content: " \\2195"; color: #999; }
.scroll { max-height: 560px; overflow-y: auto; display: inline-block; border-bottom: 1px solid #ccc; }
.scroll table { margin: 0; } .scroll th { position: sticky; top: 0; }
"""

# Sorts a table.sortable by the clicked column (numbers numerically, "n/a" always last; click again to reverse).
_SORT_SCRIPT = """
for (const th of document.querySelectorAll("table.sortable th")) th.addEventListener("click", () => {
  const col = th.cellIndex, body = th.closest("table").tBodies[0];
  const dir = th.dataset.dir === "asc" ? -1 : 1;
  th.dataset.dir = dir > 0 ? "asc" : "desc";
  const key = (row) => { const t = row.cells[col].textContent; return t === "n/a" ? null : isNaN(t) ? t : +t; };
  const rows = [...body.rows].sort((a, b) => {
    const x = key(a), y = key(b);
    if (x === null || y === null) return (x === null) - (y === null);
    return dir * (typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y)));
  });
  body.append(...rows);
});
"""


def fmt(value: float, digits: int = 2) -> str:
    """Number for a table cell; ``n/a`` for NaN (e.g. AP of a class without ground truth)."""
    return (
        "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"
    )


def png_img(png: bytes, alt: str) -> str:
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], sortable: bool = False) -> str:
    """A table; ``sortable`` ones sort by a column when its header is clicked."""
    head = "".join(f"<th>{escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    css_class = ' class="sortable"' if sortable else ""
    return f"<table{css_class}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def scrolling(html: str) -> str:
    """A box of limited height that scrolls, for tables with hundreds of rows (the header stays visible)."""
    return f'<div class="scroll">{html}</div>'


def section(title: str, *parts: str) -> str:
    return f"<section><h2>{escape(title)}</h2>{''.join(parts)}</section>"


def note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def page(title: str, subtitle: str, sections: Sequence[str]) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{escape(title)}</h1>{note(subtitle)}{''.join(sections)}<script>{_SORT_SCRIPT}</script>"
        "</body></html>\n"
    )
