"""The packed launcher's work: compose every job of a sweep batch, group the ones whose networks
have the same parameter shapes (and training setup), train each group as one stacked model
(`nnlab.packed.group`), and run the rest one after another through the normal job path, as
Hydra's basic launcher does, with one log line saying why.

The Hydra plugin class (`hydra_plugins.nnlab_packed_launcher`) only forwards here: Hydra accepts
launchers from its `hydra_plugins` namespace only.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import (
    JobReturn,
    JobStatus,
    configure_log,
    filter_overrides,
    run_job,
    setup_globals,
)
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from nnlab.assemble import averaging as build_averaging
from nnlab.assemble import data_and_task
from nnlab.compat import hydra as hydra_compat
from nnlab.config import build, build_all
from nnlab.console import print_config_tree
from nnlab.engine.capabilities import PLATEAU, SKIPPED_CALLBACKS, why_not
from nnlab.engine.policy import BestCheckpoint, EarlyStop
from nnlab.packed import stack
from nnlab.packed.group import STATE_DIR, Data, PackedGroup, Trial, load_states
from nnlab.runs import METRICS, Run, read_status
from nnlab.schema import check, take_checked_job
from nnlab.search.pruning import trial_reporter
from nnlab.tasks.classification import ClassificationTask

log = logging.getLogger("nnlab.packed")

MONITORS = ("checkpoint", "early_stopping")


class Unpackable(Exception):
    """Why a job runs on its own."""


def launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
    setup_globals()
    config = launcher.config
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    saved_hydra = hydra_compat.hydra_config()
    results: dict[int, JobReturn] = {}
    alone: list[tuple[int, list[str]]] = []
    trials: list[Trial] = []
    data_cache: dict[str, Data] = {}
    skipped: set[str] = set()
    log.info("Packed launcher: %d jobs, up to %d per pack", len(job_overrides), launcher.pack_size)
    started = time.perf_counter()
    launcher._states = None
    for i, overrides in enumerate(job_overrides):
        num, overrides = initial_job_idx + i, list(overrides)
        job_config = _job_config(launcher, num, overrides)
        output_dir = Path(job_config.hydra.runtime.output_dir)
        if (done := _completed(output_dir, job_config, overrides)) is not None:
            log.info("\t#%d : %s (completed before; kept)", num, " ".join(overrides))
            results[num] = done
            continue
        try:
            trials.append(prepare(num, overrides, job_config, data_cache, launcher, skipped))
        except Unpackable as exc:
            log.info("\t#%d : %s runs on its own: %s", num, " ".join(overrides), exc)
            alone.append((num, overrides))
    log.info(
        "Composed and built %d jobs in %.1f s", len(job_overrides), time.perf_counter() - started
    )
    if skipped:
        log.info("Packed trials do not run these callbacks: %s", ", ".join(sorted(skipped)))
    for group in _groups(trials, launcher.pack_size):
        nums = ", ".join(f"#{t.num}" for t in group)
        log.info("Training %d trials as one stacked model: %s", len(group), nums)
        started = time.perf_counter()
        _run_group(group, launcher.device_for(group[0].cfg), launcher)
        log.info("Packed group %s: %.1f s", nums, time.perf_counter() - started)
        for t in group:
            results[t.num] = _job_return(t)
    hydra_compat.point_hydra_config(saved_hydra)
    for num, overrides in alone:  # what Hydra's basic launcher does, job by job
        log.info("\t#%d : %s", num, " ".join(filter_overrides(overrides)))
        sweep_config = _job_config(launcher, num, overrides)
        results[num] = run_job(
            hydra_context=launcher.hydra_context,
            task_function=launcher.task_function,
            config=sweep_config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
        configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    hydra_compat.point_hydra_config(saved_hydra)
    return [results[initial_job_idx + i] for i in range(len(job_overrides))]


def _job_config(launcher: Any, num: int, overrides: list[str]) -> DictConfig:
    """The job's full config, with Hydra's job number and output directory set and HydraConfig
    pointing at it (as `run_job` does before it calls the task function)."""
    cfg = launcher.__dict__.get("_checked", {}).pop(tuple(overrides), None)
    if cfg is None:
        cfg = _compose(launcher, overrides)
    with open_dict(cfg):
        cfg.hydra.job.id = num
        cfg.hydra.job.num = num
    # what ${hydra:...} in the sweep's subdir reads (set_config's masked copy comes once, below)
    hydra_compat.point_hydra_config(cfg)
    output_dir = Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
    with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):
        cfg.hydra.runtime.output_dir = os.path.abspath(output_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg


def share_compositions(launcher: Any) -> None:
    """Hydra's sweeper composes every job of a batch to check it (`validate_batch_is_legal`)
    before it hands the batch to the launcher: those compositions are the ones nnlab's up-front
    check made of the same jobs (`schema.take_checked_job`), else they go through `_compose`'s
    cache (a 32-job seed x lr grid: one from scratch); the launcher runs the very configs the
    sweeper checked (`_job_config`) instead of composing them again, and takes the check's
    resolved config of each (`prepare`)."""
    checked = launcher.__dict__.setdefault("_checked", {})  # overrides -> the sweeper's config
    resolved = launcher.__dict__.setdefault("_resolved", {})  # overrides -> the check's job

    def load_sweep_config(original, master_config: DictConfig, overrides: list[str]):
        if master_config is not launcher.config:
            return original(master_config, overrides)
        job = take_checked_job(master_config, overrides)
        if job is not None:
            cfg = job.config
            resolved[tuple(overrides)] = job
        else:
            cfg = _compose(launcher, list(overrides))
        checked[tuple(overrides)] = cfg  # the sweeper drops it; _job_config takes it
        return cfg

    # _compose calls the original
    launcher._load_sweep_config = hydra_compat.intercept_sweep_loads(
        launcher.hydra_context.config_loader, load_sweep_config
    )


def _compose(launcher: Any, overrides: list[str]) -> DictConfig:
    """A job's config, composed once per shape of overrides (compat/hydra.py: compose_job)."""
    return hydra_compat.compose_job(
        launcher.hydra_context.config_loader,
        launcher.config,
        overrides,
        launcher.__dict__.setdefault("_composed", {}),
        load=launcher.__dict__.get("_load_sweep_config"),
    )


