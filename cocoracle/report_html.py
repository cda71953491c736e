"""report.md as one HTML page, so that Snakemake's HTML report (which shows HTML inline but only offers markdown
as a download) shows the results tables. It renders the markdown subset cocoracle/report.py writes: headings,
paragraphs, pipe tables, figure lines, `code` and **bold**. Figures become a line naming the PNG (they are items
of the HTML report themselves), which keeps the page, and the report that embeds it, small."""
from __future__ import annotations

import html
import re

FIGURE = re.compile(r"!\[([^\]]*)\]\(([^)]+)\)")
INLINE = [(re.compile(r"`([^`]+)`"), r"<code>\1</code>"), (re.compile(r"\*\*(.+?)\*\*"), r"<strong>\1</strong>")]
STYLE = ("body{font-family:sans-serif;font-size:14px;margin:1.5em;max-width:90em}"
         "table{border-collapse:collapse;margin:0.5em 0 1em}th,td{border:1px solid #bbb;padding:2px 6px}"
         "th{background:#eee;text-align:left}td{white-space:nowrap}code{background:#f3f3f3}"
         ".figure{color:#555;font-style:italic}")


def _inline(text: str) -> str:
    text = html.escape(text, quote=False)
    for pattern, replacement in INLINE:
        text = pattern.sub(replacement, text)
    return text


def _cells(line: str, tag: str) -> str:
    cells = line.strip().removeprefix("|").removesuffix("|").split("|")
    return "<tr>" + "".join(f"<{tag}>{_inline(cell.strip())}</{tag}>" for cell in cells) + "</tr>"


def _block(block: str) -> str:
    lines = block.splitlines()
    if block.startswith("#"):
        level = len(block) - len(block.lstrip("#"))
        return f"<h{level}>{_inline(block[level:].strip())}</h{level}>"
    if all(line.startswith("|") for line in lines):  # a pipe table: head, separator, rows
        return ("<table><thead>" + _cells(lines[0], "th") + "</thead><tbody>"
                + "".join(_cells(line, "td") for line in lines[2:]) + "</tbody></table>")
    figure = FIGURE.fullmatch(block.strip())
    if figure:
        return f'<p class="figure">Figure: {_inline(figure[1])} ({_inline(figure[2])})</p>'
    return f"<p>{_inline(block)}</p>"


def markdown_page(markdown: str, title: str) -> str:
    """The HTML page of a markdown text written by cocoracle/report.py."""
    blocks = [block.strip("\n") for block in re.split(r"\n\s*\n", markdown) if block.strip()]
    return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head>\n<body>\n" + "\n".join(_block(b) for b in blocks) + "\n</body></html>\n")
