"""`lora-repro analyze subspace|spectrum|amplification --runs DIR ...` (or `python -m lora_repro.analysis ...`):
the paper's §7 analyses of trained adapters, written as CSV (every number), figures (PNG + PDF) and,
for Table 7, Markdown. Reads run directories; never trains."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from lora_repro.analysis import curves, reports
from lora_repro.errors import ConfigError

log = logging.getLogger("analysis")

COMMANDS = {
    "subspace": reports.subspace,
    "spectrum": reports.spectrum,
    "amplification": reports.amplification,
    "curves": curves.report,  # learning curves from history.jsonl or records (is the budget enough?)
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lora-repro analyze", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for name, fn in COMMANDS.items():
        s = sub.add_parser(name, help=fn.__doc__, description=fn.__doc__)
        s.add_argument("--runs", nargs="+", required=True, help="run directories or globs")
        s.add_argument("--out", default="results/figures", help="output directory")
        s.add_argument("--name", help="output file stem (default: from kind, model, task, runs)")
        s.add_argument("--adapter", help="adapter name when a file holds several")
        s.add_argument("--labels", nargs="+", help="legend names, one per run")
        s.add_argument("--letters", nargs="+", help="matrices to analyse (default: all shared)")
        s.add_argument("--seed", type=int, default=0, help="seed of the random baselines")
    sub.choices["subspace"].add_argument("--factor", choices=("A", "B"), default="A")
    sub.choices["subspace"].add_argument("--layers", help="layers to plot: 'all' or e.g. 0,5,11")
    sub.choices["amplification"].add_argument(
        "--model", help="base model: conf/model name or directory"
    )
    sub.choices["amplification"].add_argument("--exact", action="store_true", help="full SVD of W")
    sub.choices["curves"].add_argument(
        "--metric", help="the metric to plot (default: each run's primary)"
    )
    sub.choices["curves"].add_argument(
        "--records", nargs="+", help="results/*.jsonl: read the curves the records carry"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    try:
        written = COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    log.info("%s: %d files in %.2f s", args.command, len(written), time.perf_counter() - start)
    return 0
