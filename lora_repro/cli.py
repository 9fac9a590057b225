"""`lora-repro <command> [hydra overrides]`: the only place Hydra's DictConfig appears.

Each command composes the config from conf/, converts it once to typed dataclasses, and runs.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lora_repro.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def compose(overrides: list[str], config_name: str = "config") -> Any:
    """Compose conf/ with Hydra overrides; unknown group options become one-line ConfigErrors."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name, overrides=overrides)
    except HydraException as exc:
        for ov in overrides:
            group, _, value = ov.lstrip("+~").partition("=")
            if (CONF_DIR / group).is_dir() and not (CONF_DIR / group / f"{value}.yaml").exists():
                valid = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
                raise ConfigError(f"unknown {group} {value!r}; valid: {', '.join(valid)}") from None
        raise ConfigError(str(exc).splitlines()[0]) from None


def cmd_count(argv: list[str]) -> int:
    """Build the model on the meta device, apply the method, print parameter counts as JSON."""
    from omegaconf import OmegaConf

    from lora_repro.methods import count_params, method_config, prepare
    from lora_repro.models import ModelConfig, load_model

    cfg = OmegaConf.to_container(compose(argv), resolve=True)
    model_cfg = ModelConfig(**cfg["model"])
    method = method_config(cfg["method"])
    model = load_model(model_cfg, cfg["head"], cfg["num_labels"], device="meta")
    prepare(model, method, model_cfg.family)
    out = {"model": model_cfg.name, "method": method.name, **count_params(model, model_cfg.family)}
    print(json.dumps(out))
    return 0


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "count": cmd_count,
    "bench": importlib.import_module("lora_repro.bench").main,
}

USAGE = """usage: lora-repro <command> [key=value ...]

commands:
  count     parameter counts of model x method on the meta device (no download), as JSON
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
    if rest and rest[0] in ("-h", "--help"):
        from omegaconf import OmegaConf

        print((COMMANDS[command].__doc__ or "").strip() + "\n")
        print(OmegaConf.to_yaml(compose(rest[1:])))
        return 0
    try:
        return COMMANDS[command](rest)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
