"""`lora-repro <command> ...`: the entry point, and the top of the import graph (nothing imports it).

Two grammars, one per kind of command: `train`, `count` and `status` compose configs from conf/ with Hydra
overrides (compose.py) and convert it once to typed dataclasses; every other command takes argparse
flags (`--runs-dir DIR`) and dispatches to the package that owns it: weights/ (saved adapters),
nlg/ (decode, score), analysis/ (§7, tables), bench/.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from lora_repro.compose import CONF_DIR, check_overrides, compose
from lora_repro.errors import ConfigError


def _summary(rec: dict[str, Any]) -> str:
    """What a finished run prints: the primary metric at the best epoch, params, memory, time."""
    m, c = rec["metrics"], rec["cost"]
    lines = [f"run: {rec['run']['folder']}"]
    for name, value in (m.get("best") or {}).items():
        mark = "  (primary)" if name == m["primary_metric"] else ""
        lines.append(f"  {name} = {value:.4f}{mark}")
    if m.get("best_epoch") is not None:
        lines.append(f"  best at epoch {m['best_epoch']:.2f} (step {m['best_step']})")
    lines.append(
        f"  trainable params {c['trainable_params']:,} (method {c['method_params']:,}, "
        f"total {c['total_params']:,})"
    )
    lines.append(
        f"  peak memory {c['peak_memory_bytes'] / 2**20:,.0f} MiB ({c['peak_memory_kind']}), "
        f"wall {c['wall_time_s']:.0f} s, {c['tokens_per_s'] or 0:,.0f} tokens/s"
    )
    return "\n".join(lines)


def _fail_the_job(code: int) -> None:
    """Under Slurm, make the job itself exit non-zero (sacct FAILED) once submitit has written the
    job's result: Hydra's launcher catches the run's failure into that result, which would otherwise
    leave the job COMPLETED."""
    if os.environ.get("SLURM_JOB_ID") and "submitit" in sys.argv[0]:
        import atexit

        atexit.register(os._exit, code)


def cmd_train(argv: list[str]) -> int:
    """Train a config (a sweep with -m) into its run folder and write result.json."""
    import hydra
    from omegaconf import OmegaConf

    check_overrides(argv)
    if all(not a.startswith("-") for a in argv):
        compose(argv)  # a single run: Hydra's errors (unknown key, bad syntax) as one line
    codes: list[int] = []
    main_rank = os.environ.get("RANK", "0") == "0"

    @hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
    def job(dcfg: Any) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        from lora_repro.config import RunConfig
        from lora_repro.train import RunFailed, run

        # A sweep's run records even a setup error (bad data, bad labels) as a `failed` record in
        # its folder, so the sweep summary and `lora-repro status` show it; a single run writes
        # nothing for bad input.
        swept = HydraConfig.get().mode == RunMode.MULTIRUN
        try:
            cfg = RunConfig.from_dict(OmegaConf.to_container(dcfg, resolve=True))
            rec = run(cfg, record_setup_errors=swept)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            codes.append(2)
            _fail_the_job(2)
            return
        except RunFailed as exc:
            print(f"error: run failed: {exc}", file=sys.stderr)
            codes.append(1)
            _fail_the_job(1)
            return
        if main_rank:
            if rec.get("skipped"):
                print(f"skip: {rec['run']['folder']} already finished with this config")
            print(_summary(rec))
        codes.append(0)

    saved = sys.argv
    sys.argv = ["lora-repro train", *argv]
    try:
        job()
    except SystemExit as exc:  # Hydra's --help, --cfg and argument errors exit
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = saved
    return max(codes, default=0)


def cmd_count(argv: list[str]) -> int:
    """Build the model on the meta device, apply the method, print parameter counts as JSON."""
    from lora_repro.count import count

    print(json.dumps(count(argv)))
    return 0


def cmd_estimate(argv: list[str]) -> int:
    """Expected peak memory per training process of a config (weights, gradients, optimizer,
    activations) for DDP / FSDP, with and without activation checkpointing, as JSON:
    lora-repro estimate [train overrides, e.g. recipe=... method_recipe=... cluster=slurm cluster.gpus=8]"""
    from lora_repro.estimate import main

    return main(argv)


def cmd_status(argv: list[str]) -> int:
    """Where each run of a sweep stands, from its folders (records and locks): done / running /
    failed / unfinished / waiting / missing, with the primary metric or the error line:
    lora-repro status experiment=NAME [the sweep's other overrides, as for train -m]"""
    from lora_repro.status import report

    text, _ = report(argv)
    print(text)
    return 0


def cmd_adapter(argv: list[str]) -> int:
    """Saved adapters (lora_repro.weights.cli): info, merge, export-peft, combine; each has --help."""
    from lora_repro.weights.cli import cmd_adapter as run

    return run(argv)


def cmd_generate(argv: list[str]) -> int:
    """Decode and score a trained NLG run (lora_repro.nlg.generate): --run-dir DIR [--adapter FILE]
    [--split test] [--limit N] [--batch-size 8] [--device auto|cpu|cuda] [--beam-size K]
    [--length-penalty LP] [--no-repeat-ngram-size N] [--max-new-tokens T] [--metrics BLEU,NIST,...]"""
    from lora_repro.nlg.cli import cmd_generate as run

    return run(argv)


def cmd_score(argv: list[str]) -> int:
    """Score NLG outputs against references (lora_repro.nlg.score): --task e2e|webnlg|dart --refs FILE
    (repeatable) --hyps FILE [--metrics ...] [--out scores.json]"""
    from lora_repro.nlg.score import cmd_score as run

    return run(argv)


def cmd_analyze(argv: list[str]) -> int:
    """§7 analyses of trained adapters: `lora-repro analyze subspace|spectrum|amplification -h`."""
    from lora_repro.analysis.cli import main as analyze

    return analyze(argv)


def cmd_collect(argv: list[str]) -> int:
    """Gather runs/<experiment>/**/result.json into results/<experiment>.jsonl (sorted, diffable):
    lora-repro collect EXPERIMENT [--runs-dir runs] [--results-dir results] [--fresh]"""
    from lora_repro.collect import collect_main

    return collect_main(argv)


def cmd_tables(argv: list[str]) -> int:
    """Rebuild a paper table from results/ alone, Markdown and LaTeX, cells "ours (paper)":
    lora-repro tables TABLE|all [--experiments a,b] [--results-dir results] [--out-dir DIR]"""
    from lora_repro.analysis.tables import main as tables

    return tables(argv)


def cmd_bench(argv: list[str]) -> int:
    """Parameters, step time, memory, checkpoint bytes and latency per method (lora_repro.bench)."""
    from lora_repro.bench.cli import main as bench

    return bench(argv)


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "count": cmd_count,
    "estimate": cmd_estimate,
    "train": cmd_train,
    "adapter": cmd_adapter,
    "generate": cmd_generate,
    "score": cmd_score,
    "analyze": cmd_analyze,
    "status": cmd_status,
    "collect": cmd_collect,
    "tables": cmd_tables,
    "bench": cmd_bench,
}

