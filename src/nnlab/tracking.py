"""What every logger receives about a run, and the loggers that need an optional extra.

At the end of a run (after testing) `log_run_summary` sends each configured logger the same
record: the composed config flattened to `group.key` names, the parameter counts, the git
commit and whether the working tree was dirty, the run's tags, the best checkpoint's path and
the final metrics. TensorBoard gets them as one HPARAMS session (final metrics as `hp/<name>`,
so the learning curves keep only the values logged during training), CSV in hparams.yaml,
MLflow as params, metrics and tags, Weights & Biases as config and summary.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import subprocess
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.logger import _add_prefix
from lightning.pytorch.loggers import TensorBoardLogger as LightningTensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from tensorboard.compat.proto.summary_pb2 import Summary
from torch import Tensor

from nnlab.errors import UserError
from nnlab.runs import TRACKING, is_global_zero, plain_data, yaml_text

log = logging.getLogger(__name__)

TRACKING_FILE = TRACKING  # in the run directory: {"mlflow": run id, "wandb": run id}


def _require(module: str, extra: str, logger: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise UserError(
            f"logger={logger} needs {module}, which is not installed; install it with "
            f"`pip install 'nnlab[{extra}]'` (or choose logger=tensorboard)"
        ) from None


def run_label(name: str | None, run_dir: str | None) -> str:
    """A run's name in a tracker: the experiment and its directory (`<sweep>/<trial>` in a sweep,
    whose trial directories are numbered)."""
    if not run_dir:
        return name or "run"
    path = Path(run_dir)
    return f"{path.parent.name}/{path.name}" if path.name.isdigit() else path.name


def tracker_ids(run_dir: str | None) -> dict[str, str]:
    """The tracker runs this run directory logs to (`tracking.json`): a resumed run continues
    the same MLflow / W&B run instead of starting another."""
    path = Path(run_dir) / TRACKING_FILE if run_dir else None
    if path is None or not path.is_file():
        return {}
    try:
        return {str(k): str(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        log.warning("%s is unreadable: the trackers start new runs", path)
        return {}


def remember_tracker_id(run_dir: str | None, tracker: str, run_id: str | None) -> None:
    if not run_dir or not run_id or not Path(run_dir).is_dir() or not is_global_zero():
        return
    ids = tracker_ids(run_dir)
    if ids.get(tracker) != run_id:
        (Path(run_dir) / TRACKING_FILE).write_text(json.dumps({**ids, tracker: run_id}) + "\n")


class TensorBoardLogger(LightningTensorBoardLogger):
    """Lightning's TensorBoard logger, writing each `log_metrics` call as one event.

    Lightning's writes an event per scalar, and tensorboard checksums every event in pure Python
    on its writer thread, which contends with training for the GIL (a packed sweep logs tens of
    thousands of scalars: docs/packed.md). One event holding all of a call's values reads back
    the same (TensorBoard's event readers take every value of an event's summary)."""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        values = []
        for tag, value in _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR).items():
            if isinstance(value, Tensor):
                value = value.item()
            if isinstance(value, dict):
                self.experiment.add_scalars(tag, value, step)
                continue
            try:
                values.append(Summary.Value(tag=tag, simple_value=float(value)))
            except (TypeError, ValueError) as exc:
                raise ValueError(
                    f"{tag}: you tried to log {value!r}, which is not a scalar; log a number, "
                    "a one-element tensor or a dict of them"
                ) from exc
        if values:
            self.experiment._get_file_writer().add_summary(Summary(value=values), step)

    @rank_zero_only
    def save(self) -> None:
        """Lightning's `save` (flush; hparams.yaml once), the hparams.yaml written through
        `runs.yaml_text` (the same text as Lightning's OmegaConf.save, faster: every trial of a
        sweep writes one) when the hyperparameters are plain data and the log
        folder a local one; other hyperparameters are left to Lightning's writer."""
        folder = Path(self.log_dir)
        target = folder / self.NAME_HPARAMS_FILE
        if "://" not in str(self.log_dir) and folder.is_dir() and not target.exists():
            hparams = {  # what Lightning's save_hparams_to_yaml converts before saving
                k: OmegaConf.to_container(v, resolve=True) if isinstance(v, DictConfig) else v
                for k, v in dict(self.hparams).items()
            }
            if plain_data(hparams):
                target.write_text(yaml_text(hparams), encoding="utf-8")
        super().save()


def mlflow_logger(
    tags: Iterable[str] = (), run_name: str | None = None, run_dir: str | None = None, **kwargs
):
    """Lightning's MLFlowLogger; each of the run's `tags` becomes an MLflow tag, and all of them
    together the tag `nnlab.tags`. A resumed run logs into the MLflow run it started."""
    _require("mlflow", "mlflow", "mlflow")
    from lightning.pytorch.loggers import MLFlowLogger

    tags = [str(t) for t in tags or ()]
    run_id = tracker_ids(run_dir).get("mlflow")
    if run_id is not None:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        try:
            MlflowClient(kwargs.get("tracking_uri")).get_run(run_id)
        except MlflowException:  # another tracking store now: a new run there
            log.warning("MLflow run %s is not in this tracking store: a new run", run_id)
            run_id = None
    logger = MLFlowLogger(
        run_name=run_label(run_name, run_dir),
        tags={**{t: "" for t in tags}, "nnlab.tags": ", ".join(tags)},
        run_id=run_id,
        **kwargs,
    )
    # the run is created here (on rank 0; other ranks get None), so that its id is on disk
    # before any training a kill could interrupt
    remember_tracker_id(run_dir, "mlflow", logger.run_id)
    return logger


