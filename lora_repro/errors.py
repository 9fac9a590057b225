"""The one error type users see: a bad value in their config or input, reported as one line, and the
checks that raise it."""

from __future__ import annotations

from dataclasses import fields
from typing import Any


class ConfigError(ValueError):
    """A user-facing input error. The CLI prints `error: <message>` and exits with status 2."""


def check_choice(what: str, value: object, valid: object) -> None:
    """Raise a ConfigError naming `value` and the valid choices when `value` is not among them."""
    options = sorted(valid) if not isinstance(valid, (list, tuple)) else list(valid)
    if value not in options:
        raise ConfigError(f"unknown {what} {value!r}; valid: {', '.join(map(str, options))}")


def check_positive(what: str, value: float) -> None:
    """Raise a ConfigError when a size, rate or count is not strictly positive."""
    if not value > 0:
        raise ConfigError(f"{what} must be > 0, got {value!r}")


_SCALARS = {"int": int, "float": (int, float), "str": str, "bool": bool}


def _is(value: Any, kind: str) -> bool:
    """Whether `value` fits one annotation part: a scalar, list[scalar] or dict[str, scalar]."""
    if kind.startswith("list[") and kind.endswith("]"):
        return isinstance(value, list) and all(_is(v, kind[5:-1]) for v in value)
    if kind.startswith("dict[str,") and kind.endswith("]"):
        inner = kind[len("dict[str,") : -1].strip()
        return isinstance(value, dict) and all(_is(v, inner) for v in value.values())
    scalar = _SCALARS.get(kind)
    return (
        scalar is not None
        and isinstance(value, scalar)
        and (kind == "bool" or not isinstance(value, bool))
    )


def _checkable(kind: str) -> bool:
    if kind.startswith("list[") and kind.endswith("]"):
        return _checkable(kind[5:-1])
    if kind.startswith("dict[str,") and kind.endswith("]"):
        return _checkable(kind[len("dict[str,") : -1].strip())
    return kind in _SCALARS


def check_types(kind: type, values: dict[str, Any], what: str) -> None:
    """One-line errors for values of the wrong type (`train.lr=abc`, `method.r=8.5`,
    `method.layers=abc`), before they reach a check that would fail with a Python TypeError. Plain
    annotations are checked (`float`, `int | None`, `list[int] | None`, `dict[str, int]`); integers
    given for float fields become floats (`epochs: 2` and `2.0` are the same config)."""
    for f in fields(kind):
        if f.name not in values or not isinstance(f.type, str):
            continue
        parts = [p.strip() for p in f.type.split("|")]
        if not all(p == "None" or _checkable(p) for p in parts):
            continue
        value = values[f.name]
        if value is None and "None" in parts:
            continue
        if not any(_is(value, p) for p in parts if p != "None"):
            raise ConfigError(f"{what} {f.name} must be {f.type}, got {value!r}")
        if "float" in parts and "int" not in parts and not isinstance(value, bool):
            values[f.name] = float(value)
