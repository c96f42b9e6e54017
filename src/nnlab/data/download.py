"""Downloads of the data sets' archives: through a `.part` file, checked against a published
sha256, renamed into place only when complete and verified (one copy for every data set)."""

from __future__ import annotations

import hashlib
import logging
import urllib.request
from pathlib import Path

from nnlab.errors import DataError

log = logging.getLogger(__name__)


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_digest(got: str, sha256: str | None, path: Path, source: str) -> None:
    """A file's digest against the expected one (deleted when it differs); with none expected,
    the digest is logged so that the user can pin it (data.sha256=...)."""
    if not sha256:
        log.warning("%s has sha256 %s; pin it with data.sha256=%s", source, got, got)
        return
    if got != sha256.lower():
        path.unlink(missing_ok=True)
        raise DataError(
            f"data.sha256: {source} has sha256 {got}, expected {sha256}; it is corrupt or not "
            "the right file (deleted it); try again, or fix data.sha256"
        )


def download(url: str, dest: Path, sha256: str | None, by_hand: str) -> Path:
    """Fetch `url` to `dest` through a `.part` file, renamed only when its checksum matches.
    `by_hand` says what the user can put into `dest`'s folder instead."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    log.info("Downloading %s to %s", url, dest)
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as response, part.open("wb") as out:
            while block := response.read(1 << 20):
                digest.update(block)
                out.write(block)
    except (OSError, ValueError) as exc:
        part.unlink(missing_ok=True)
        raise DataError(
            f"data.url: could not download {url}: {exc}; check the network, or put {by_hand} "
            f"into {dest.parent} yourself"
        ) from None
    check_digest(digest.hexdigest(), sha256, part, f"the download from {url}")
    part.replace(dest)
    return dest