def _task_config(job_config: DictConfig) -> DictConfig:
    cfg = copy.deepcopy(job_config)
    with read_write(cfg), open_dict(cfg):
        del cfg["hydra"]
    return cfg


def _job_return(t: Trial, value: Any = None) -> JobReturn:
    ret = JobReturn(
        overrides=t.overrides,
        cfg=t.raw_cfg,
        hydra_cfg=t.hydra_cfg,
        working_dir=os.getcwd(),
        task_name=t.hydra_cfg.hydra.job.name,
        status=JobStatus.COMPLETED,
    )
    optimized = t.cfg.get("optimized_metric")
    # A failed trial gives the sweeper NaN, as nnlab-train does in a multirun.
    ret.return_value = math.nan if t.failed else (t.record.get(optimized) if optimized else None)
    return ret


def _completed(output_dir: Path, job_config: DictConfig, overrides: list[str]):
    """A job of a resumed sweep whose run completed: its recorded result, not a new run."""
    if not (output_dir / METRICS).is_file() or read_status(output_dir).get("status") != (
        "completed"
    ):
        return None
    metrics = Run(output_dir).metrics()
    optimized = OmegaConf.select(job_config, "optimized_metric", default=None)
    ret = JobReturn(
        overrides=overrides,
        cfg=_task_config(job_config),
        hydra_cfg=hydra_compat.hydra_config(),  # this job's own, as in prepare()
        working_dir=os.getcwd(),
        task_name=job_config.hydra.job.name,
        status=JobStatus.COMPLETED,
    )
    ret.return_value = metrics.get(optimized) if optimized else None
    return ret


# -- what can be packed ---------------------------------------------------------------------------
def _callbacks(cfg: DictConfig, trial: dict, skipped: set[str]) -> None:
    for name, entry in (cfg.get("callbacks") or {}).items():
        if not isinstance(entry, DictConfig) or "_target_" not in entry:
            continue
        callback = build(entry, f"callbacks.{name}")
        kind = type(callback).__name__
        if (reason := why_not("packed", callback=callback)) is not None:
            raise Unpackable(reason)
        if kind in SKIPPED_CALLBACKS:
            skipped.add(kind)
        elif type(callback) is EarlyStopping:
            trial["early_stopping"] = callback
        elif type(callback) is LearningRateMonitor:
            trial["lr_monitor"] = True


def _data(cfg: DictConfig, datamodule: Any, cache: dict[str, Data]) -> Data:
    key = OmegaConf.to_yaml(cfg.data)
    if key in cache:
        return cache[key]
    datamodule.prepare_data()
    datamodule.setup("fit")
    loaders = [
        datamodule.train_dataloader(),
        datamodule.val_dataloader(),
        datamodule.test_dataloader(),
    ]
    for loader in loaders:
        if (reason := why_not("packed", loader=loader)) is not None:
            raise Unpackable(reason)
    cache[key] = Data(key, datamodule, *loaders)
    return cache[key]


