"""Plain-text and Markdown tables of ``summary.json`` rows (CLI output and README)."""

from __future__ import annotations

from typing import Any


def _columns(summary: dict[str, Any]) -> list[str]:
    cols = ["model", "method", "arch"]
    for ts in summary.get("test_sets") or ["test"]:
        metric = "acc" if summary.get("task", "classification") == "classification" else "mae"
        cols.append(f"{ts}_{metric}")
        if summary.get("task", "classification") == "classification":
            cols.append(f"{ts}_agreement")
    return cols + ["params", "train_seconds"]


def _cell(row: dict[str, Any], col: str, multi: bool) -> str:
    if multi and col not in ("model", "method", "arch"):
        m, s = row.get(f"{col}_mean"), row.get(f"{col}_std")
        if m is None:
            return "-"
        return f"{m:.3f} ± {s:.3f}" if col != "params" else f"{int(m):,}"
    v = row.get(col)
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1f}" if col.endswith("seconds") else f"{v:.3f}"
    if isinstance(v, int) and col == "params":
        return f"{v:,}"
    return str(v)


def format_summary(summary: dict[str, Any], markdown: bool = False) -> str:
    """One row per model: accuracy (or MAE) and teacher agreement per test set, size, time."""
    multi = "seeds" in summary
    cols = _columns(summary)
    rows = [[_cell(r, c, multi) for c in cols] for r in summary.get("rows", [])]
    if markdown:
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*cols)] + [fmt.format(*r) for r in rows])
