"""Write analysis outputs atomically (temp file + os.replace): nothing half-written on failure."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from lora_repro.atomic import write_atomic

FIGURE_FORMATS = ("png", "pdf")


def slug(text: str) -> str:
    """A file-name-safe version of a label: 'r=8 s0' -> 'r8-s0'."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", text.replace("=", "")).strip("-") or "run"


def write_csv(df: pd.DataFrame, path: Path) -> Path:
    return write_atomic(path, lambda tmp: df.to_csv(tmp, index=False, float_format="%.6g"))


def write_text(text: str, path: Path) -> Path:
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text))


# No creation date in the PDF: a figure rebuilt from the same numbers is the same bytes, so git
# shows a committed figure as changed only when its content changed.
METADATA = {"png": {}, "pdf": {"CreationDate": None}}


def write_figure(fig: Figure, stem: Path) -> list[Path]:
    """`stem`.png (for a quick look) and `stem`.pdf (vector, for papers)."""
    return [
        write_atomic(
            stem.with_suffix(f".{fmt}"),
            lambda tmp, fmt=fmt: fig.savefig(tmp, format=fmt, dpi=150, metadata=METADATA[fmt]),
        )
        for fmt in FIGURE_FORMATS
    ]


def markdown_table(df: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub Markdown table (no tabulate dependency)."""

    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.{digits}g}" if abs(v) < 10**digits else f"{v:.0f}"
        return str(v)

    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"
