"""The one error type users see: a bad value in their config or input, reported as one line."""


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
