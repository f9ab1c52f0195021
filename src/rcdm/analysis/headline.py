"""The headline numbers of an analysis's results.json, a few lines for the terminal: what a user reads before
opening the figure. Generic over the analyses' summaries (dicts, lists of labelled rows, per-name tables), so a new
analysis gets its headline without code here; per-image tables and settings stay in results.json."""

from __future__ import annotations

from typing import Any

SKIP = {"settings", "sampling", "per_image", "images", "t", "common_dimensions", "warnings", "rows", "eps"}
UNLABELLED = {"results", "augmentations", "methods"}  # containers whose key says nothing a row label does not
MAX_LINES, MAX_ITEMS = 12, 8


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _show(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)


def _items(pairs: list[tuple[str, Any]], sep: str = " ") -> str:
    shown = ", ".join(f"{k}{sep}{_show(v)}" for k, v in pairs[:MAX_ITEMS])
    return shown + (f", … ({len(pairs)} in all)" if len(pairs) > MAX_ITEMS else "")


def headline(results: dict) -> list[str]:
    """Lines like 'grayscale: relative_shift 0.12, cosine 0.97, retention 0.4' from an analysis's results."""
    lines: list[str] = []

    def walk(node: Any, path: list[str]) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item, path)
            return
        if not isinstance(node, dict):
            return
        here = path + [node[k] for k in ("label", "augmentation") if isinstance(node.get(k), str)]
        name = " · ".join(here) or "overall"
        scalars = [(k, v) for k, v in node.items() if k not in SKIP and (_number(v) or v is None)]
        if scalars:
            lines.append(f"{name}: {_items(scalars)}")
        for k, v in node.items():
            if k in SKIP:
                continue
            if isinstance(v, dict) and v and all(_number(x) or x is None for x in v.values()):
                lines.append(f"{' · '.join([*here, k])}: {_items(list(v.items()), ' ')}")
            elif isinstance(v, list) and v and all(_number(x) or x is None for x in v):
                lines.append(
                    f"{' · '.join([*here, k])}: {_items([(str(i), x) for i, x in enumerate(v)], ':')}"
                )
            elif isinstance(v, dict) and k in UNLABELLED:
                for sub, value in v.items():
                    walk(value, [*here, sub])
            elif isinstance(v, dict | list):
                walk(v, here if k in UNLABELLED else [*here, k])

    walk({k: v for k, v in results.items() if k not in ("analysis", "model")}, [])
    return lines[:MAX_LINES] + (
        [f"… {len(lines) - MAX_LINES} more lines in results.json"] if len(lines) > MAX_LINES else []
    )
