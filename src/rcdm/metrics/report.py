"""Every evaluation writes FILE.json and, beside it, FILE.md: the same numbers as a Markdown table."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path


def fmt(value: object, digits: int = 4) -> str:
    """A table cell: floats to `digits` significant decimals, None as 'n/a'."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.{digits}f}" if abs(value) < 1e4 else f"{value:.1f}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table; '|' in cells is escaped."""

    def cell(v: object) -> str:
        return fmt(v).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_report(
    data: dict, json_path: str | Path, title: str, tables: Sequence[str], notes: Sequence[str] = ()
) -> tuple[Path, Path]:
    """Write `data` to json_path and `# title`, the tables and notes to json_path with suffix .md."""
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    md_path = json_path.with_suffix(".md")
    body = [f"# {title}\n", *tables, *(f"{n}\n" for n in notes)]
    md_path.write_text("\n".join(body))
    return json_path, md_path


def faithfulness_tables(data: dict) -> list[str]:
    rows = [
        [
            s["encoder"],
            s["role"],
            s["cosine"],
            s["mean_rank"],
            s["median_rank"],
            s["top1"],
            s["top5"],
            s["chance_rank"],
            s.get("class_agreement"),
        ]
        for s in data["scores"]
    ]
    header = [
        "encoder",
        "role",
        "cosine ↑",
        "mean rank ↓",
        "median rank",
        "top-1 ↑",
        "top-5 ↑",
        "chance rank",
        "class agreement ↑",
    ]
    return [markdown_table(header, rows)]


def quality_tables(data: dict) -> list[str]:
    tag = "" if data["standard"] else f" [{data['features']}]"
    rows = [
        [f"FID{tag} ↓", data["fid"]],
        [f"KID{tag} ↓", f"{fmt(data['kid'], 5)} ± {fmt(data['kid_std'], 5)}"],
        [f"IS{tag} ↑", data["inception_score"]],
        [f"precision{tag} ↑", data["precision"]],
        [f"recall{tag} ↑", data["recall"]],
        [f"density{tag} ↑", data["density"]],
        [f"coverage{tag} ↑", data["coverage"]],
    ]
    return [markdown_table(["metric", "value"], rows)]
