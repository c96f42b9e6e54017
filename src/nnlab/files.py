"""Reading the files users and runs have, as they have them: UTF-8 with or without a byte-order
mark (what spreadsheets save), gzip-compressed (`.gz`, or any file starting with gzip's magic
bytes), or a declared encoding. A file that still cannot be read (a folder, missing, no
permission, empty, damaged gzip, another encoding, truncated JSON) is one DataError naming the
file, the line where there is one, and the fix."""

from __future__ import annotations

import codecs
import gzip
import json
import zlib
from pathlib import Path
from typing import Any

from nnlab.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"
DEFAULT_ENCODING = "utf-8-sig"  # UTF-8, a leading byte-order mark dropped


def _where(key: str | None, path: Path) -> str:
    return f"{key}: {path}" if key else str(path)


def read_bytes(path: Path, key: str | None = None) -> bytes:
    """The file's bytes, decompressed when it is gzip."""
    path = Path(path).expanduser()
    where = _where(key, path)
    if path.is_dir():
        raise DataError(f"{where} is a folder; name a file in it")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{where} not found; check the path") from None
    except PermissionError:
        raise DataError(
            f"{where}: no permission to read it; fix its permissions (chmod u+r) or copy it"
        ) from None
    except OSError as exc:
        raise DataError(f"{where}: cannot be read ({exc.strerror}); check the file") from None
    if raw[:2] == GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:
            raise DataError(
                f"{where} is a damaged gzip file ({exc}); download or compress it again"
            ) from None
    if not raw.strip():
        raise DataError(f"{where} is empty; it needs content (was it written completely?)")
    return raw


def check_encoding(name: str | None) -> str:
    """`name` if Python knows the codec (else a ValueError naming what to use)."""
    if name is None:
        return DEFAULT_ENCODING
    try:
        codecs.lookup(name)
    except LookupError:
        raise ValueError(
            f"an encoding Python knows, e.g. utf-8, latin-1, cp1252, utf-16 (not {name!r})"
        ) from None
    return name


def read_text(path: Path, key: str | None = None, encoding: str | None = None) -> str:
    """The file as text: UTF-8 (a BOM dropped) unless `encoding` is given; a byte that does not
    decode names its line and the two fixes."""
    raw = read_bytes(path, key)
    name = check_encoding(encoding)
    try:
        text = raw.decode(name)
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        setting = "data.encoding" if key and key.startswith("data.") else "its encoding"
        raise DataError(
            f"{_where(key, Path(path))} line {line}: byte 0x{raw[exc.start]:02x} is not "
            f"{'UTF-8' if name == DEFAULT_ENCODING else name} text; save the file as UTF-8, or "
            f"declare {setting} (e.g. data.encoding=latin-1 or cp1252)"
        ) from None
    return text.removeprefix("\ufeff")  # a BOM under an encoding that keeps it (utf-16 drops it)


def read_json(path: Path, key: str | None = None, what: str = "file") -> Any:
    """A JSON file; a damaged one (truncated, edited) names its line and column."""
    text = read_text(path, key)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{_where(key, Path(path))} line {exc.lineno} column {exc.colno}: not valid JSON "
            f"({exc.msg}); the {what} is damaged (a truncated write?): restore or remove it"
        ) from None
