"""Errors a user can fix: they end a command with one clear message, not a stack trace."""

from __future__ import annotations


class UserError(Exception):
    """Bad input (config, file, data): the message names the key or file and how to fix it."""

    exit_code = 2


class ConfigError(UserError):
    """A config value that cannot work; `key` is its dotted path."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"{key}: {message}")


class DataError(UserError):
    """Missing, corrupt or unusable data files."""


def require_positive(key: str, value, *, allow_zero: bool = False) -> None:
    """Raise a ConfigError unless `value` is a positive number (or zero when allowed)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(key, f"expected a number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(key, f"must be {bound}, got {value!r}")
