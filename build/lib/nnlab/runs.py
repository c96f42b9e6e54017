"""The one owner of run directories: their names, layout, status and metrics.json.

A run directory holds
    .hydra/            the composed config (Hydra)
    config.resolved.yaml  the same with every interpolation resolved and paths inside the run
                       written relative to it: what eval/predict/export/resume read
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
import logging
import os
import secrets
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lightning.fabric.plugins import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf

from nnlab.errors import UserError

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
METRICS = "metrics.json"
STATUS = "status.json"
RESOLVED_CONFIG = "config.resolved.yaml"
LAST = "last.ckpt"
# A preempted run (SIGTERM / SIGUSR1) exits with 128 + SIGTERM, as a shell reports a terminated
# job; its status.json says "preempted" and `nnlab-train resume=<run dir>` continues it.
PREEMPTED_EXIT_CODE = 143


def register_resolvers() -> None:
    """`${nnlab.uid:}`: a short random tag, fixed for the process, that keeps run directories
    distinct when several runs start in the same second (Hydra's `now` has 1 s resolution)."""
    if not OmegaConf.has_resolver("nnlab.uid"):
        OmegaConf.register_new_resolver("nnlab.uid", lambda: secrets.token_hex(3), use_cache=True)
    if not OmegaConf.has_resolver("nnlab.abspath"):
        OmegaConf.register_new_resolver(
            "nnlab.abspath", lambda p: str(Path(p).expanduser().absolute())
        )
    if not OmegaConf.has_resolver("nnlab.resume_or"):
        # hydra.run.dir: the run being resumed, else a new directory
        OmegaConf.register_new_resolver("nnlab.resume_or", lambda resume, fresh: resume or fresh)
    if not OmegaConf.has_resolver("nnlab.unless_resume"):
        # hydra.output_subdir: a resumed run keeps the .hydra/ of its first start
        OmegaConf.register_new_resolver(
            "nnlab.unless_resume", lambda resume, v: None if resume else v
        )
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


def relocatable_config(cfg: DictConfig, output_dir: str | os.PathLike) -> dict[str, Any]:
    """`cfg` fully resolved, with paths inside `output_dir` rewritten as `${paths.output_dir}/…`
    and `paths.output_dir` left to be set by whoever loads it: a moved run still works."""
    prefix = str(output_dir)

    def relocate(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: relocate(v) for k, v in value.items()}
        if isinstance(value, list):
            return [relocate(v) for v in value]
        if isinstance(value, str) and (value == prefix or value.startswith(prefix + os.sep)):
            return "${paths.output_dir}" + value[len(prefix) :]
        return value

    data = relocate(OmegaConf.to_container(cfg, resolve=True))
    data.setdefault("paths", {})["output_dir"] = "???"
    return data


class Run:
    """A run directory and its lifecycle: start() -> finish(metrics) or fail(error)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).absolute()
        self.started = time.monotonic()
        self._status: dict[str, Any] = {}
        self._previous_wall_time = 0.0
        # Only one process of a distributed run writes the run's files.
        self.writes = is_global_zero()

    @classmethod
    def open(cls, path: str | os.PathLike | None, key: str = "run") -> Run:
        """An existing run directory, or a UserError that says what `key` should be."""
        if not path:
            raise UserError(f"{key}: no run directory given; pass {key}=outputs/runs/<date>/<run>")
        root = Path(path).expanduser()
        if not root.is_dir():
            raise UserError(
                f"{key}: {root} is not a directory; pass a run directory under outputs/runs/"
            )
        if not (root / RESOLVED_CONFIG).is_file():
            raise UserError(
                f"{key}: {root} is not an nnlab run directory (it has no {RESOLVED_CONFIG}); "
                "pass the directory nnlab-train printed as 'Run directory'"
            )
        return cls(root)

    def save_config(self, cfg: DictConfig) -> None:
        if not self.writes:
            return
        data = relocatable_config(cfg, self.root)
        atomic_write_text(self.root / RESOLVED_CONFIG, OmegaConf.to_yaml(OmegaConf.create(data)))

    def config(self) -> DictConfig:
        """The run's resolved config, its paths pointing into this directory."""
        cfg = OmegaConf.load(self.root / RESOLVED_CONFIG)
        cfg.paths.output_dir = str(self.root)
        return cfg

    def checkpoint(self, which: str | None = "best", key: str = "ckpt") -> Path:
        """`best`, `last`, or a path (absolute, or relative to the run's checkpoints/)."""
        which = which or "best"
        found = sorted(self.checkpoints.glob("*.ckpt")) if self.checkpoints.is_dir() else []
        if not found and which in ("best", "last"):
            raise UserError(
                f"{key}: {self.checkpoints} holds no checkpoint (the run saved none: it failed "
                "early or ran with callbacks=none); train again, or pass ckpt=<path to a .ckpt>"
            )
        if which == "last":
            last = self.checkpoints / LAST
            return last if last.is_file() else max(found, key=lambda p: p.stat().st_mtime)
        if which == "best":
            best = self.metrics().get("best_checkpoint")
            if best and (self.checkpoints / Path(best).name).is_file():
                return self.checkpoints / Path(best).name
            ranked = [p for p in found if p.name != LAST]
            return max(ranked or found, key=lambda p: p.stat().st_mtime)
        path = Path(which).expanduser()
        for candidate in (path, self.checkpoints / path):
            if candidate.is_file():
                return candidate
        raise UserError(
            f"{key}: checkpoint {which} not found (nor in {self.checkpoints}); use best, last or a path"
        )

    def resume_checkpoint(self) -> Path:
        """The newest checkpoint that loads; each damaged one on the way is reported by name."""
        # newest first: last.ckpt (epoch ends) or a periodic one (every N steps), whichever is later
        found = sorted(
            self.checkpoints.rglob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True
        )
        for path in found:
            problem = checkpoint_problem(path)
            if problem is None:
                return path
            log.warning("Skipping damaged checkpoint %s: %s", path, problem)
        raise UserError(
            f"resume: {self.checkpoints} holds no usable checkpoint"
            + (f" ({len(found)} damaged)" if found else "")
            + "; start a new run instead"
        )

    def metrics(self) -> dict[str, Any]:
        return json.loads(self.metrics_path.read_text()) if self.metrics_path.is_file() else {}

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

    def start(self, experiment: str | None = None, resumed: bool = False) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if resumed:  # keep the first start's record; wall time adds up over the sessions
            self._status = read_status(self.root)
            self._previous_wall_time = float(self._status.get("wall_time_s", 0.0))
            self._status["resumed"] = self._status.get("resumed", 0) + 1
        else:
            self._status = {"experiment": experiment, "started": _now()}
        self._status.pop("error", None)
        # Under SLURM, the job id lets a report ask the scheduler about a run that never
        # finished (cancelled, killed at its time limit, node failure).
        slurm = {"slurm_job_id": os.environ["SLURM_JOB_ID"]} if "SLURM_JOB_ID" in os.environ else {}
        self._write_status("running", host=socket.gethostname(), pid=os.getpid(), **slurm)

    def wall_time(self) -> float:
        return round(self._previous_wall_time + time.monotonic() - self.started, 3)

    def finish(self, metrics: dict[str, Any]) -> dict[str, Any]:
        record = {**metrics, "wall_time_s": self.wall_time()}
        if self.writes:
            write_json(self.metrics_path, record)
        self._write_status("completed", wall_time_s=record["wall_time_s"])
        return record

    def fail(self, error: BaseException | str, status: str = "failed") -> None:
        self._write_status(status, error=str(error), wall_time_s=self.wall_time())


def checkpoint_problem(path: Path) -> str | None:
    """None when `path` is a complete checkpoint file, else what is wrong with it."""
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as exc:  # truncated zip, garbage, empty file
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        return "not a Lightning checkpoint (no state_dict)"
    return None


def read_status(run_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(run_dir) / STATUS
    return json.loads(path.read_text()) if path.is_file() else {}


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file in the same directory, flushed, fsynced and
    renamed over the target: a kill during a write never leaves a truncated checkpoint and
    never destroys the previous one."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path, storage_options: Any | None = None
    ) -> None:
        import torch

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:  # make the rename itself durable
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
