"""A small, dependency-free HTML report writer.

A :class:`Report` owns an output directory laid out as::

    DIR/index.html        the report (no scripts, no external resources)
    DIR/fig/*.png         the figures
    DIR/data/*.csv|json   the numbers behind every figure and table
    DIR/summary.json      the key numbers of every section, in one file

Sections add text, figures, tables and data files in the order they should appear.
"""

from __future__ import annotations

import csv
import html
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Report", "Section", "fmt"]


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: numbers to ``digits`` significant digits, ``None`` as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "∞" if value > 0 else "−∞"
        return f"{value:.{digits}g}"
    return str(value)


def _jsonable(obj: Any) -> Any:
    """JSON without NaN/Infinity tokens (which browsers' JSON.parse rejects): they become strings."""
    if isinstance(obj, float):
        if math.isnan(obj):
            return "nan"
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return obj
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return _jsonable(obj.item())
    return obj


@dataclass
class _Block:
    kind: str  # "html", "figure", "table"
    payload: dict[str, Any]


@dataclass
class Section:
    """One part of the report; build it with :meth:`text`, :meth:`figure`, :meth:`table`,
    :meth:`csv` and :meth:`json` in reading order."""

    report: Report
    id: str
    title: str
    blocks: list[_Block] = field(default_factory=list)
    data_files: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def text(self, markup: str) -> None:
        """A paragraph of trusted HTML (written by the lab itself)."""
        self.blocks.append(_Block("html", {"markup": markup}))

    def figure(self, fig: Any, name: str, caption: str, data: Sequence[str] = ()) -> str:
        """Save a matplotlib figure as ``fig/<name>.png`` and show it; returns the path."""
        rel = f"fig/{name}.png"
        path = self.report.out / rel
        fig.savefig(path, dpi=self.report.dpi)
        self.report.figures.append(rel)
        self.blocks.append(_Block("figure", {"src": rel, "caption": caption, "data": list(data)}))
        return rel

    def table(self, columns: Sequence[str], rows: Iterable[Sequence[Any]], caption: str = "") -> None:
        """An HTML table; cells are formatted with :func:`fmt`."""
        self.blocks.append(
            _Block("table", {"columns": list(columns), "rows": [list(r) for r in rows], "caption": caption})
        )

    def csv(self, name: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
        """Write ``data/<name>.csv`` (full precision); returns its relative path."""
        rel = f"data/{name}.csv"
        with open(self.report.out / rel, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(columns)
            for row in rows:
                writer.writerow([repr(float(v)) if isinstance(v, float) else v for v in row])
        self.data_files.append(rel)
        return rel

    def json(self, name: str, obj: Any) -> str:
        """Write ``data/<name>.json``; returns its relative path."""
        rel = f"data/{name}.json"
        (self.report.out / rel).write_text(json.dumps(_jsonable(obj), indent=1))
        self.data_files.append(rel)
        return rel


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; line-height: 1.5; color: #222; }
h1 { margin-bottom: 0.2em; }
h2 { border-bottom: 2px solid #ddd; padding-bottom: 0.2em; margin-top: 2.2em; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.92em; color: #444; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
caption { caption-side: top; text-align: left; font-size: 0.92em; color: #444; padding-bottom: 0.3em; }
code { background: #f4f4f4; padding: 0 0.2em; }
.meta { color: #555; font-size: 0.92em; }
.data { font-size: 0.85em; color: #555; }
nav ol { columns: 2; }
"""


class Report:
    """The report being written to ``out``."""

    def __init__(self, out: str | Path, title: str, dpi: int = 100) -> None:
        self.out = Path(out)
        self.title = title
        self.dpi = dpi
        (self.out / "fig").mkdir(parents=True, exist_ok=True)
        (self.out / "data").mkdir(parents=True, exist_ok=True)
        self.sections: list[Section] = []
        self.figures: list[str] = []
        self.meta: dict[str, Any] = {}

    def section(self, id: str, title: str) -> Section:
        s = Section(self, id, title)
        self.sections.append(s)
        return s

    # ------------------------------------------------------------------ writing
    def write(self) -> Path:
        """Write ``index.html`` and ``summary.json``; returns the path of ``index.html``."""
        summary = {
            "meta": self.meta,
            "figures": self.figures,
            "sections": {
                s.id: {"title": s.title, "seconds": s.seconds, "data": s.data_files, **s.summary}
                for s in self.sections
            },
        }
        (self.out / "summary.json").write_text(json.dumps(_jsonable(summary), indent=1))
        path = self.out / "index.html"
        path.write_text(self._html())
        return path

    def _html(self) -> str:
        e = html.escape
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{e(self.title)}</title><style>{_CSS}</style></head><body>",
            f"<h1>{e(self.title)}</h1>",
        ]
        if self.meta:
            items = ", ".join(f"{e(str(k))}: <code>{e(fmt(v))}</code>" for k, v in self.meta.items())
            parts.append(
                f'<p class="meta">{items}. Key numbers: <a href="summary.json">summary.json</a>.</p>'
            )
        parts.append("<nav><ol>")
        parts.extend(f'<li><a href="#{e(s.id)}">{e(s.title)}</a></li>' for s in self.sections)
        parts.append("</ol></nav>")
        for s in self.sections:
            parts.append(f'<section id="{e(s.id)}"><h2>{e(s.title)}</h2>')
            for block in s.blocks:
                parts.append(self._block(block))
            if s.data_files:
                links = " · ".join(f'<a href="{e(f)}">{e(Path(f).name)}</a>' for f in s.data_files)
                parts.append(f'<p class="data">Data: {links} (computed in {s.seconds:.1f} s).</p>')
            parts.append("</section>")
        parts.append("</body></html>\n")
        return "\n".join(parts)

    @staticmethod
    def _block(block: _Block) -> str:
        e = html.escape
        p = block.payload
        if block.kind == "html":
            return f"<p>{p['markup']}</p>"
        if block.kind == "figure":
            alt = e(p["caption"].split(". ")[0])
            return (
                f'<figure><img src="{e(p["src"])}" alt="{alt}" loading="eager">'
                f"<figcaption>{e(p['caption'])}</figcaption></figure>"
            )
        rows = []
        for row in p["rows"]:
            rows.append("<tr>" + "".join(f"<td>{e(fmt(c))}</td>" for c in row) + "</tr>")
        head = "<tr>" + "".join(f"<th>{e(c)}</th>" for c in p["columns"]) + "</tr>"
        caption = f"<caption>{e(p['caption'])}</caption>" if p["caption"] else ""
        return f"<table>{caption}<thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"
