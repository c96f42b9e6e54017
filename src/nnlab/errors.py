"""Errors a user can fix: they end a command with one clear message, not a stack trace."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


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


def file_error(exc: OSError) -> UserError | None:
    """A file-system error about a named file (permission denied, a folder where a file should
    be, a full disk) as a UserError naming the file; None when no file is named (a crash)."""
    if exc.filename is None:
        return None
    where = f"{exc.filename} -> {exc.filename2}" if exc.filename2 else str(exc.filename)
    return UserError(
        f"{where}: {exc.strerror or type(exc).__name__}; check that the path exists, is the kind "
        "of file expected, and that you may read (and, for outputs, write) it"
    )


@contextlib.contextmanager
def file_errors_as_user_errors() -> Iterator[None]:
    """An OSError that names a file comes out as a UserError (see `file_error`)."""
    try:
        yield
    except OSError as exc:
        error = file_error(exc)
        if error is None:
            raise
        raise error from exc


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """A command's body: a UserError (or a file-system error naming a file) ends it with one
    line `error: ...` on stderr and exit status 2; anything else is a crash and propagates."""
    try:
        with file_errors_as_user_errors():
            yield
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


def user_error_cause(exc: BaseException) -> UserError | None:
    """The UserError behind a chain of wrappers (Hydra's, and OmegaConf's around a resolver
    that reads the data: `${nnlab.tabular:input_size}`), if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, UserError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