def prepare(
    num: int,
    overrides: list[str],
    job_config: DictConfig,
    data_cache: dict[str, Data],
    launcher: Any,
    skipped: set[str],
) -> Trial:
    """Everything a job needs to train packed, built as nnlab-train builds it (same seed, same
    order, so the same initial weights); Unpackable when it cannot be packed."""
    raw_cfg = _task_config(job_config)
    checked = launcher.__dict__.get("_resolved", {}).pop(tuple(overrides), None)
    if checked is not None and checked.output_dir == job_config.hydra.runtime.output_dir:
        cfg = OmegaConf.create(checked.plain)  # resolved and checked by the up-front check
    else:
        try:
            cfg = OmegaConf.create(OmegaConf.to_container(raw_cfg, resolve=True))
            check(cfg)
        except Exception as exc:  # the job's own run reports it, as a sequential run would
            raise Unpackable(f"config problem ({str(exc).splitlines()[0]})") from None
    if reason := why_not("packed", run_cfg=cfg, trainer_cfg=cfg.trainer, task_cfg=cfg.task):
        raise Unpackable(reason)
    parts: dict[str, Any] = {}
    _callbacks(cfg, parts, skipped)
    run = Run(job_config.hydra.runtime.output_dir)
    checkpointing = cfg.get("checkpoint") or {}
    if checkpointing.get("enabled", True):  # the run manager's best checkpoint (and last.ckpt)
        run.callbacks(cfg.monitor, cfg.monitor_mode, checkpointing)
        parts["checkpoint"] = run.best_callback
    try:
        datamodule, task = data_and_task(cfg, verbose=False)  # as nnlab-train builds them
        data = _data(cfg, datamodule, data_cache)
    except Unpackable:
        raise
    except Exception as exc:
        raise Unpackable(f"it does not build ({str(exc).splitlines()[0]})") from None
    configured = task.configure_optimizers()
    if isinstance(configured, dict):
        optimizer = configured["optimizer"]
        scheduler = configured["lr_scheduler"]["scheduler"]
        interval = configured["lr_scheduler"].get("interval", "epoch")
    else:
        optimizer, scheduler, interval = configured, None, "epoch"
    reason = why_not("packed", task=task, optimizer=optimizer, scheduler_interval=interval)
    if reason is not None:
        raise Unpackable(reason)
    monitors = {owner: getattr(parts.get(owner), "monitor", None) for owner in MONITORS}
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        monitors[PLATEAU] = task.hparams.get("scheduler_monitor")
    if (reason := why_not("packed", task=task, monitors=monitors)) is not None:
        raise Unpackable(reason)
    trainer = cfg.trainer
    clip = trainer.get("gradient_clip_val")
    (averaging,) = build_averaging(cfg) or (None,)
    # this job's own (set by _job_config; a deep copy would copy the job's whole config too,
    # the parent of its hydra node)
    hydra_cfg = hydra_compat.hydra_config()
    checkpoint, es = parts.get("checkpoint"), parts.get("early_stopping")
    if es is not None:
        es = EarlyStop(
            es.monitor, es.mode, es.patience, es.min_delta, trainer.get("min_epochs") or 0
        )
    trial = Trial(
        num=num,
        overrides=overrides,
        cfg=cfg,
        raw_cfg=raw_cfg,
        hydra_cfg=hydra_cfg,
        run=run,
        task=task,
        data=data,
        optimizer=optimizer,
        scheduler=scheduler,
        scheduler_interval=interval,
        checkpoint=checkpoint,
        best=None if checkpoint is None else BestCheckpoint(checkpoint.monitor, checkpoint.mode),
        stop=es,
        lr_monitor=parts.get("lr_monitor", False),
        max_epochs=int(trainer.get("max_epochs") or 1000),
        clip=float(clip) if clip else math.inf,
        averaging=averaging,
    )
    trial.reporter = trial_reporter(cfg)  # a trial of nnlab's search (HydraConfig is this job's)
    subdir = job_config.hydra.output_subdir  # resolves against the whole config
    trial.output_subdir = None if subdir is None else str(subdir)
    _resume(trial, launcher_states(launcher))
    device = launcher.device_for(cfg)
    trial.signature = "\n".join(
        [
            stack.architecture(task),
            type(task).__name__,
            repr({k: v for k, v in task.hparams.items() if k not in ("optimizer", "scheduler")})
            if not _is_cls(task)
            else repr((task.num_classes, task.binary, task.hparams.channels_last)),
            type(optimizer).__name__,
            repr(
                [
                    (tuple(t.shape[1:]), t.dtype, len(t), loader.batch_size)
                    for loader in (data.train_loader, data.val_loader, data.test_loader)
                    for t in loader.tensors
                ]
            ),
            repr([trainer.get(f"limit_{s}_batches") for s in ("train", "val", "test")]),
            repr(trainer.get("accumulate_grad_batches")),
            type(averaging).__name__,  # one kind of averaging per group (settings per trial)
            str(device),
        ]
    )
    return trial


