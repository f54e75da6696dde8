"""A :class:`Report` to one self-contained HTML file, or to Markdown with its images beside it (Jinja2)."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

from clipcompare.fileio import atomic_write_bytes, make_dirs
from clipcompare.report.blocks import Figure, Gallery, MapThumb, Report, Tile


def _environment(autoescape: bool) -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("clipcompare.report", "templates"),
        autoescape=autoescape, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined,
    )
    env.filters["md"] = md_text
    env.filters["md_code"] = md_code
    return env


# inline Markdown syntax (emphasis, code, links, headings' closing #, table pipes, strikethrough) and the
# backslash that escapes it; < > & become entities, so no name opens an HTML tag or entity. An "_" inside
# a word (IMAGENET1K_V1, img_0.JPEG) never emphasises in CommonMark, so it stays as it is, readable.
_MD_PUNCTUATION = re.compile(r"([\\`*\[\]#|~]|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z]))")


def md_text(text: Any) -> str:
    """Any text (titles, class and file names, table cells) as literal Markdown: one line, nothing interpreted."""
    escaped = html.escape(" ".join(str(text).splitlines()), quote=False)
    return _MD_PUNCTUATION.sub(r"\\\1", escaped)


def md_code(text: Any) -> str:
    """Text as one Markdown code span, fenced by more backticks than it holds in a row (CommonMark)."""
    text = " ".join(str(text).splitlines())
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "x"


def data_uri(obj: Figure | Tile | MapThumb) -> str:
    """``data:`` URI of a figure's PNG or a tile's JPEG: nothing for the browser to fetch."""
    if isinstance(obj, Figure):
        return "data:image/png;base64," + base64.b64encode(obj.png).decode("ascii")
    return "data:image/jpeg;base64," + base64.b64encode(obj.jpeg or b"").decode("ascii")


def render_html(report: Report) -> str:
    return _environment(True).get_template("report.html.j2").render(report=report, src=data_uri)


def write_html(report: Report, path: Path) -> Path:
    """One HTML file, every image embedded; written atomically."""
    path = Path(path)
    make_dirs(path.parent)
    atomic_write_bytes(path, render_html(report).encode("utf-8"))
    return path


def write_markdown(report: Report, path: Path) -> Path:
    """``path`` (report.md) plus its PNG figures and JPEG thumbnails in ``<stem>_files/`` beside it."""
    path = Path(path)
    assets = path.parent / f"{path.stem}_files"
    make_dirs(assets)
    names: dict[int, str] = {}
    for s, section in enumerate(report.sections, 1):
        for b, block in enumerate(section.blocks, 1):
            stem = f"s{s}-{b:02d}-{_slug(block.title if hasattr(block, 'title') else '')}"
            if isinstance(block, Figure):
                names[id(block)] = _write_asset(assets / f"{stem}.png", block.png)
            elif isinstance(block, Gallery):
                for t, tile in enumerate(block.tiles, 1):
                    if tile.jpeg is not None:
                        names[id(tile)] = _write_asset(assets / f"{stem}-{t:02d}.jpg", tile.jpeg)
                    for k, thumb in enumerate(tile.maps, 1):
                        names[id(thumb)] = _write_asset(assets / f"{stem}-{t:02d}-map{k}.jpg", thumb.jpeg)
    prefix = assets.name

    def src(obj: Figure | Tile | MapThumb) -> str:
        return quote(f"{prefix}/{names[id(obj)]}")  # the --out name may hold spaces or parentheses

    text = _environment(False).get_template("report.md.j2").render(report=report, src=src)
    atomic_write_bytes(path, text.encode("utf-8"))
    return path


def _write_asset(path: Path, data: bytes) -> str:
    atomic_write_bytes(path, data)
    return path.name
