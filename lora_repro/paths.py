"""Where the checkout's own folders are. Everything that reads conf/, the paper's numbers or shipped
data resolves it from here, never from the current directory."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent  # the checkout (an editable install points here)
CONF_DIR = REPO / "conf"
PAPER_DIR = REPO / "experiments" / "paper"  # the paper's reported numbers, one CSV per table


def cache_dir() -> Path | None:
    """Where derived files are cached (tokenised splits, dequantised models): $LORA_REPRO_CACHE, else
    ~/.cache/lora_repro; None when LORA_REPRO_CACHE=off (everything is then recomputed)."""
    import os

    value = os.environ.get("LORA_REPRO_CACHE", "")
    if value.lower() == "off":
        return None
    return Path(value).expanduser() if value else Path.home() / ".cache" / "lora_repro"