def launcher_states(launcher: Any) -> dict[int, dict]:
    """The resume states of this sweep directory, read once per launch."""
    if getattr(launcher, "_states", None) is None:
        launcher._states = load_states(Path(str(launcher.config.hydra.sweep.dir)))
    return launcher._states


def _is_cls(task: Any) -> bool:
    return isinstance(task, ClassificationTask)


def _resume(t: Trial, states: dict[int, dict]) -> None:
    """A trial of a resumed sweep continues from its state in `<sweep>/.packed/`."""
    state = states.get(t.num)
    if state is None or t.best is None:
        return
    t.saved = state["rows"]  # its weights, optimizer moments, ...: the group puts them back
    t.optimizer.load_state_dict({"state": {}, "param_groups": state["optimizer_groups"]})
    if t.averaging is not None and state.get("averaging") is not None:
        t.averaging.load_state_dict(state["averaging"])
    swa_lr = t.averaging is not None and t.averaging.scheduler_state is not None
    if t.scheduler is not None and state.get("scheduler") is not None and not swa_lr:
        t.scheduler.load_state_dict(state["scheduler"])  # (else it is SWA's: taken over again)
    t.epoch = int(state["epoch"])
    t.global_step = int(state["global_step"])
    t.best.score, t.best.epoch, t.best.step = state["best"]
    if t.stop is not None and state["stop"] is not None:
        t.stop.best, t.stop.wait, t.stop.requested = state["stop"]
    t.best_path, t.stopped, t.failed = state["best_path"], state["stopped"], state["failed"]
    t.pruned_at = state["pruned_at"]
    t.resumed = True


def _groups(trials: list[Trial], pack_size: int) -> list[list[Trial]]:
    by_signature: dict[str, list[Trial]] = {}
    for t in trials:
        by_signature.setdefault(t.signature, []).append(t)
    groups = []
    for members in by_signature.values():
        for start in range(0, len(members), max(pack_size, 1)):
            groups.append(members[start : start + pack_size])
    return groups


# -- running a group ------------------------------------------------------------------------------
def _start(t: Trial) -> None:
    """The run directory as nnlab-train leaves it at start: .hydra/, config, status, loggers."""
    root = t.run.root
    root.mkdir(parents=True, exist_ok=True)
    if t.output_subdir is not None and not t.resumed:
        hydra_dir = root / t.output_subdir
        hydra_compat.save_config(t.raw_cfg, "config.yaml", hydra_dir)
        hydra_compat.save_config(t.hydra_cfg, "hydra.yaml", hydra_dir)
        hydra_compat.save_config(t.hydra_cfg.hydra.overrides.task, "overrides.yaml", hydra_dir)
    hydra_compat.point_hydra_config(t.hydra_cfg)  # what the config's ${hydra:...} read
    if t.resumed:
        t.run.start(resumed=True)
    else:
        t.run.start(experiment=t.cfg.get("name"))
        # the config prepare() resolved (resolving it again was most of a trial's start)
        t.run.save_config(t.cfg)
        print_config_tree(t.cfg, save_to=root / "config_tree.log", echo=False)
    file_log = logging.getLogger(f"nnlab.packed.trial{t.num}")
    file_log.propagate = False
    file_log.setLevel(logging.INFO)
    for handler in list(file_log.handlers):
        file_log.removeHandler(handler)
    handler = logging.FileHandler(root / "train.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    file_log.addHandler(handler)
    t.file_log = file_log
    t.say("Packed trial #%d (%s)%s", t.num, " ".join(t.overrides), " resumed" if t.resumed else "")
    t.loggers = build_all(t.cfg.get("logger"), "logger")
    hparams = {**dict(t.task.hparams_initial)}
    if getattr(t.data.module, "hparams_initial", None):
        hparams.update(dict(t.data.module.hparams_initial))
    for logger in t.loggers:
        logger.log_hyperparams(hparams)


def _run_group(group: list[Trial], device: torch.device, launcher) -> None:
    state_path = group[0].run.root.parent / STATE_DIR / f"group{group[0].num}.ckpt"
    try:
        for t in group:
            _start(t)
        PackedGroup(group, device, state_path, launcher.recurrent, launcher.save_every_s).run()
    except Exception as exc:  # every trial of the group failed as a sequential one would
        log.exception("Packed group failed")
        for t in group:
            if not t.failed:
                t.failed = f"{type(exc).__name__}: {exc}"
                t.run.fail(t.failed)
    finally:
        for t in group:
            if t.file_log is not None:
                for handler in list(t.file_log.handlers):
                    handler.close()
                    t.file_log.removeHandler(handler)
