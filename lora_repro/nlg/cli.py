"""`lora-repro generate --run-dir RUN [...]`: decode and score a trained NLG run (nlg/generate.py)
into its own folder, named from the decode's settings."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import torch

from lora_repro.nlg.generate import run_generation


def cmd_generate(argv: list[str]) -> int:
    """Decode and score a trained run: lora-repro generate --run-dir DIR [--split test] [...]."""
    import yaml

    from lora_repro.config import RunConfig
    from lora_repro.errors import ConfigError
    from lora_repro.models import load_model, tokenizer_source
    from lora_repro.weights.state import load_adapter

    ap = argparse.ArgumentParser(prog="lora-repro generate", description=cmd_generate.__doc__)
    ap.add_argument(
        "--run-dir", required=True, help="run folder holding config.yaml and the adapter"
    )
    ap.add_argument(
        "--adapter", help="adapter directory (adapter.safetensors + adapter.json; default: RUN_DIR)"
    )
    ap.add_argument("--split", help="split to decode (default: task.generate_split)")
    ap.add_argument("--limit", type=int, help="decode only the first N inputs")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                    help="bf16: autocast the forward passes (CPU or GPU); scores stay fp32")  # fmt: skip
    for name in ("beam_size", "no_repeat_ngram_size", "max_new_tokens"):
        ap.add_argument("--" + name.replace("_", "-"), type=int)
    ap.add_argument("--length-penalty", type=float)
    ap.add_argument("--metrics", help="comma-separated subset of the task's metrics (default: all)")
    args = ap.parse_args(argv)

    run_dir = Path(args.run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} has no config.yaml; valid: a run folder written by `train`")
    cfg = RunConfig.from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    task = cfg.task
    for name in ("beam_size", "no_repeat_ngram_size", "max_new_tokens", "length_penalty"):
        if getattr(args, name) is not None:
            setattr(task, name, getattr(args, name))
    task.generate_split = args.split or task.generate_split
    task.eval_limit = args.limit or task.eval_limit
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source(cfg.model))
    torch.manual_seed(cfg.seed)  # random-init (tiny) bases are rebuilt from the run's seed
    model = load_model(cfg.model, "lm", device=device)
    # The adapter applies its own method (recorded in adapter.json) after checking the base model.
    load_adapter(model, args.adapter or run_dir, cfg.model.family, base=cfg.model)
    model.to(device)
    metrics = args.metrics.split(",") if args.metrics else None
    # An ad-hoc decode never overwrites the scores training recorded (generate/): it gets its own
    # folder named from its settings, so two different decodes never share one either.
    tag = decode_tag(task, args.limit, args.adapter) + ("_bf16" if args.precision == "bf16" else "")
    autocast = (torch.autocast(device, dtype=torch.bfloat16) if args.precision == "bf16"
                else contextlib.nullcontext())  # fmt: skip
    with autocast:
        scores = run_generation(
            model, tokenizer, task, run_dir, args.batch_size, metrics, f"decode/{tag}"
        )
    print(json.dumps(scores))
    print(f"wrote {run_dir / 'decode' / tag}", file=sys.stderr)
    return 0


def decode_tag(task: Any, limit: int | None, adapter: str | None) -> str:
    """e.g. `test_beam10_lp0.9_nr4_max64`, plus `_n5` for --limit and the adapter's short hash."""
    import hashlib

    tag = (f"{task.generate_split}_beam{task.beam_size}_lp{task.length_penalty:g}"
           f"_nr{task.no_repeat_ngram_size}_max{task.max_new_tokens}")  # fmt: skip
    if limit:
        tag += f"_n{limit}"
    if adapter:
        tag += "_adapter" + hashlib.sha256(str(Path(adapter).resolve()).encode()).hexdigest()[:8]
    return tag
