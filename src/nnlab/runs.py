"""The one owner of run directories: their names, layout, status and metrics.json.

A run directory holds
    .hydra/            the composed config (Hydra)
    train.log          the log
    checkpoints/       last.ckpt and the best checkpoints by the monitored metric
    tensorboard/       TensorBoard events (open with `tensorboard --logdir <run dir>`)
    status.json        running | completed | failed, with the error of a failed run
    metrics.json       final validation/test metrics and wall time; written last, atomically,
                       only by a run that completed, so its presence means success.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

CHECKPOINTS = "checkpoints"
METRICS = "metrics.json"
STATUS = "status.json"


def register_resolvers() -> None:
    """`${nnlab.uid:}`: a short random tag, fixed for the process, that keeps run directories
    distinct when several runs start in the same second (Hydra's `now` has 1 s resolution)."""
    if not OmegaConf.has_resolver("nnlab.uid"):
        OmegaConf.register_new_resolver("nnlab.uid", lambda: secrets.token_hex(3), use_cache=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it: readers see the old
    content or the new, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Run:
    """A run directory and its lifecycle: start() -> finish(metrics) or fail(error)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.started = time.monotonic()
        self._status: dict[str, Any] = {}

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def metrics_path(self) -> Path:
        return self.root / METRICS

    @property
    def status_path(self) -> Path:
        return self.root / STATUS

    def _write_status(self, status: str, **extra: Any) -> None:
        self._status.update(status=status, updated=_now(), **extra)
        write_json(self.status_path, self._status)

    def start(self, experiment: str | None = None) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._write_status(
            "running",
            experiment=experiment,
            started=_now(),
            host=socket.gethostname(),
            pid=os.getpid(),
        )

    def wall_time(self) -> float:
        return round(time.monotonic() - self.started, 3)

    def finish(self, metrics: dict[str, Any]) -> dict[str, Any]:
        record = {**metrics, "wall_time_s": self.wall_time()}
        write_json(self.metrics_path, record)
        self._write_status("completed", wall_time_s=record["wall_time_s"])
        return record

    def fail(self, error: BaseException | str, status: str = "failed") -> None:
        self._write_status(status, error=str(error), wall_time_s=self.wall_time())


def read_status(run_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(run_dir) / STATUS
    return json.loads(path.read_text()) if path.is_file() else {}
