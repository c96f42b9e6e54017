"""The one owner of run directories: their names, layout, status and metrics.json.

A run directory holds
    .hydra/            the composed config (Hydra)
    train.log          the log
    checkpoints/       last.ckpt and the best checkpoints by the monitored metric
    tensorboard/       TensorBoard events (open with `tensorboard --logdir <run dir>`)
    status.json        running | completed | failed, with the error of a failed run
    metrics.json       final validation/test metrics and wall time; written last, atomically,
                       only by a run that completed, so its presence means success.

In a distributed run (DDP) every process runs the same entry point; only global rank 0 writes
status.json and metrics.json (Lightning already keeps checkpoints and loggers to rank 0).
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
    if not OmegaConf.has_resolver("nnlab.sqlite"):
        OmegaConf.register_new_resolver("nnlab.sqlite", sqlite_url)
    if not OmegaConf.has_resolver("nnlab.choice"):
        OmegaConf.register_new_resolver("nnlab.choice", group_choice)


def group_choice(group: str, *, _root_: Any) -> Any:
    """`${nnlab.choice:experiment}`: the option chosen for a config group. Unlike
    `${hydra:runtime.choices.experiment}` it also resolves where HydraConfig is not set yet: in
    a multirun's sweeper and launcher, which name the sweep directory before any job runs."""
    if "hydra" in _root_:  # the whole config, as sweepers and launchers see it
        return OmegaConf.select(_root_, f"hydra.runtime.choices.{group}")
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.choices.get(group) if HydraConfig.initialized() else None


def sqlite_url(path: str) -> str:
    """`${nnlab.sqlite:outputs/optuna/study.db}`: an SQLAlchemy URL for a SQLite file (an Optuna
    study's storage), absolute, with its folder created (SQLite creates files, not folders)."""
    file = Path(path).expanduser().absolute()
    file.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{file}"


def is_global_zero() -> bool:
    """Whether this process is global rank 0 of its distributed job, from the launcher's
    environment (torchrun: RANK; Lightning's own launcher: NODE_RANK and LOCAL_RANK; srun:
    SLURM_PROCID). A process alone is rank 0. Known before the Trainer exists."""
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"]) == 0
    if "LOCAL_RANK" in env:
        return int(env["LOCAL_RANK"]) == 0 and int(env.get("NODE_RANK", "0")) == 0
    return int(env.get("SLURM_PROCID", "0")) == 0


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
        # Only one process of a distributed run writes the run's files.
        self.writes = is_global_zero()

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
        if self.writes:
            write_json(self.status_path, self._status)

    def start(self, experiment: str | None = None) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        # Under SLURM, the job id lets a report ask the scheduler about a run that never
        # finished (cancelled, killed at its time limit, node failure).
        slurm = {"slurm_job_id": os.environ["SLURM_JOB_ID"]} if "SLURM_JOB_ID" in os.environ else {}
        self._write_status(
            "running",
            experiment=experiment,
            started=_now(),
            host=socket.gethostname(),
            pid=os.getpid(),
            **slurm,
        )

    def wall_time(self) -> float:
        return round(time.monotonic() - self.started, 3)

    def finish(self, metrics: dict[str, Any]) -> dict[str, Any]:
        record = {**metrics, "wall_time_s": self.wall_time()}
        if self.writes:
            write_json(self.metrics_path, record)
        self._write_status("completed", wall_time_s=record["wall_time_s"])
        return record

    def fail(self, error: BaseException | str, status: str = "failed") -> None:
        self._write_status(status, error=str(error), wall_time_s=self.wall_time())


def read_status(run_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(run_dir) / STATUS
    return json.loads(path.read_text()) if path.is_file() else {}
