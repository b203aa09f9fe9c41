"""A small report document written both as Markdown and as a self-contained HTML page.

The report is a list of blocks (headings, paragraphs, tables, images, code) kept as data, so the
two renderings come from the same content and never disagree.
"""

from __future__ import annotations

import dataclasses
import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_unlearn.integrity import atomic_write

__all__ = ["Report", "format_number"]


def format_number(value: Any, digits: int = 3) -> str:
    """Format a table cell: floats with ``digits`` significant digits, None as an en dash.

    Args:
        value: the value.
        digits: significant digits for floats.

    Returns:
        The text of the cell.

    Example:
        >>> format_number(0.123456), format_number(12345.6), format_number(None), format_number(3)
        ('0.123', '1.23e+04', '–', '3')
    """
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.{digits}g}"
    return str(value)


@dataclasses.dataclass
class _Block:
    kind: str
    payload: Any


class Report:
    """Collect headings, paragraphs, tables and images; write ``NAME.md`` and ``NAME.html``.

    Images are referenced by paths relative to the output directory, so the directory can be
    moved or published as a whole.

    Args:
        title: the report's title.

    Example:
        >>> import tempfile, pathlib
        >>> r = Report("Demo")
        >>> r.add_table(["set", "P"], [["low", 0.5], ["high", 12.0]])
        >>> out = pathlib.Path(tempfile.mkdtemp())
        >>> md, page = r.write(out)
        >>> "| low | 0.5 |" in md.read_text(), "<td>12</td>" in page.read_text()
        (True, True)
    """

    def __init__(self, title: str) -> None:
        self.title = title
        self.blocks: list[_Block] = []

    def add_heading(self, text: str, level: int = 2) -> None:
        """Add a section heading (level 2 or deeper; the title is level 1)."""
        self.blocks.append(_Block("heading", (max(2, int(level)), text)))

    def add_paragraph(self, text: str) -> None:
        """Add a paragraph of plain text (inline backticks become code)."""
        self.blocks.append(_Block("paragraph", text))

    def add_bullets(self, items: Sequence[str]) -> None:
        """Add a bulleted list."""
        self.blocks.append(_Block("bullets", list(items)))

    def add_code(self, text: str) -> None:
        """Add a code block (for example the command that produced the report)."""
        self.blocks.append(_Block("code", text))

    def add_table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Add a table; cells are formatted with :func:`format_number`.

        Raises:
            ValueError: a row's length differs from the header's.
        """
        for row in rows:
            if len(row) != len(headers):
                raise ValueError(
                    f"Expected every row to have {len(headers)} cells, but got {len(row)}: {row}."
                )
        cells = [[format_number(c) for c in row] for row in rows]
        self.blocks.append(_Block("table", ([str(h) for h in headers], cells)))

    def add_image(self, path: str, caption: str) -> None:
        """Add an image by its path relative to the report's directory."""
        self.blocks.append(_Block("image", (path, caption)))

    def to_markdown(self) -> str:
        """Render as Markdown."""
        lines = [f"# {self.title}", ""]
        for block in self.blocks:
            if block.kind == "heading":
                level, text = block.payload
                lines += ["#" * level + " " + text, ""]
            elif block.kind == "paragraph":
                lines += [block.payload, ""]
            elif block.kind == "bullets":
                lines += [f"- {item}" for item in block.payload] + [""]
            elif block.kind == "code":
                lines += ["```text", block.payload, "```", ""]
            elif block.kind == "table":
                headers, rows = block.payload
                lines.append("| " + " | ".join(headers) + " |")
                lines.append("|" + "|".join("---" for _ in headers) + "|")
                lines += ["| " + " | ".join(row) + " |" for row in rows]
                lines.append("")
            elif block.kind == "image":
                path, caption = block.payload
                lines += [f"![{caption}]({path})", "", f"*{caption}*", ""]
        return "\n".join(lines)

    @staticmethod
    def _inline(text: str) -> str:
        parts = html.escape(text).split("`")
        return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))

    def to_html(self) -> str:
        """Render as a self-contained HTML page (images are linked, not embedded)."""
        esc = html.escape
        body = [f"<h1>{esc(self.title)}</h1>"]
        for block in self.blocks:
            if block.kind == "heading":
                level, text = block.payload
                body.append(f"<h{level}>{esc(text)}</h{level}>")
            elif block.kind == "paragraph":
                body.append(f"<p>{self._inline(block.payload)}</p>")
            elif block.kind == "bullets":
                items = "".join(f"<li>{self._inline(i)}</li>" for i in block.payload)
                body.append(f"<ul>{items}</ul>")
            elif block.kind == "code":
                body.append(f"<pre><code>{esc(block.payload)}</code></pre>")
            elif block.kind == "table":
                headers, rows = block.payload
                head = "".join(f"<th>{esc(h)}</th>" for h in headers)
                trs = "".join(
                    "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows
                )
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>")
            elif block.kind == "image":
                path, caption = block.payload
                body.append(
                    f'<figure><img src="{esc(path)}" alt="{esc(caption)}">'
                    f"<figcaption>{esc(caption)}</figcaption></figure>"
                )
        style = (
            "body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
            "table{border-collapse:collapse;margin:1em 0}"
            "td,th{border:1px solid #bbb;padding:.25em .6em;text-align:right}"
            "img{max-width:100%}figcaption{font-style:italic;color:#444}"
            "pre{background:#f4f4f4;padding:.6em;overflow-x:auto}"
        )
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{esc(self.title)}</title><style>{style}</style></head><body>\n"
            + "\n".join(body)
            + "\n</body></html>\n"
        )

    def write(self, out_dir: str | Path, name: str = "report") -> tuple[Path, Path]:
        """Write ``out_dir/NAME.md`` and ``out_dir/NAME.html``.

        Args:
            out_dir: the output directory (created if missing).
            name: the file stem.

        Returns:
            The Markdown and HTML paths.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        md, page = out / f"{name}.md", out / f"{name}.html"
        for path, text in ((md, self.to_markdown()), (page, self.to_html())):
            with atomic_write(path, "w") as fh:
                fh.write(text)
        return md, page
