"""Why a run cannot train in one of nnlab's own engines, in one place.

- `fused`: nnlab's loop inside Lightning's (tasks/loops.py), which must train exactly as
  Lightning's own loop would;
- `captured`: the fused loop with its step replayed as one CUDA graph (tasks/captured.py);
- `packed`: trials of a sweep stacked into one model (nnlab/packed/).

`why_not(engine, **parts)` runs every check of that engine whose parts are given and returns the
first reason, in words a log line can show, or None: the run can. Each engine asks with what it
has when it decides (the fused loop: the task and the live trainer; the packed launcher: the
trainer's config before building anything, then the built task and its optimizer).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from hydra.utils import get_class
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import nn

from nnlab.engine.stacked import OPTIMIZERS  # the optimizers written for stacked parameters
from nnlab.schema import is_plateau
from nnlab.tasks.captured import CAPTURABLE

ENGINES = ("fused", "captured", "packed")

# Hooks Lightning calls around every optimizer step; the fused loop does not, so a task or
# callback that overrides one trains in Lightning's loop.
STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")
MODULE_STEP_HOOKS = (
    *STEP_HOOKS,
    "on_before_zero_grad",
    "backward",
    "optimizer_step",
    "optimizer_zero_grad",
    "configure_gradient_clipping",
    "lr_scheduler_step",
)

Check = Callable[..., str | None]
CHECKS: list[tuple[frozenset[str], tuple[str, ...], Check]] = []


def check(*engines: str) -> Callable[[Check], Check]:
    """Register a check of `engines`; it runs when every part its parameters name is given."""

    def register(fn: Check) -> Check:
        needs = tuple(inspect.signature(fn).parameters)
        CHECKS.append((frozenset(engines), needs, fn))
        return fn

    return register


def why_not(engine: str, **parts: Any) -> str | None:
    """Why `engine` cannot train with these parts (None: it can, as far as they tell).
    Parts: task, trainer (a live L.Trainer), run_cfg (the whole config), trainer_cfg,
    task_cfg, optimizer, scheduler_interval, callback, loader, monitors ({owner: metric}).
    """
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r}: one of {', '.join(ENGINES)}")
    for engines, needs, fn in CHECKS:
        if engine in engines and all(parts.get(n) is not None for n in needs):
            if (reason := fn(**{n: parts[n] for n in needs})) is not None:
                return reason
    return None


# -- the fused loop (and so the captured step): Lightning's semantics, step for step -----------
@check("fused", "captured")
def _one_process(trainer) -> str | None:
    if trainer.world_size > 1:
        return f"{trainer.world_size} processes (DDP) reduce gradients once per backward"
    return None


@check("fused", "captured")
def _precision(trainer) -> str | None:
    precision = str(trainer.precision)
    if precision.startswith("16") or precision == "transformer-engine":
        return f"precision {precision} scales the loss with host-side overflow checks"
    return None


@check("captured")
def _accumulation(trainer) -> str | None:
    if trainer.accumulate_grad_batches != 1:
        return "trainer.accumulate_grad_batches > 1 (a graph replays whole steps)"
    return None


@check("fused", "captured")
def _plateau_per_step(task) -> str | None:
    if (
        is_plateau(task.hparams.get("scheduler"))
        and task.hparams.get("scheduler_interval") == "step"
    ):
        return "ReduceLROnPlateau stepped per step watches a metric of Lightning's loop"
    return None


@check("fused", "captured")
def _own_step(task) -> str | None:
    from nnlab.tasks.base import Task

    if not isinstance(task, Task):
        return f"{type(task).__name__} is not an nnlab task (no training_loss)"
    if type(task).training_step is not Task.training_step:
        return f"{type(task).__name__} defines its own training_step"
    for hook in MODULE_STEP_HOOKS:
        if is_overridden(hook, task, L.LightningModule):
            return f"{type(task).__name__} overrides {hook}"
    return None


@check("fused", "captured")
def _callback_hooks(trainer) -> str | None:
    for callback in trainer.callbacks:
        for hook in STEP_HOOKS:
            if is_overridden(hook, callback, L.Callback):
                return f"the callback {type(callback).__name__} overrides {hook}"
    return None


# -- a network that carries its state from batch to batch (model.stateful) ----------------------
@check("captured", "packed")
def _stateful(task) -> str | None:
    net = getattr(task, "net", None)
    for name, module in net.named_modules() if isinstance(net, nn.Module) else ():
        if getattr(module, "stateful", False):
            where = f"{name} " if name else ""
            return (
                f"the network {where}is stateful (model.stateful: each batch starts from the "
                "state the one before left, kept on the host side of the step)"
            )
    return None


# -- the captured step ---------------------------------------------------------------------------
@check("captured")
def _cuda(trainer) -> str | None:
    device = trainer.strategy.root_device
    if device.type != "cuda":
        return f"training runs on {device.type}, CUDA graphs need a CUDA device"
    return None


@check("captured")
def _plateau(task) -> str | None:
    if is_plateau(task.hparams.get("scheduler")):
        return "ReduceLROnPlateau (not yet tried with a captured step on a GPU)"
    return None


@check("captured")
def _graph_task(task, trainer) -> str | None:
    if task.hparams.get("compile"):
        return "task.compile is on (torch.compile does its own graph capture)"
    if (reason := getattr(task, "graph_blocker", lambda: None)()) is not None:
        return reason
    datamodule = trainer.datamodule
    example = datamodule.example_input(2) if datamodule is not None else None
    if isinstance(example, tuple | list):
        return "the net reads variable-length sequences (packed by their lengths on the host)"
    return graph_optimizer(task.hparams.get("optimizer"), task.hparams.get("scheduler"))


def graph_optimizer(optimizer_cfg: dict | None, scheduler_cfg: dict | None) -> str | None:
    """Why this optimizer/scheduler pair (as configured) cannot step inside a graph."""
    target = (optimizer_cfg or {}).get("_target_", "torch.optim.Adam")
    try:
        cls = get_class(target)
    except Exception:  # noqa: BLE001 - the config check reports bad targets elsewhere
        return f"the optimizer {target} cannot be imported"
    scheduler = (scheduler_cfg or {}).get("_target_", "")
    if CAPTURABLE in inspect.signature(cls.__init__).parameters:
        return None
    if cls is torch.optim.SGD and not scheduler:
        return None  # SGD reads nothing from the host; its learning rate is baked in the graph
    return f"{target} cannot step inside a CUDA graph with a scheduler (use Adam, AdamW, RMSprop)"


# -- packed trials ---------------------------------------------------------------------------------
PACKED_TRAINER = {  # trainer keys a packed group implements only at these values
    "fast_dev_run": (False, None, 0),
    "max_steps": (-1, None),
    "check_val_every_n_epoch": (1, None),
    "val_check_interval": (1.0, None),
    "overfit_batches": (0, 0.0, None),
    "max_time": (None,),
    "gradient_clip_algorithm": ("norm", None),
    "accelerator": ("auto", "cpu", "gpu", "cuda"),
}


@check("packed")
def _packed_trainer(trainer_cfg) -> str | None:
    def get(key, default=None):
        return trainer_cfg.get(key, default)

    if str(get("strategy", "auto")) != "auto" or get("num_nodes", 1) not in (1, None):
        return "distributed training (trainer.strategy / num_nodes)"
    if get("devices", 1) not in (1, "1", "auto"):
        return f"trainer.devices={get('devices')} (packed trials use one device)"
    if str(get("precision", "32-true")) not in ("32-true", "32"):
        return f"trainer.precision={get('precision')} (packed: 32-true)"
    for key, allowed in PACKED_TRAINER.items():
        if get(key, allowed[0]) not in allowed:
            return f"trainer.{key}={get(key)}"
    return None


# Callbacks that only draw figures or print summaries: packed trials run without them (the
# launcher names them once).
SKIPPED_CALLBACKS = (
    "ModelSummaryFile",
    "ForecastPlot",
    "ClassificationFigures",
    "ConvFilters",
    "PeriodicCheckpoint",
    "ModelSummary",
    "RichModelSummary",
    "TQDMProgressBar",
    "RichProgressBar",
)


@check("packed")
def _packed_run_cfg(run_cfg) -> str | None:
    if run_cfg.get("resume") or run_cfg.get("ckpt_path"):
        return "resume= / ckpt_path= (a single run's continuation)"
    checkpointing = run_cfg.get("checkpoint") or {}
    if checkpointing.get("enabled", True) and int(checkpointing.get("save_top_k", 1)) != 1:
        return "checkpoint.save_top_k other than 1"
    return None


@check("packed")
def _packed_callback(callback) -> str | None:
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor

    kind = type(callback).__name__
    if type(callback) is EarlyStopping:
        if callback.stopping_threshold is not None or callback.divergence_threshold:
            return "EarlyStopping thresholds"
        return None
    if kind in SKIPPED_CALLBACKS or type(callback) is LearningRateMonitor:
        return None
    return f"callback {kind} (packed: checkpoints, early stopping, lr monitor)"


@check("packed")
def _packed_loader(loader) -> str | None:
    from nnlab.data.memory import MemoryBatcher

    if not isinstance(loader, MemoryBatcher):
        return "data not held in memory (data.in_memory=false or too large)"
    if len(loader.tensors) != 2:
        return "batches with extra inputs (sequence lengths); packed: (x, y)"
    if loader.drop_last:
        return "drop_last batches"
    return None


PLATEAU = "the scheduler"  # a ReduceLROnPlateau, which needs its metric


@check("packed")
def _packed_monitors(task, monitors) -> str | None:
    """Every metric a trial's checkpoint, early stopping or plateau scheduler watches must be one
    the packed group computes."""
    from nnlab.tasks.classification import ClassificationTask

    known = {"val/loss", "train/loss", *task.val_metrics.keys()}
    known |= {"train/acc"} if isinstance(task, ClassificationTask) else set()
    for owner, monitor in monitors.items():
        if monitor is None and owner != PLATEAU:  # not watching anything
            continue
        if monitor not in known:
            return f"{owner} monitors {monitor}, which the task does not log"
    return None


@check("packed")
def _packed_task_cfg(task_cfg) -> str | None:
    if task_cfg.get("compile"):
        return "task.compile"
    return None


@check("packed")
def _packed_task(task) -> str | None:
    from nnlab.tasks.classification import ClassificationTask
    from nnlab.tasks.regression import RegressionTask

    if type(task) not in (RegressionTask, ClassificationTask):
        return f"task {type(task).__name__} (packed: regression, classification)"
    return stackable(task.net)


def recurrent_layer(rnn: nn.RNNBase) -> str | None:
    """Why this recurrent layer cannot run batched over trials (packed/recurrent.py)."""
    if not rnn.batch_first:
        return "a recurrent layer that is not batch_first"
    if not rnn.bias or getattr(rnn, "proj_size", 0):
        return "a recurrent layer without biases or with projections"
    return None


def stackable(module: nn.Module) -> str | None:
    """Why copies of `module` cannot be stacked into one model."""
    if len(dtypes := {str(p.dtype) for p in module.parameters()}) > 1:
        return f"parameters of several dtypes ({', '.join(sorted(dtypes))}; packed: one)"
    for name, child in module.named_modules():
        if isinstance(child, nn.RNNBase):
            if type(child) not in (nn.RNN, nn.LSTM, nn.GRU):
                return f"{name}: {type(child).__name__} is not a plain RNN/LSTM/GRU"
            if (reason := recurrent_layer(child)) is not None:
                return f"{name}: {reason}"
        if hasattr(child, "initial_h"):  # packed recurrent layers start from zeros
            return f"{name or 'the network'}: a learned initial state (model.initial_state)"
        if isinstance(child, nn.modules.dropout._DropoutNd) and type(child) is not nn.Dropout:
            return f"{name}: {type(child).__name__} (only nn.Dropout is stacked)"
    return None


@check("packed")
def _packed_optimizer(optimizer) -> str | None:
    name = type(optimizer).__name__
    if name not in OPTIMIZERS or type(optimizer).__module__.split(".")[0] != "torch":
        return f"optimizer {name} (packed: {', '.join(OPTIMIZERS)})"
    group = optimizer.param_groups[0]
    for option in (*OPTIMIZERS[name][2], "maximize", "differentiable"):
        if group.get(option):
            return f"optimizer option {option}=true"
    if isinstance(group.get("lr"), torch.Tensor):
        return "a tensor learning rate"
    return None


@check("packed")
def _packed_interval(scheduler_interval) -> str | None:
    if scheduler_interval not in ("epoch", "step"):
        return f"task.scheduler_interval={scheduler_interval}"
    return None
