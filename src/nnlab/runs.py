"""The run manager: the one owner of a run directory, in the spirit of NeMo's exp_manager.

It owns the directory's layout, its lock against concurrent use, status.json and metrics.json,
every checkpoint callback (best, last, periodic, preemption) and which checkpoint a resume (or a
requeued SLURM job) continues from. Directory *names* come from Hydra (conf/train.yaml's
hydra.run.dir / hydra.sweep.dir, with the resolvers in nnlab/resolvers.py).

A run directory holds
    .hydra/            the composed config (Hydra)
    config.resolved.yaml  the same with every interpolation resolved and paths inside the run
                       written relative to it: what eval/predict/export/resume read
    train.log          the log
    checkpoints/       the best checkpoint(s) by the monitored metric (epochNNN-stepNNNNNN.ckpt),
                       last.ckpt (every epoch end and on preemption: always the newest state),
                       periodic/stepNNNNNN.ckpt (every checkpoint.every_n_minutes / every_n_train_steps)
    hpc_ckpt_N.ckpt    saved by Lightning on SLURM's time-limit signal before a requeue
    .lock              held by the process that trains in it (pid and host inside)
    tensorboard/       TensorBoard events (open with `tensorboard --logdir <run dir>`)
    status.json        running | completed | failed | pruned (a search stopped the trial early;
                       its metrics.json holds its best checkpoint's), with the error of a failed run
    metrics.json       final validation/test metrics and wall time; written last, atomically,
                       only by a run that completed, so its presence means success.
    tracking.json      the MLflow / W&B run ids of this run (nnlab/tracking.py)
    vocab.json ...     what predictions need besides the checkpoint (the data module's artifacts)
    eval_metrics.json  nnlab-eval's metrics
    predictions/<time>/  nnlab-predict's outputs;  export/  nnlab-export's;  report/  nnlab-report's
A sweep directory also holds .packed/group<N>.ckpt: each packed group's resume state.
Every file here is written through `atomic_write` (a temporary file renamed over the target).

In a distributed run (DDP) every process runs the same entry point; only global rank 0 writes
status.json and metrics.json (Lightning already keeps checkpoints and loggers to rank 0).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from omegaconf import DictConfig, OmegaConf

from nnlab.checkpoint_io import checkpoint_problem
from nnlab.errors import UserError, file_errors_as_user_errors

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
METRICS = "metrics.json"
STATUS = "status.json"
RESOLVED_CONFIG = "config.resolved.yaml"
LAST = "last.ckpt"
LOCK = ".lock"
EVAL_METRICS = "eval_metrics.json"
TRACKING = "tracking.json"
PREDICTIONS = "predictions"
EXPORT = "export"
REPORT = "report"
PACKED_STATE = ".packed"  # in a sweep directory
HPC_CHECKPOINTS = "hpc_ckpt_*.ckpt"  # Lightning's, in the Trainer's default_root_dir (the run)
# SLURM states of a job that ended without finishing its run (sacct -o State).
SLURM_ENDED = ("CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL", "DEADLINE")  # fmt: skip
# A preempted run (SIGTERM / SIGUSR1) exits with 128 + SIGTERM, as a shell reports a terminated
# job; its status.json says "preempted" and `nnlab-train resume=<run dir>` continues it.
PREEMPTED_EXIT_CODE = 143


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


def _is_preemption(exc: BaseException) -> bool:
    """Lightning's SIGTERMException (a preemption signal during training). Looked up among the
    modules already imported: a session that never imported Lightning (a refused key, `--help`)
    cannot have raised it and does not import Lightning to ask."""
    exceptions = sys.modules.get("lightning.pytorch.utilities.exceptions")
    return exceptions is not None and isinstance(exc, exceptions.SIGTERMException)


def atomic_write(path: Path, write: Callable[[BinaryIO], Any], durable: bool = True) -> None:
    """`write(file)` into a temporary file beside `path`, then rename it over `path`: readers
    (and a process killed meanwhile) see the old content or the new, never half of it.
    `durable`: fsync the file and the rename too (checkpoints, metrics), at a few ms a write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if durable:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_save(obj: Any, path: Path, durable: bool = True) -> None:
    """torch.save, atomically."""
    import torch

    atomic_write(path, lambda f: torch.save(obj, f), durable=durable)


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def yaml_text(data: Any, resolve: bool = False) -> str:
    """`OmegaConf.to_yaml(data)`, the same text, from a DictConfig / ListConfig or plain dicts and
    lists. The config files of a run (.hydra/, config.resolved.yaml, config_tree.log, TensorBoard's
    hparams.yaml) are written per trial of a sweep, and OmegaConf's pure-Python emitter was a
    large part of a packed trial's start (docs/performance.md): libyaml's emitter (PyYAML's
    CDumper) writes plain text faster, with the same representer, hence the same text (tests/
    test_runs.py compares them). Text with other characters, an empty or long key (where the two
    emitters quote differently), a value of another type, or no libyaml: OmegaConf's emitter."""
    import yaml
    from omegaconf import ListConfig

    from nnlab.compat.hydra import omegaconf_dumper

    dumper = omegaconf_dumper()  # its str representer quotes "1", "true" ...
    if dumper is None:  # moved in another OmegaConf: its public function, slower
        return OmegaConf.to_yaml(data, resolve=resolve)
    if isinstance(data, DictConfig | ListConfig):
        data = OmegaConf.to_container(data, resolve=resolve, enum_to_str=True)
    if getattr(yaml, "__with_libyaml__", False) and plain_data(data):
        dumper = _c_dumper(dumper)
    return yaml.dump(
        data, default_flow_style=False, allow_unicode=True, sort_keys=False, Dumper=dumper
    )


