"""Where a study lives, named the same way by the sweeper and by each trial's process (which
opens the storage itself: a trial in a joblib worker or a SLURM job reports to it directly).

`storage` (hydra.sweeper.storage):
    null                  SQLite in the sweep directory, <sweep dir>/optuna.db
    sqlite:///path.db     any SQLAlchemy URL (SQLite, PostgreSQL, MySQL)
    journal:<path>        Optuna's journal file: appends under a file lock, safe on a shared
                          file system where SQLite's locking is not (NFS, SLURM clusters)

The sweeper writes <sweep dir>/search.json (study name, storage, metrics, directions,
the command) for nnlab-report and for the trials.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from nnlab.errors import UserError

SEARCH_FILE = "search.json"
DEFAULT_DB = "optuna.db"


def storage_url(storage: Any, sweep_dir: str | os.PathLike) -> str:
    """The storage as a URL with absolute paths (the same from any working directory)."""
    if storage in (None, ""):
        return f"sqlite:///{Path(sweep_dir).absolute() / DEFAULT_DB}"
    storage = str(storage)
    if storage.startswith("journal:"):
        path = storage.removeprefix("journal:").removeprefix("//")
        return f"journal:{Path(path).expanduser().absolute()}"
    if storage.startswith("sqlite:///"):
        path = Path(storage.removeprefix("sqlite:///")).expanduser().absolute()
        return f"sqlite:///{path}"
    if "://" in storage:
        return storage
    raise UserError(
        f"hydra.sweeper.storage: {storage!r} is no storage; use null (SQLite in the sweep "
        "directory), sqlite:///<file>, journal:<file> or a database URL"
    )


def open_storage(url: str) -> Any:
    import optuna

    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        # trials in other processes write at the same time: wait for the lock, not fail
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 120}})
    return optuna.storages.RDBStorage(url)


def write_search_file(sweep_dir: str | os.PathLike, info: dict[str, Any]) -> None:
    from nnlab.runs import write_json

    write_json(Path(sweep_dir) / SEARCH_FILE, info)


def read_search_file(sweep_dir: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(sweep_dir) / SEARCH_FILE
    return json.loads(path.read_text()) if path.is_file() else None
