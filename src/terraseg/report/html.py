"""The self-contained HTML page: base64-embedded PNGs, tables, a table of contents.

The page references nothing outside itself (no scripts, fonts, style sheets or image files), so
it can be mailed or archived as one file. Every section is a ``<section id="...">`` with an id
from :data:`SECTION_IDS`; a section that does not apply (agreement with one model, ensemble
without rules ...) is still present and says why, so links and tests can rely on the ids.
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from terraseg.errors import DataError

SECTION_IDS: tuple[str, ...] = ("summary", "per-class", "frequency", "precision-recall", "confusion", "agreement",
                                "ensemble", "samples", "curves")
"""Stable section ids, in page order."""

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1d232a;
background:#fafafa;line-height:1.45}
header{background:#1f3b4d;color:#fff;padding:18px 28px}header h1{margin:0 0 4px 0;font-size:22px}
header p{margin:2px 0;font-size:13px;opacity:.9}
nav{background:#fff;border-bottom:1px solid #ddd;padding:8px 28px;position:sticky;top:0;z-index:1}
nav a{margin-right:14px;color:#1f5f8b;text-decoration:none;font-size:13px}nav a:hover{text-decoration:underline}
main{padding:10px 28px 40px 28px;max-width:1500px}
section{background:#fff;border:1px solid #e3e3e3;border-radius:6px;margin:18px 0;padding:6px 20px 16px 20px}
section h2{font-size:18px;border-bottom:1px solid #eee;padding-bottom:6px}section h3{font-size:15px}
figure{margin:12px 0;display:inline-block;vertical-align:top;max-width:100%}
figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:12px;color:#555;max-width:900px}
table{border-collapse:collapse;margin:10px 0;font-size:12.5px}
th,td{border:1px solid #ddd;padding:3px 8px}th{background:#f0f3f6;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.note{color:#6b4e00;background:#fff8e1;border-left:3px solid #f0b400;padding:6px 10px;font-size:13px}
.key{font-size:15px;background:#eef6ee;border-left:3px solid #2e8b57;padding:8px 12px}
.warn{font-size:15px;background:#fdecea;border-left:3px solid #c0392b;padding:8px 12px}
.swatch{display:inline-block;width:10px;height:10px;border:1px solid #555;margin-right:5px;vertical-align:middle}
details{margin:8px 0}summary{cursor:pointer;color:#1f5f8b}
"""


def esc(text: object) -> str:
    """HTML-escape any value's text."""
    return html.escape(str(text), quote=True)


def png_data_uri(png: bytes | str | os.PathLike[str]) -> str:
    """``data:image/png;base64,...`` for PNG bytes or a PNG file; raises :class:`DataError` if not a PNG."""
    data = Path(png).read_bytes() if not isinstance(png, bytes) else png
    if not data.startswith(PNG_SIGNATURE):
        where = "" if isinstance(png, bytes) else f"{png}: "
        raise DataError(f"{where}not a PNG image, cannot embed it in the report")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure_html(png: bytes | str | os.PathLike[str], alt: str, caption: str = "", width: int | None = None) -> str:
    """A ``<figure>`` with the PNG embedded and an optional caption (plain text, escaped)."""
    style = f' style="max-width:{int(width)}px"' if width else ""
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure{style}><img alt="{esc(alt)}" src="{png_data_uri(png)}">{cap}</figure>'


def paragraph(text: str, cls: str | None = None) -> str:
    """A ``<p>`` of plain text (escaped), optionally with a CSS class (``note``, ``key``, ``warn``)."""
    c = f' class="{esc(cls)}"' if cls else ""
    return f"<p{c}>{esc(text)}</p>"


def swatch(rgb: Sequence[int]) -> str:
    """A small colour square (raw HTML, for table cells passed with ``raw=True``)."""
    r, g, b = (int(v) for v in rgb[:3])
    return f'<span class="swatch" style="background:rgb({r},{g},{b})"></span>'


@dataclass
class Cell:
    """A table cell: ``text`` is escaped unless ``raw``; ``num`` right-aligns it."""

    text: str
    num: bool = False
    raw: bool = False


def table_html(headers: Sequence[str], rows: Sequence[Sequence[Cell | str | float | int | None]],
               caption: str = "") -> str:
    """An HTML table; plain values become cells (numbers right-aligned, None shown as ``-``)."""
    def cell(v: Cell | str | float | int | None) -> str:
        if not isinstance(v, Cell):
            if v is None:
                v = Cell("-", num=True)
            elif isinstance(v, (int, float)):
                v = Cell(f"{v:.2f}" if isinstance(v, float) else str(v), num=True)
            else:
                v = Cell(str(v))
        body = v.text if v.raw else esc(v.text)
        return f'<td class="num">{body}</td>' if v.num else f"<td>{body}</td>"

    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(cell(c) for c in r) + "</tr>" for r in rows)
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


@dataclass
class Section:
    """One section of the page: ``parts`` are HTML fragments built with the helpers above."""

    id: str
    title: str
    parts: list[str] = field(default_factory=list)

    def add(self, *fragments: str) -> Section:
        self.parts.extend(fragments)
        return self

    def unavailable(self, reason: str) -> Section:
        """Mark the section as not applicable, saying why."""
        self.parts.append(paragraph(f"Not available: {reason}", "note"))
        return self


def render_page(title: str, sections: Sequence[Section], header_lines: Sequence[str] = ()) -> str:
    """The whole page as a string: header, table of contents, then the sections in order."""
    ids = [s.id for s in sections]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate section ids: {ids}")
    nav = "".join(f'<a href="#{esc(s.id)}">{esc(s.title)}</a>' for s in sections)
    head_p = "".join(f"<p>{esc(line)}</p>" for line in header_lines)
    body = "\n".join(f'<section id="{esc(s.id)}"><h2>{esc(s.title)}</h2>\n' + "\n".join(s.parts) + "\n</section>"
                     for s in sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            f"<header><h1>{esc(title)}</h1>{head_p}</header>\n<nav id=\"toc\">{nav}</nav>\n<main>\n{body}\n</main>\n"
            "</body>\n</html>\n")