@functools.cache
def _c_dumper(python_dumper: type) -> type:
    """libyaml's emitter with OmegaConf's representers (its quoting of strings such as "1")."""
    import yaml

    class Dumper(yaml.CDumper):
        pass

    for kind, represent in python_dumper.yaml_representers.items():
        Dumper.add_representer(kind, represent)
    return Dumper


def plain_data(value: Any, key: bool = False) -> bool:
    """Whether `value` is plain dicts and lists (no subclasses: YAML writes those with Python
    tags) of numbers, booleans, None and strings both YAML emitters write alike: printable
    ASCII, or with line breaks too where OmegaConf's emitter single-quotes them (the two fold
    double-quoted text differently); every key a non-empty printable-ASCII string of fewer
    than 100 characters (libyaml counts bytes, PyYAML characters), or a number."""
    kind = type(value)
    if kind is str:
        if key:
            return 0 < len(value) < 100 and value.isascii() and value.isprintable()
        return value.isascii() and (value.isprintable() or _single_quoted(value))
    if key:
        return kind in (int, float)
    if value is None or kind in (bool, int, float):
        return True
    if kind is list:
        return all(plain_data(v) for v in value)
    if kind is dict:
        return all(plain_data(k, key=True) and plain_data(v) for k, v in value.items())
    return False


def _single_quoted(text: str) -> bool:
    """Whether PyYAML's emitter writes multi-line `text` single-quoted (ASCII, line breaks)."""
    import yaml

    if not text.replace("\n", "").isprintable():
        return False
    return yaml.emitter.Emitter(None, allow_unicode=True).analyze_scalar(text).allow_single_quoted


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


class RunInUse(UserError):
    """Another process holds the run directory's lock."""


@dataclass
class Session:
    """How one session of a run ended: `record` (its metrics.json) or `failed`."""

    record: dict[str, Any] = field(default_factory=dict)
    failed: bool = False


