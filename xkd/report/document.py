"""A tiny document model rendered twice: Markdown (figures as files) and self-contained HTML
(figures embedded as base64 PNG, inline CSS, no external resource)."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from typing import Any

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1200px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.4}
h1{border-bottom:2px solid #444}h2{border-bottom:1px solid #bbb;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0;font-size:.85em}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#f0f0f0}td:first-child,th:first-child,td.txt{text-align:left}
tr.control td{color:#666;font-style:italic}
figure{margin:1em 0}figcaption{font-size:.85em;color:#555}
img{max-width:100%}code{background:#f4f4f4;padding:0 3px}
.note{font-size:.85em;color:#555}
"""


@dataclass
class Cell:
    text: str
    score: float | None = None  # 0 (worst) .. 1 (best) -> background colour
    bold: bool = False


@dataclass
class Table:
    header: list[str]
    rows: list[list[Cell | str]]
    row_classes: list[str] = field(default_factory=list)
    caption: str = ""


@dataclass
class Document:
    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def h(self, text: str, level: int = 2) -> None:
        self.blocks.append(("h", (level, text)))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def items(self, lines: list[str]) -> None:
        self.blocks.append(("ul", lines))

    def table(self, t: Table) -> None:
        self.blocks.append(("table", t))

    def figure(self, name: str, png: bytes | None, caption: str) -> None:
        if png:
            self.blocks.append(("fig", (name, png, caption)))

    # ------------------------------------------------------------------ markdown
    def markdown(self, fig_dir: str = "figures") -> str:
        out = [f"# {self.title}", ""]
        for kind, b in self.blocks:
            if kind == "h":
                out += ["#" * b[0] + " " + b[1], ""]
            elif kind == "p":
                out += [b, ""]
            elif kind == "ul":
                out += [f"- {line}" for line in b] + [""]
            elif kind == "table":
                out += _md_table(b) + [""]
            elif kind == "fig":
                name, _, cap = b
                out += [f"![{cap}]({fig_dir}/{name}.png)", "", f"*{cap}*", ""]
        return "\n".join(out).rstrip() + "\n"

    # ------------------------------------------------------------------ html
    def html(self) -> str:
        e = html.escape
        out = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
               f"<title>{e(self.title)}</title><style>{CSS}</style></head><body>",
               f"<h1>{e(self.title)}</h1>"]
        for kind, b in self.blocks:
            if kind == "h":
                out.append(f"<h{b[0]}>{_inline(b[1])}</h{b[0]}>")
            elif kind == "p":
                out.append(f"<p>{_inline(b)}</p>")
            elif kind == "ul":
                out.append("<ul>" + "".join(f"<li>{_inline(x)}</li>" for x in b) + "</ul>")
            elif kind == "table":
                out.append(_html_table(b))
            elif kind == "fig":
                name, png, cap = b
                data = base64.b64encode(png).decode("ascii")
                out.append(f"<figure><img alt=\"{e(name)}\" src=\"data:image/png;base64,{data}\">"
                           f"<figcaption>{_inline(cap)}</figcaption></figure>")
        out.append("</body></html>")
        return "\n".join(out) + "\n"

    def figures(self) -> dict[str, bytes]:
        return {b[0]: b[1] for kind, b in self.blocks if kind == "fig"}


def _inline(text: str) -> str:
    """Escape, then render `code` spans (the only inline Markdown the report uses)."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _text(c: Cell | str) -> str:
    return c.text if isinstance(c, Cell) else str(c)


def _md_table(t: Table) -> list[str]:
    lines = []
    if t.caption:
        lines += [f"*{t.caption}*", ""]
    lines.append("| " + " | ".join(t.header) + " |")
    lines.append("|" + "|".join("---" for _ in t.header) + "|")
    for row in t.rows:
        cells = []
        for c in row:
            s = _text(c).replace("|", "\\|")
            cells.append(f"**{s}**" if isinstance(c, Cell) and c.bold and s else s)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _colour(score: float) -> str:
    """Red (0, worst) -> white (0.5) -> green (1, best), pale."""
    s = min(1.0, max(0.0, score))
    if s >= 0.5:
        k = (s - 0.5) * 2
        r, g, b = 255 - int(55 * k), 255 - int(15 * k), 255 - int(55 * k)
    else:
        k = (0.5 - s) * 2
        r, g, b = 255 - int(7 * k), 255 - int(55 * k), 255 - int(55 * k)
    return f"#{r:02x}{g:02x}{b:02x}"


def _html_table(t: Table) -> str:
    e = html.escape
    out = ["<table>"]
    if t.caption:
        out.append(f"<caption class=\"note\">{_inline(t.caption)}</caption>")
    out.append("<tr>" + "".join(f"<th>{e(h)}</th>" for h in t.header) + "</tr>")
    for i, row in enumerate(t.rows):
        cls = t.row_classes[i] if i < len(t.row_classes) and t.row_classes[i] else ""
        cells = []
        for c in row:
            if isinstance(c, Cell):
                style = f" style=\"background:{_colour(c.score)}\"" if c.score is not None else ""
                body = f"<b>{e(c.text)}</b>" if c.bold else e(c.text)
                cells.append(f"<td{style}>{body}</td>")
            else:
                cells.append(f"<td>{e(str(c))}</td>")
        out.append(f"<tr class=\"{cls}\">" + "".join(cells) + "</tr>" if cls else "<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)