def wandb_logger(
    tags: Iterable[str] = (), name: str | None = None, run_dir: str | None = None, **kwargs
):
    """Lightning's WandbLogger (offline by default: `wandb sync` uploads the run later). The W&B
    run's id is chosen once per run directory: a resumed run continues it (`wandb sync` of the
    offline folders gives one run)."""
    _require("wandb", "wandb", "wandb")
    from lightning.pytorch.loggers import WandbLogger

    run_id = tracker_ids(run_dir).get("wandb")
    if run_id is None:
        run_id = uuid.uuid4().hex[:12]
        remember_tracker_id(run_dir, "wandb", run_id)
    return WandbLogger(
        name=run_label(name, run_dir),
        tags=[str(t) for t in tags or ()],
        id=run_id,
        resume="allow",
        **kwargs,
    )


def git_state(path: Path | None = None) -> dict[str, Any]:
    """The commit of the git work tree holding `path` (nnlab's own source by default) and
    whether tracked files differ from it; `unknown` outside a work tree or without git."""
    where = str(path or Path(__file__).resolve().parent)
    try:
        commit = subprocess.run(
            ["git", "-C", where, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        changes = subprocess.run(
            ["git", "-C", where, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return {"git.commit": "unknown", "git.dirty": "unknown"}
    if commit.returncode != 0 or changes.returncode != 0:
        return {"git.commit": "unknown", "git.dirty": "unknown"}
    return {"git.commit": commit.stdout.strip(), "git.dirty": bool(changes.stdout.strip())}


@functools.cache
def source_git_state() -> dict[str, Any]:
    """git_state of nnlab's own source, asked once per process: the code a process runs is the
    code it imported (each trial of a sweep used to run git twice)."""
    return git_state()


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {"a.b.c": leaf}; lists and None become text (what every tracker takes)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}{key}."))
        return out
    key = prefix[:-1]
    if value is None or isinstance(value, list | tuple):
        return {key: str(value) if value is not None else "null"}
    return {key: value}


def run_params(cfg: DictConfig, task: Any = None) -> dict[str, Any]:
    """The hyperparameters every logger gets: the config flattened (the trainer's and the
    callbacks' settings among them), parameter counts (total, trainable, non-trainable), the
    task's class, git state, tags."""
    params = flatten(OmegaConf.to_container(cfg, resolve=True))
    params.pop("hydra", None)
    if task is not None:
        weights = list(task.parameters())
        params["params.total"] = sum(p.numel() for p in weights)
        params["params.trainable"] = sum(p.numel() for p in weights if p.requires_grad)
        params["params.non_trainable"] = params["params.total"] - params["params.trainable"]
        params["task.class"] = type(task).__name__
    params.update(source_git_state())
    params["tags"] = ", ".join(str(t) for t in cfg.get("tags") or [])
    return params


def final_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The numeric results of a run (val/*, test/*, best_epoch, epochs ...)."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(float(value)):
            out[key] = float(value)
    return out


def log_run_summary(loggers: Iterable[Any], cfg: DictConfig, task: Any, metrics: dict) -> None:
    """Send the run's hyperparameters, final metrics, tags and best checkpoint to each logger.
    Called once, after testing; a logger that fails is reported and skipped, never the run."""
    if not is_global_zero():  # the other ranks of a distributed run have no logger to write to
        return
    params = run_params(cfg, task)
    params["best_checkpoint"] = str(metrics.get("best_checkpoint") or "")
    final = final_metrics(metrics)
    for logger in loggers or []:
        try:
            _log_to(logger, params, final, cfg)
        except Exception as exc:  # a tracker being down must not fail a finished run
            log.warning("Could not send the run summary to %s: %s", type(logger).__name__, exc)


def _log_to(logger: Any, params: dict[str, Any], final: dict[str, float], cfg: DictConfig) -> None:
    from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger

    if isinstance(logger, TensorBoardLogger):
        # HPARAMS reads a session's metric values from scalars of the same names.
        logger.log_hyperparams(params, metrics={f"hp/{k}": v for k, v in final.items()})
        step = int(final.get("global_step", 0))
        logger.experiment.add_text("run/summary", summary_markdown(params, final), step)
        logger.finalize("success")
    elif isinstance(logger, CSVLogger):
        logger.log_hyperparams({**params, **{f"final/{k}": v for k, v in final.items()}})
        logger.finalize("success")
    elif isinstance(logger, MLFlowLogger):
        logger.log_hyperparams(params)
        logger.log_metrics(final, step=int(final.get("global_step", 0)))
        client = logger.experiment
        client.set_tag(logger.run_id, "best_checkpoint", params["best_checkpoint"])
        client.set_tag(logger.run_id, "git.commit", str(params["git.commit"]))
        logger.finalize("success")
    elif isinstance(logger, WandbLogger):
        logger.log_hyperparams(params)
        run = logger.experiment
        run.summary.update({**final, "best_checkpoint": params["best_checkpoint"]})
        run.finish()  # the next trial of a sweep in this process starts its own run
    else:
        logger.log_hyperparams(params)
        logger.log_metrics(final)


def summary_markdown(params: dict[str, Any], final: dict[str, float]) -> str:
    """A short table for TensorBoard's TEXT tab."""
    rows = [
        ("tags", params.get("tags") or "-"),
        ("git commit", f"{params.get('git.commit')}" + (" (dirty)" if params.get("git.dirty") is True else "")),
        ("parameters", f"{params.get('params.total')} ({params.get('params.trainable')} trainable)"),
        ("best checkpoint", params.get("best_checkpoint") or "-"),
        *((k, f"{v:.6g}") for k, v in final.items()),
    ]  # fmt: skip
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
