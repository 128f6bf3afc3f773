"""The report as a document: blocks (headings, paragraphs, bullets, tables, figures) rendered to Markdown and to one
self-contained HTML page; tables and figures are written to files as they are added, with the CSV behind each.
"""

from __future__ import annotations

import base64
import html
import math
import re
import sys
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd

from analysis import plots

@dataclass
class Doc:
    """The report as a list of blocks, rendered to Markdown and HTML; figures and tables are written as added."""

    root: Path
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        """A section heading."""
        self.blocks.append(("h", (level, text)))

    def para(self, text: str) -> None:
        """A paragraph (may contain **bold** and `code`)."""
        self.blocks.append(("p", text))

    def bullets(self, items: Iterable[str]) -> None:
        """A bulleted list."""
        items = list(items)
        if items:
            self.blocks.append(("ul", items))

    def table(self, df: pd.DataFrame, name: str, caption: str = "") -> None:
        """A table, also written to ``tables/<name>.csv`` (full precision)."""
        path = self.root / "tables" / f"{name}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(path, index=False)
        self.blocks.append(("table", (df, f"tables/{name}.csv", caption)))

    def figure(self, make: Callable[[], plots.Plot], prefix: str, what: str) -> None:
        """Draw one figure; write its PNG/SVG and the CSV(s) behind it. A :class:`plots.Skip` (or a failure)
        becomes a note saying why the figure is missing."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                plot = make()
        except plots.Skip as e:
            self.para(f"*{what}: skipped ({e}).*")
            return
        except Exception as e:  # noqa: BLE001 - one bad figure should not lose the whole report; say so loudly
            print(f"warning: {what} could not be drawn: {type(e).__name__}: {e}", file=sys.stderr)
            traceback.print_exc(file=sys.stderr)
            self.para(f"*{what}: could not be drawn ({type(e).__name__}: {e}).*")
            return
        name = f"{prefix}{plot.name}"
        plots.save_figure(plot.fig, self.root / "figures", name)
        csvs = []
        for tname, df in plot.tables.items():
            path = self.root / "tables" / f"{prefix}{tname}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            df.to_csv(path, index=False)
            csvs.append(f"tables/{path.name}")
        self.blocks.append(("figure", (f"figures/{name}", what, plot.caption, csvs)))

    # -- rendering -------------------------------------------------------------------------------------------
    def markdown(self, base: str = "") -> str:
        """The report as Markdown (figures linked from ``base + "figures/"``, tables from ``base + "tables/"``)."""
        out = []
        for kind, b in self.blocks:
            if kind == "h":
                out.append("#" * b[0] + " " + b[1])
            elif kind == "p":
                out.append(b)
            elif kind == "ul":
                out.append("\n".join(f"- {x}" for x in b))
            elif kind == "table":
                df, csv, caption = b
                out.append((f"{caption}\n\n" if caption else "") + _md_table(df)
                           + f"\n\n<sub>data: [{csv}]({base}{csv})</sub>")
            elif kind == "figure":
                stem, what, caption, csvs = b
                links = ", ".join(f"[{c}]({base}{c})" for c in csvs)
                out.append(f"![{what}]({base}{stem}.png)\n\n*{what}.* {caption} "
                           f"<sub>([svg]({base}{stem}.svg); data: {links})</sub>")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        """The report as one self-contained HTML page (figures embedded as base64 PNG)."""
        body = []
        for kind, b in self.blocks:
            if kind == "h":
                body.append(f"<h{b[0]}>{_inline_html(b[1])}</h{b[0]}>")
            elif kind == "p":
                body.append(f"<p>{_inline_html(b)}</p>")
            elif kind == "ul":
                body.append("<ul>" + "".join(f"<li>{_inline_html(x)}</li>" for x in b) + "</ul>")
            elif kind == "table":
                df, csv, caption = b
                cap = f"<caption>{_inline_html(caption)}</caption>" if caption else ""
                body.append(f"<div class='t'><table>{cap}{_html_table(df)}</table>"
                            f"<div class='src'>data: {html.escape(csv)}</div></div>")
            elif kind == "figure":
                stem, what, caption, csvs = b
                data = base64.b64encode((self.root / f"{stem}.png").read_bytes()).decode("ascii")
                body.append(f"<figure><img alt='{html.escape(what)}' src='data:image/png;base64,{data}'>"
                            f"<figcaption><b>{html.escape(what)}.</b> {_inline_html(caption)} "
                            f"<span class='src'>(data: {html.escape(', '.join(csvs))})</span></figcaption></figure>")
        return _HTML.format(title=html.escape(title), body="\n".join(body))


_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1400px; margin: 2em auto; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: .5em 0; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
th {{ background: #f3f3f3; }} td:first-child, th:first-child {{ text-align: left; }}
caption {{ text-align: left; font-style: italic; padding-bottom: .3em; }}
figure {{ margin: 1.5em 0; }} img {{ max-width: 100%; }}
.src {{ color: #777; font-size: 0.8em; }} .t {{ overflow-x: auto; }}
code {{ background: #f3f3f3; padding: 0 3px; }}
</style></head><body>
{body}
</body></html>
"""


def fmt(v: Any) -> str:
    """A table cell: numbers to 4 significant digits, missing values empty."""
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        if math.isinf(v):
            return "∞" if v > 0 else "−∞"
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:,.0f}"
    if isinstance(v, (int, np.integer)):
        return f"{v:,}" if abs(v) >= 1e5 else str(v)
    return str(v)


def _md_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "*(empty)*"
    cols = [str(c) for c in df.columns]
    esc = lambda s: s.replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(esc(c) for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(esc(fmt(v)) for v in row) + " |")
    return "\n".join(lines)


def _html_table(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(v))}</td>" for v in r) + "</tr>"
                   for r in df.itertuples(index=False))
    return f"<thead><tr>{head}</tr></thead><tbody>{rows}</tbody>"


def _inline_html(text: str) -> str:
    """Escape, then render the little Markdown used in paragraphs: **bold**, *italic*, `code`."""
    s = html.escape(text)
    s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
    s = re.sub(r"\*(.+?)\*", r"<i>\1</i>", s)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", s)


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "study"