class Run:
    """A run directory and its lifecycle: start() -> finish(metrics) or fail(error)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).absolute()
        self.started = time.monotonic()
        self._status: dict[str, Any] = {}
        self._previous_wall_time = 0.0
        # Only one process of a distributed run writes the run's files.
        self.writes = is_global_zero()
        self._lock_file = None
        # the ModelCheckpoint that keeps the best checkpoint (set by `callbacks`)
        self.best_callback = None

    @staticmethod
    def is_run_dir(path: str | os.PathLike) -> bool:
        """Whether `path` is a run directory nnlab-train made (it has its resolved config)."""
        return (Path(path) / RESOLVED_CONFIG).is_file()

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
        if not cls.is_run_dir(root):
            raise UserError(
                f"{key}: {root} is not an nnlab run directory (it has no {RESOLVED_CONFIG}); "
                "pass the directory nnlab-train printed as 'Run directory'"
            )
        return cls(root)

    # -- one process at a time ----------------------------------------------------------------
    def lock(self, key: str = "resume") -> None:
        """Hold the run's lock until this process ends (or `unlock`); a second process that
        tries gets a UserError naming the run and the process holding it."""
        if self._lock_file is not None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        f = open(self.root / LOCK, "a+", encoding="utf-8")  # noqa: SIM115 - held open on purpose
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise RunInUse(
                f"{key}: {self.root} is in use by {holder}; wait for it to finish (or stop it) "
                "before resuming, evaluating a changing run, or starting another session on it"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"process {os.getpid()} on {socket.gethostname()} since {_now()}\n")
        f.flush()
        self._lock_file = f

    def unlock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing releases the flock
            self._lock_file = None

    def probe_lock(self, key: str = "resume") -> None:
        """A RunInUse when another process holds the run's lock; writes nothing (a refused
        command leaves every file of the run as it was)."""
        path = self.root / LOCK
        if not path.is_file():
            return
        with open(path, encoding="utf-8") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = f.read().strip() or "another process"
                raise RunInUse(
                    f"{key}: {self.root} is in use by {holder}; wait for it to finish (or stop "
                    "it) before resuming, evaluating a changing run, or starting another "
                    "session on it"
                ) from None

    @classmethod
    def check_free(cls, path: str | os.PathLike, key: str = "resume") -> Run:
        """The run at `path`, if no process holds it (checked without keeping the lock)."""
        run = cls.open(path, key=key)
        run.probe_lock(key)
        try:  # a session would write status, checkpoints and logs there
            with tempfile.TemporaryFile(dir=run.root):
                pass
        except OSError as exc:
            raise UserError(
                f"{key}: cannot write into {run.root} ({exc.strerror}); a resumed run writes its "
                "checkpoints and status there: make it writable, or copy the run somewhere you can"
            ) from None
        return run

    def save_config(self, cfg: DictConfig) -> None:
        if not self.writes:
            return
        data = relocatable_config(cfg, self.root)
        atomic_write_text(self.root / RESOLVED_CONFIG, yaml_text(data))

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
        there = ", ".join(p.name for p in found) or "none"
        raise UserError(
            f"{key}: checkpoint {which} not found (nor in {self.checkpoints}, which holds: "
            f"{there}); use best, last, one of those or a path"
        )

    def resume_checkpoint(self) -> Path:
        """The newest checkpoint that loads; each damaged one on the way is reported by name.
        Candidates: last.ckpt (epoch ends, preemption), periodic ones (every N steps) and
        Lightning's hpc_ckpt_N.ckpt (SLURM's time-limit signal), whichever is latest."""
        found = sorted(
            [*self.checkpoints.rglob("*.ckpt"), *self.root.glob(HPC_CHECKPOINTS)],
            key=lambda p: p.stat().st_mtime,
            reverse=True,
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

    def has_checkpoint(self) -> bool:
        return any(self.checkpoints.rglob("*.ckpt")) or any(self.root.glob(HPC_CHECKPOINTS))

    def was_started(self) -> bool:
        """Whether a process already trained in this directory: the same run directory given
        again, as a requeued SLURM job gets it."""
        return self.status_path.is_file()

    def callbacks(
        self,
        monitor: str,
        mode: str,
        checkpoint: DictConfig | dict,
        cluster: Any = None,
    ) -> list:
        """Every callback that writes into the run's checkpoints/ and the state they carry:
        the best `save_top_k` by `monitor`, last.ckpt at every epoch end (always the newest
        state), a periodic one every `every_n_minutes` of training and/or `every_n_train_steps` steps, last.ckpt on preemption, and
        the random-number states inside each. On the `cluster`'s requeue signal (cluster=slurm:
        `nnlab.cluster.SubmititSLURMEnvironment`) the job is requeued after last.ckpt is saved."""
        from lightning.pytorch.callbacks import ModelCheckpoint

        from nnlab.callbacks.resilience import PeriodicCheckpoint, Preemption, RNGState
        from nnlab.callbacks.run_config import RunConfigInCheckpoint

        directory = str(self.checkpoints)
        # each checkpoint carries the random-number states and the run's config (a checkpoint
        # alone is evaluated with nnlab-eval ckpt=PATH)
        callbacks: list = [RNGState(), RunConfigInCheckpoint(self.root / RESOLVED_CONFIG)]
        if not checkpoint.get("enabled", True):
            return callbacks
        shared = {"auto_insert_metric_name": False, "save_last": False}
        self.best_callback = best_checkpoint_callback()(
            dirpath=directory,
            filename="epoch{epoch:03d}-step{step:06d}",
            monitor=monitor,
            mode=mode,
            save_top_k=int(checkpoint.get("save_top_k", 1)),
            **shared,
        )
        callbacks.append(self.best_callback)
        every = int(checkpoint.get("every_n_train_steps") or 0)
        minutes = float(checkpoint.get("every_n_minutes") or 0)
        if every or minutes:
            callbacks.append(
                PeriodicCheckpoint(
                    dirpath=str(self.checkpoints / "periodic"),
                    filename="step{step:06d}",
                    every_n_train_steps=every,
                    every_n_minutes=minutes,
                    save_top_k=1,
                    **shared,
                )
            )
        # After the best one (Lightning keeps checkpoint callbacks in this order, last): the
        # best's bookkeeping is then inside last.ckpt.
        callbacks.append(
            ModelCheckpoint(
                dirpath=directory,
                filename=LAST.removesuffix(".ckpt"),
                every_n_epochs=1,
                enable_version_counter=False,
                **shared,
            )
        )
        callbacks.append(Preemption(dirpath=directory, filename=LAST, cluster=cluster))
        return callbacks

    def best_epoch(self) -> int | None:
        """The epoch whose weights the best checkpoint holds, as its callback saw it (a run
        resumed from a checkpoint of older nnlab: from the checkpoint itself)."""
        callback = self.best_callback
        if callback is None or not callback.best_model_path:
            return None
        if getattr(callback, "best_epoch", None) is not None:
            return callback.best_epoch
        import torch

        saved = torch.load(
            callback.best_model_path, map_location="cpu", mmap=True, weights_only=False
        )
        return int(saved["epoch"])

    def best_checkpoint(self) -> str | None:
        """The best checkpoint's path after fitting (None when checkpointing was off)."""
        return (
            (self.best_callback.best_model_path or None) if self.best_callback is not None else None
        )

    def metrics(self) -> dict[str, Any]:
        from nnlab.files import read_json  # a damaged file names its line (nnlab/files.py)

        return (
            read_json(self.metrics_path, what="metrics file") if self.metrics_path.is_file() else {}
        )

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
            try:
                self._status = read_status(self.root)
            except (OSError, ValueError) as exc:  # a damaged status.json: start a new record
                log.warning("%s is damaged (%s); writing a new one", self.status_path, exc)
                self._status = {}
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
        # a trial its search pruned stopped early: neither completed nor failed
        status = "pruned" if "pruned_at_epoch" in metrics else "completed"
        self._write_status(status, wall_time_s=record["wall_time_s"])
        return record

    def fail(self, error: BaseException | str, status: str = "failed") -> None:
        try:
            self._write_status(status, error=str(error), wall_time_s=self.wall_time())
        except OSError as exc:  # the directory itself is the problem: say so, keep the error
            log.error("cannot record the failure in %s: %s", self.status_path, exc)

    @contextlib.contextmanager
    def session(self, multirun: bool = False) -> Iterator[Session]:
        """One session of training in this run: its outcome goes to status.json. A user error
        (bad input, a file it cannot read or write) ends it `failed` with one line and exit 2; a
        preemption signal `preempted` (exit 143, resumable); a crash `failed` with the
        exception propagating. In a sweep (`multirun`) a failed trial is logged and the session
        says `failed` instead, so the sweep goes on. The lock is released either way."""
        session = Session()
        try:
            with file_errors_as_user_errors():
                yield session
        except RunInUse as exc:  # another process's run: leave its files alone
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(exc.exit_code)
        except UserError as exc:
            self.fail(exc)  # the message goes to status.json, and once to the terminal
            if not multirun:
                print(f"error: {exc}", file=sys.stderr)
                sys.exit(exc.exit_code)
            log.error("Trial failed: %s", exc)
            session.failed = True
        except BaseException as exc:
            if _is_preemption(exc):
                resume = f"resume with nnlab-train resume={self.root}"
                self.fail(f"stopped by a signal ({exc or 'SIGTERM'}); {resume}", "preempted")
                log.warning("Preempted: last.ckpt saved; %s", resume)
                sys.exit(PREEMPTED_EXIT_CODE)
            self.fail(f"{type(exc).__name__}: {exc}")
            if not (multirun and isinstance(exc, Exception)):
                raise
            log.exception("Trial failed")
            session.failed = True
        finally:
            self.unlock()

    def state(self) -> tuple[str, str]:
        """(status, error) as things stand now: completed | failed | preempted | running |
        unknown | damaged. A run whose status.json says running but whose SLURM job ended
        (scancel, time limit, node failure), or whose process on this host is gone, failed."""
        try:
            status = read_status(self.root)
        except (OSError, ValueError) as exc:
            return "damaged", f"{STATUS}: {exc}".splitlines()[0]
        if self.metrics_path.is_file() and status.get("status") in (None, "completed"):
            return "completed", ""
        state = status.get("status")
        if state is None:
            return "unknown", f"no {STATUS} (the run never started)"
        # A SLURM job ended by the scheduler (scancel sends SIGTERM, so the run saved a checkpoint
        # and said `preempted`) failed unless SLURM requeues it.
        if state in ("running", "preempted") and (job := status.get("slurm_job_id")):
            slurm = slurm_state(job)
            if slurm and slurm.startswith(SLURM_ENDED):
                return "failed", f"SLURM job {job} {slurm}"
            if state == "running":
                return "running", f"SLURM job {job} {slurm or 'state unknown'}"
        if state == "running":
            if status.get("host") == socket.gethostname() and not _pid_alive(status.get("pid")):
                return "failed", f"process {status.get('pid')} ended without finishing the run"
            return "running", ""
        return state, status.get("error", "")


