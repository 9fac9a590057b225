"""Where the checkout's own folders are. Everything that reads conf/, the paper's numbers or shipped
data resolves it from here, never from the current directory."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent  # the checkout (an editable install points here)
CONF_DIR = REPO / "conf"
PAPER_DIR = REPO / "experiments" / "paper"  # the paper's reported numbers, one CSV per table
