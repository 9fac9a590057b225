"""`lora-repro adapter {info,merge,export-peft,combine}`: work with saved adapter directories."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

from lora_repro.errors import ConfigError

if TYPE_CHECKING:  # torch and transformers load only when a subcommand runs
    from torch import nn

    from lora_repro.models import ModelConfig

log = logging.getLogger(__name__)


def build_base(path: str, base: str | None = None) -> tuple[nn.Module, ModelConfig]:
    """The adapter's base model with the adapter loaded. `base` (hub id, directory, pkg:) replaces the
    recorded pretrained source, e.g. when the base was saved somewhere else; then only the architecture
    is checked, not the name."""
    from lora_repro.models import ModelConfig, load_model
    from lora_repro.weights.files import read_meta
    from lora_repro.weights.state import load_adapter

    meta = read_meta(path)
    cfg = ModelConfig(**meta.base)
    if base is not None:
        cfg = replace(cfg, pretrained=base, init="pretrained")
    elif cfg.init == "random":
        raise ConfigError(
            f"the adapter's base {cfg.name!r} was randomly initialised; pass --base with its weights"
        )
    model = load_model(cfg, meta.head, meta.num_labels or 2)
    load_adapter(model, path, cfg.family, base=None if base else cfg)
    return model.eval(), cfg


def _info(args: argparse.Namespace) -> int:
    from lora_repro.weights.files import WEIGHTS, read_meta, read_tensors

    meta = read_meta(args.adapter)
    tensors = read_tensors(args.adapter, meta)  # also proves the file is whole
    weights = Path(args.adapter)
    weights = weights / WEIGHTS if weights.is_dir() else weights.with_name(WEIGHTS)
    out = {
        "method": asdict(meta.method),
        "base": {k: meta.base.get(k) for k in ("name", "family", "pretrained")},
        "head": meta.head,
        "num_labels": meta.num_labels,
        "task": meta.task,
        "tensors": len(tensors),
        "params": sum(t.numel() for t in tensors.values()),
        "bytes": weights.stat().st_size,
        **meta.extra,
    }
    print(json.dumps(out, indent=2))
    return 0


MARK = ".lora_repro_output"  # in every folder these commands write: theirs to replace


def is_run_folder(folder: Path) -> bool:
    if (folder / "result.json").exists() or (folder / "history.jsonl").exists():
        return True
    try:
        return (folder / "config.yaml").read_text().startswith("# config_hash:")
    except OSError:
        return False


def check_out(out: str | Path, force: bool) -> Path:
    """Refuse an --out that would destroy something: a run folder (or a folder inside one), or an
    existing non-empty folder these commands did not write (unless --force)."""
    path = Path(out).resolve()
    for folder in (path, *path.parents):
        if is_run_folder(folder):
            raise ConfigError(
                f"--out {out} is {'' if folder == path else 'inside '}the run folder {folder}; "
                "valid: a new folder outside the run folders"
            )
    if path.is_dir() and any(path.iterdir()) and not (path / MARK).exists() and not force:
        raise ConfigError(
            f"--out {out} exists and holds files this command did not write; valid: a new or "
            "empty folder, or --force to replace it"
        )
    return path


def _mark(out: str | Path, command: str) -> None:
    (Path(out) / MARK).write_text(
        json.dumps({"written_by": f"lora-repro adapter {command}"}) + "\n"
    )


def _merge(args: argparse.Namespace) -> int:
    from lora_repro.models import tokenizer_source
    from lora_repro.weights.export import export_merged

    model, cfg = build_base(args.adapter, args.base)
    tokenizer = None
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source(cfg))
    except (OSError, ValueError, ConfigError) as exc:
        log.warning("no tokenizer saved with the merged model (%s)", exc)
    out = export_merged(model, args.out, tokenizer)
    _mark(out, "merge")
    print(f"merged model written to {out} (load it with transformers' from_pretrained)")
    return 0


def _export_peft(args: argparse.Namespace) -> int:
    from lora_repro.weights.export import export_peft
    from lora_repro.weights.files import read_meta

    meta = read_meta(args.adapter)
    model, cfg = build_base(args.adapter, args.base)
    out = export_peft(model, args.out, cfg.family, meta.method, meta.head, cfg.pretrained)
    _mark(out, "export-peft")
    print(f"PEFT adapter written to {out} (peft.PeftModel.from_pretrained(base, {str(out)!r}))")
    return 0


def _combine(args: argparse.Namespace) -> int:
    from lora_repro.weights.combine import combine
    from lora_repro.weights.files import AdapterMeta, read_meta, read_tensors, write_adapter

    metas = [read_meta(p) for p in args.adapters]
    weights = args.weights or [1.0] * len(metas)
    ident = [{k: m.base.get(k) for k in ("name", "family", "pretrained")} for m in metas]
    if any(i != ident[0] for i in ident):
        raise ConfigError(f"adapters come from different base models: {ident}")
    tensors = [read_tensors(p, m) for p, m in zip(args.adapters, metas, strict=True)]
    merged, cfg, report = combine(
        [(t, m.method) for t, m in zip(tensors, metas, strict=True)], weights, args.rank, args.name
    )
    head_meta = metas[args.head_from] if args.head_from is not None else None
    if head_meta is not None:  # the task head (not a low-rank update) comes from one adapter
        merged.update({k: v for k, v in tensors[args.head_from].items() if ".lora." not in k})
    meta = AdapterMeta(
        method=cfg,
        base=metas[0].base,
        shape=metas[0].shape,
        tensors={},
        head=metas[0].head,
        num_labels=head_meta.num_labels if head_meta else None,
        task=head_meta.task if head_meta else None,
        extra={"combined_from": list(zip(args.adapters, weights, strict=True)), "combine": report},
    )
    write_adapter(args.out, merged, meta)
    _mark(args.out, "combine")
    err = report["relative_error"]
    print(
        f"combined adapter written to {args.out}: rank {report['rank']}, relative error {err:.3g}"
    )
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lora-repro adapter", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("info", help="print what an adapter holds (method, base, sizes) as JSON")
    s.add_argument("adapter", help="adapter directory (adapter.safetensors + adapter.json)")
    s.set_defaults(run=_info)
    for name, run, what in (
        ("merge", _merge, "merge into the base; write a plain transformers model directory"),
        ("export-peft", _export_peft, "write a LoRA adapter in PEFT's format"),
    ):
        s = sub.add_parser(name, help=what, description=what)
        s.add_argument("adapter", help="adapter directory")
        s.add_argument("--out", required=True, help="output directory (a new one; see --force)")
        s.add_argument("--force", action="store_true", help="replace an existing --out folder")
        s.add_argument(
            "--base", help="base weights (hub id, directory, pkg:) instead of the recorded"
        )
        s.set_defaults(run=run)
    s = sub.add_parser(
        "combine",
        help="weighted sum of LoRA updates, exact or SVD-truncated",
        description="ΔW = Σ w_i s_i B_i A_i per adapted matrix; exact at rank Σ r_i, or the best "
        "rank-k approximation with --rank k (the relative Frobenius error is reported).",
    )
    s.add_argument("adapters", nargs="+", help="adapter directories")
    s.add_argument("--weights", type=float, nargs="+", help="one per adapter (default: all 1)")
    s.add_argument("--rank", type=int, help="truncate to this rank by SVD")
    s.add_argument("--out", required=True, help="output adapter directory (a new one)")
    s.add_argument("--force", action="store_true", help="replace an existing --out folder")
    s.add_argument("--name", default="default", help="adapter name inside the file")
    s.add_argument(
        "--head-from", type=int, default=0, help="index of the adapter whose task head to keep"
    )
    s.add_argument("--no-head", dest="head_from", action="store_const", const=None)
    s.set_defaults(run=_combine)
    return p


def cmd_adapter(argv: list[str]) -> int:
    """Adapter files: `lora-repro adapter {info,merge,export-peft,combine} ...`; each has --help."""
    args = _parser().parse_args(argv)
    if getattr(args, "out", None) is not None:  # before any work: nothing is half-written
        check_out(args.out, args.force)
    if args.command == "combine":
        n = len(args.adapters)
        if args.weights and len(args.weights) != n:
            raise ConfigError(f"--weights: {len(args.weights)} given for {n} adapters")
        if args.head_from is not None and not 0 <= args.head_from < n:
            raise ConfigError(f"--head-from {args.head_from}; valid: 0..{n - 1}")
    return args.run(args)