USAGE = """usage: lora-repro <command> [key=value ...]

commands:
  count     parameter counts of model x method on the meta device (no download), as JSON
  estimate  expected peak memory per process (DDP/FSDP, checkpointing on/off), as JSON
  train     train one config (or a sweep with -m) and write its run record
  adapter   saved adapters: info, merge, export-peft, combine (`lora-repro adapter --help`)
  generate  beam-search decode + score a trained NLG run: generate --run-dir DIR [--split test]
  score     score NLG outputs: score --task e2e --refs REFS --hyps HYPS
  analyze   subspace | spectrum | amplification of trained runs (§7): CSV, figures, Markdown
  status    where each run of a sweep stands: status experiment=NAME [overrides as for train -m]
  collect   runs/<experiment>/**/result.json -> results/<experiment>.jsonl
  tables    table2|table3|table5|table6|table18|lr|params|all from results/: Markdown + LaTeX
  bench     time, memory, params and checkpoint bytes per method; LoRA latency (--help for flags)

Overrides are Hydra's: model=roberta-base method=lora method.r=16 method.targets=qkvo
Config groups and options live in conf/; `lora-repro <command> --help` shows the composed config."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; valid: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    # count prints its docstring and the composed config; train shows Hydra's own help, and every
    # other command its argparse help.
    if rest and rest[0] in ("-h", "--help") and command in ("status", "estimate"):
        print((COMMANDS[command].__doc__ or "").strip())
        return 0
    if rest and rest[0] in ("-h", "--help") and command == "count":
        from omegaconf import OmegaConf

        print((COMMANDS[command].__doc__ or "").strip())
        print("\n" + OmegaConf.to_yaml(compose(rest[1:])))
        return 0
    try:
        return COMMANDS[command](rest)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback
        print("interrupted; a training run resumes from its last checkpoint when launched again",
              file=sys.stderr)  # fmt: skip
        return 130


if __name__ == "__main__":
    sys.exit(main())
