"""Figures and tables: labelled image grids (PNG), HTML pages of sections, HTML and Markdown tables, and the
one cell format they share (`fmt`)."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont

from .files import write_text_atomic


def to_pil(img: torch.Tensor) -> Image.Image:
    """(3, H, W) in [0, 1] -> PIL RGB."""
    arr = (img.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr, "RGB")


def save_png(img: torch.Tensor, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_pil(img).save(path)
    return path


def _wrapped(text: str, font: Any, width: int) -> list[str]:
    """`text` in lines no wider than `width` px (words kept whole unless one alone is wider)."""
    lines: list[str] = []
    for para in text.split("\n"):
        line = ""
        for word in para.split(" "):
            trial = f"{line} {word}" if line else word
            if font.getlength(trial) <= width or not line:
                line = trial
            else:
                lines.append(line)
                line = word
            while font.getlength(line) > width and len(line) > 1:  # one word wider than the figure: split it
                cut = max(1, int(len(line) * width / font.getlength(line)))
                lines.append(line[:cut])
                line = line[cut:]
        lines.append(line)
    return lines


LINE = 14  # px per line of the default font


def grid(
    rows: Sequence[Sequence[torch.Tensor]] | torch.Tensor,
    *,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    cell: int | None = None,
    pad: int = 2,
    title: str | None = None,
) -> Image.Image:
    """A labelled grid: rows[r][c] is an image (3, H, W) in [0, 1]; cells are upscaled to `cell` px (nearest).
    A title wider than the grid wraps onto more lines instead of being cut; a row label may hold several lines
    ("\n"), centred on its row (a name, then its numbers, keep the label column narrow)."""
    rows = [list(r) for r in rows]
    n_cols = max(len(r) for r in rows)
    h = rows[0][0].shape[-2]
    cell = cell or max(64, h)
    font = ImageFont.load_default()
    label_lines = [str(s).split("\n") for s in row_labels] if row_labels else []
    left = 0 if not row_labels else 8 + int(max(font.getlength(x) for lines in label_lines for x in lines))
    width = left + n_cols * (cell + pad) + pad
    title_lines = _wrapped(title, font, width - 2 * pad) if title else []
    top = (18 if col_labels else 0) + LINE * len(title_lines) + (4 if title_lines else 0)
    height = top + len(rows) * (cell + pad) + pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(title_lines):
        draw.text((pad, 2 + i * LINE), line, fill="black", font=font)
    if col_labels:
        y = top - 16
        for c, lab in enumerate(col_labels):
            draw.text(
                (left + pad + c * (cell + pad), y), str(lab)[: max(4, cell // 6)], fill="black", font=font
            )
    for r, row in enumerate(rows):
        y = top + pad + r * (cell + pad)
        if row_labels:
            lines = label_lines[r]
            for k, text in enumerate(lines):
                draw.text(
                    (4, y + cell // 2 - 6 + (2 * k - len(lines) + 1) * LINE // 2),
                    text,
                    fill="black",
                    font=font,
                )
        for c, img in enumerate(row):
            pil = to_pil(img).resize((cell, int(cell * img.shape[-2] / img.shape[-1])), Image.NEAREST)
            canvas.paste(pil, (left + pad + c * (cell + pad), y))
    return canvas


def with_caption(image: Image.Image, caption: str, min_width: int = 360) -> Image.Image:
    """`image` with `caption` below it (wrapped to the figure's width, at least `min_width` px): what a figure
    shows and how it was drawn travel with the PNG, whoever opens it."""
    font = ImageFont.load_default()
    width = max(image.width, min_width)
    lines = _wrapped(caption, font, width - 8)
    canvas = Image.new("RGB", (width, image.height + 6 + LINE * len(lines)), "white")
    canvas.paste(image.convert("RGB"), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((4, image.height + 3 + i * LINE), line, fill="dimgray", font=font)
    return canvas


def sample_grid(original: torch.Tensor, samples: torch.Tensor, title: str | None = None) -> Image.Image:
    """The paper's Figure 1 layout: the original, then its samples. original (3,H,W); samples (N,3,H,W)."""
    cols = ["original"] + [f"sample {i}" for i in range(samples.shape[0])]
    return grid([[original, *samples]], col_labels=cols, title=title)


def number(x: float | torch.Tensor) -> float | None:
    """A JSON-safe float (NaN/inf -> None)."""
    v = float(x)
    return v if math.isfinite(v) else None


def fmt(value: object, digits: int = 2) -> str:
    """A table cell: floats (and 0-d tensors) to `digits` decimals (one above 1e4), None/NaN/inf as 'n/a'."""
    if isinstance(value, torch.Tensor):
        value = float(value)
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1e4 else f"{value:.1f}"
    return str(value)


def html_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """An HTML table; cells are escaped as given (format numbers with `fmt` first)."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]], digits: int = 4) -> str:
    """A GitHub-flavoured Markdown table of `fmt` cells; '|' in cells is escaped."""

    def cell(v: object) -> str:
        return fmt(v, digits).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_report(
    data: dict, json_path: str | Path, title: str, tables: Sequence[str], notes: Sequence[str] = ()
) -> tuple[Path, Path]:
    """Write `data` to json_path and `# title`, the tables and notes to json_path with suffix .md."""
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    md_path = json_path.with_suffix(".md")
    body = [f"# {title}\n", *tables, *(f"{n}\n" for n in notes)]
    # each written whole (temporary file + rename): a full disk leaves the earlier file, never a 0-byte one
    write_text_atomic(md_path, "\n".join(body))
    write_text_atomic(json_path, json.dumps(data, indent=2) + "\n")
    return json_path, md_path


@dataclass
class Section:
    """One part of an HTML page: its heading, inner HTML, and the numbers it adds to results.json."""

    heading: str
    body: str
    numbers: dict = field(default_factory=dict)


def html_page(title: str, sections: Sequence[Section], *, notice: str | None = None) -> str:
    """A self-contained page of `sections`; `notice` (inner HTML) is a boxed warning shown right under the
    title (e.g. that the models are smoke tests)."""
    body = "\n".join(f"<h2>{html.escape(s.heading)}</h2>\n{s.body}" for s in sections)
    box = f"<div class='notice'>{notice}</div>\n" if notice else ""
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:1400px;margin:2em auto}img{image-rendering:pixelated;"
        "max-width:100%}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px}"
        ".notice{border:3px solid #c00;background:#fee;padding:0.5em 1em;margin:1em 0;font-size:1.1em}"
        ".pair{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}</style>"
        f"</head><body><h1>{html.escape(title)}</h1>\n{box}{body}\n</body></html>"
    )


SMOKE_BANNER = "**SMOKE TEST: undertrained, for tests only; not the real model.**"


def model_card(
    title: str,
    intro: Sequence[str],
    fields: Sequence[tuple[str, object]],
    *,
    smoke: bool = False,
    sections: Sequence[tuple[str, str]] = (),
    front_matter: Sequence[str] = (),
) -> str:
    """A model card (README.md), the one shape every rcdm card has: YAML front matter when given, `# title`, the
    smoke-test banner when `smoke`, the intro paragraphs, a field | value table (floats to 4 significant digits),
    then each (heading, Markdown) section."""
    lines = [*(["---", *front_matter, "---", ""] if front_matter else []), f"# {title}", ""]
    lines += [SMOKE_BANNER, ""] if smoke else []
    for paragraph in intro:
        lines += [paragraph, ""]
    if fields:
        lines += ["| field | value |", "| --- | --- |"]
        lines += [f"| {k} | {f'{v:.4g}' if isinstance(v, float) else v} |" for k, v in fields]
        lines.append("")
    for heading, body in sections:
        lines += [f"## {heading}", "", body.rstrip("\n"), ""]
    return "\n".join(lines) + "\n"