def best_checkpoint_callback() -> type:
    """ModelCheckpoint that also remembers the epoch of its best checkpoint (metrics.json's
    best_epoch), kept in its state so that a resumed run knows it too."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    class BestCheckpoint(ModelCheckpoint):
        best_epoch: int | None = None
        _seen, _trainer = "", None

        def _note(self) -> None:
            """The best path changed since last seen: it holds the current epoch (the checkpoint
            is being written now; its own copy of this state says so too)."""
            if self.best_model_path != self._seen and self._trainer is not None:
                self._seen = self.best_model_path
                self.best_epoch = self._trainer.current_epoch if self.best_model_path else None

        def setup(self, trainer, pl_module, stage: str) -> None:
            super().setup(trainer, pl_module, stage)
            self._trainer = trainer

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            super().on_train_epoch_end(trainer, pl_module)
            self._note()

        def on_validation_end(self, trainer, pl_module) -> None:
            super().on_validation_end(trainer, pl_module)
            self._note()

        def state_dict(self) -> dict[str, Any]:
            self._note()
            return {**super().state_dict(), "best_epoch": self.best_epoch}

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            super().load_state_dict(state_dict)
            self.best_epoch = state_dict.get("best_epoch")
            self._seen = self.best_model_path

    # Lightning keys a callback's state in checkpoints by its class name: checkpoints of runs
    # from before this class (and after) restore into either.
    BestCheckpoint.__qualname__ = ModelCheckpoint.__qualname__
    return BestCheckpoint


def find_runs(folder: str | os.PathLike) -> list[Path]:
    """Every run directory under `folder` (a sweep's trials): the folders Hydra started a job in,
    finished or not (each holds .hydra/overrides.yaml), except a report's own folder."""
    folder = Path(folder)
    roots = {p.parent.parent for p in folder.rglob(".hydra/overrides.yaml")}
    return sorted(r for r in roots if REPORT not in r.relative_to(folder).parts)


def read_status(run_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(run_dir) / STATUS
    if not path.is_file():
        return {}
    status = json.loads(path.read_text())
    if not isinstance(status, dict):
        raise ValueError(f"{path} is not a JSON object")
    return status


def slurm_state(job_id: str) -> str | None:
    """The job's state from SLURM's accounting (sacct), None where it cannot be asked."""
    import shutil
    import subprocess

    if not shutil.which("sacct"):
        return None
    try:
        out = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-o", "State", "-j", str(job_id)],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    states = [s.split()[0] for s in out.split("\n") if s.strip()]
    return states[-1] if states else None


def _pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, TypeError, ValueError):
        return False
    except PermissionError:
        return True
    return True
