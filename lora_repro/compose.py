"""Config composition: conf/ plus Hydra overrides -> one composed config, with one-line errors.

Hydra's DictConfig appears here and in cli.py only; callers below take `values(...)` (plain dicts)
or the typed dataclasses of config.py, converted once.
"""

from __future__ import annotations

from typing import Any

from lora_repro.errors import ConfigError
from lora_repro.paths import CONF_DIR


def compose(
    overrides: list[str], config_name: str = "config", return_hydra_config: bool = False
) -> Any:
    """Compose conf/ with Hydra overrides; unknown group options become one-line ConfigErrors."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            return hydra_compose(
                config_name, overrides=overrides, return_hydra_config=return_hydra_config
            )
    except HydraException as exc:
        check_overrides(overrides)
        bad = [ov for ov in overrides if f"'{ov.partition('=')[0]}'" in str(exc)]
        if bad and "Could not override" in str(exc):  # a key the composed config lacks
            key = bad[0].partition("=")[0]
            parent = key.rpartition(".")[0]
            rest = [ov for ov in overrides if ov not in bad]
            node = compose(rest, config_name)
            valid = sorted((OmegaConf.select(node, parent) if parent else node).keys())
            raise ConfigError(
                f"unknown key {key!r}; valid in {parent or 'root'}: {valid} (new keys: +{key}=...)"
            ) from None
        lines = str(exc).splitlines()
        hint = next((ln for ln in lines[1:] if ln.startswith("To append")), "")
        raise ConfigError(" ".join([lines[0], hint]).strip()) from None


def group_options(group: str) -> list[str]:
    """Options of a config group, nested ones as `sub/name` (recipe=roberta-base/mrpc)."""
    root = CONF_DIR / group
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def check_overrides(overrides: list[str]) -> None:
    """One-line errors for unknown group options (`model=nope`), before Hydra's multi-line ones.
    Sweep lists (`method=lora,bitfit`) are checked value by value."""
    for ov in overrides:
        if ov.startswith("-") or "=" not in ov:
            continue
        key, _, value = ov.lstrip("+~").partition("=")
        if not (CONF_DIR / key).is_dir() or "(" in value or "hydra" in key:
            continue
        valid = group_options(key)
        for option in value.split(","):
            if option not in valid and option != "null":
                raise ConfigError(f"unknown {key} {option!r}; valid: {', '.join(valid)}")


def values(overrides: list[str], config_name: str = "config") -> dict[str, Any]:
    """The composed config as plain, resolved values."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(compose(overrides, config_name), resolve=True)
