"""One packed group: the trials of a sweep whose networks have the same shapes, trained together
as one stacked model, each ending in its own run directory as a sequential trial would.

Per epoch and per trial this follows what nnlab-train's Lightning loop does: the batches come in
the trial's own data order (`MemoryBatcher.order`, the same function), the loss is the task's,
gradients are clipped by the trial's `trainer.gradient_clip_val`, the optimizer step uses the
trial's hyperparameters (its scheduler steps its own lr), validation gives the same metrics
(torchmetrics, the task's collections), ModelCheckpoint / EarlyStopping decide as Lightning's do,
and the loggers get the same scalars at the same steps. A trial whose loss becomes NaN/inf is
frozen, marked failed and masked out; the others go on.

Checkpoints and resume: after an epoch, at most every `hydra.launcher.save_every_s` seconds (and
after the last), the group writes one file, `<sweep>/.packed/group<N>.ckpt`, with each trial's
weights (current and best), optimizer moments, scheduler, best score and early-stopping counter.
A file per trial per epoch would cost as much as the training itself for the small networks; the
trials' own Lightning checkpoints (best and last, as ModelCheckpoint names them) are written when
the trial ends. Running the same sweep again with
`hydra.sweep.dir=<that sweep>` keeps the completed trials and continues the others.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from omegaconf import DictConfig
from torch import nn

from nnlab.assemble import record
from nnlab.engine.averaging import CURRENT, blend
from nnlab.engine.policy import BestCheckpoint, EarlyStop
from nnlab.engine.step import Accumulation, OptimizerStep, TrialParameters
from nnlab.packed import dense, stack
from nnlab.packed.recurrent import DROPOUT_RATE
from nnlab.runs import LAST, PACKED_STATE, Run, atomic_save
from nnlab.tasks.classification import ClassificationTask
from nnlab.tracking import log_run_summary

log = logging.getLogger("nnlab.packed")
STATE_DIR = PACKED_STATE  # in the sweep directory: each group's resume state, one file per group


def load_states(sweep_dir: Path) -> dict[int, dict]:
    """Every trial's newest resume state found in `<sweep>/.packed/` (by job number)."""
    found: dict[int, dict] = {}
    for path in sorted((sweep_dir / STATE_DIR).glob("group*.ckpt")):
        try:
            saved = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # damaged: those trials start again
            log.warning("Skipping damaged packed state %s: %s", path, exc)
            continue
        stacked = saved.get("stacked")  # absent from files written before stacked saving
        for num, state in saved.get("trials", {}).items():
            if num not in found or state["epoch"] > found[num]["epoch"]:
                found[num] = state if stacked is None else _trial_of(stacked, state)
    return found


def _trial_of(stacked: dict, state: dict) -> dict:
    """Trial `state["index"]`'s weights (current and best) and optimizer moments, sliced out
    of a group file's stacked tensors."""
    i = state["index"]
    average = stacked.get("average")
    return {
        **state,
        "average": None if average is None else {n: v[i].clone() for n, v in average.items()},
        "state_dict": stack.state_dict_of(stacked["params"], stacked["buffers"], i),
        "best_state_dict": stack.state_dict_of(stacked["best_params"], stacked["best_buffers"], i),
        "optimizer": {
            n: {k: v[i].clone() for k, v in s.items()} for n, s in stacked["optimizer"].items()
        },
    }


@dataclass
class Data:
    """A data module, set up, and its three in-memory loaders (MemoryBatcher)."""

    key: str
    module: Any
    train_loader: Any
    val_loader: Any
    test_loader: Any


@dataclass
class Trial:
    """One job of the sweep, ready to train: its config, run, task, data and decisions."""

    num: int
    overrides: list[str]
    cfg: DictConfig  # resolved, without the hydra block
    raw_cfg: DictConfig  # as Hydra composed it (saved in the run directory)
    hydra_cfg: DictConfig
    job_config: DictConfig  # both together, as Hydra composed them for this job
    run: Run
    task: Any
    data: Data
    optimizer: torch.optim.Optimizer
    scheduler: Any = None
    scheduler_interval: str = "epoch"
    scheduler_monitor: str | None = None
    checkpoint: ModelCheckpoint | None = None
    early_stopping: EarlyStopping | None = None
    lr_monitor: bool = False
    loggers: list = field(default_factory=list)
    max_epochs: int = 1
    min_epochs: int = 0
    clip: float = math.inf
    averaging: Any = None  # the averaging group's EMA / SWA (engine/averaging.py), or None
    average_state: dict | None = None  # resumed: the averaged weights so far
    # training progress (restored on resume)
    start_epoch: int = 0
    global_step: int = 0
    optimizer_state: dict = field(default_factory=dict)  # param name -> {state name: tensor}
    best_score: float | None = None
    best_path: str | None = None
    best_epoch: int | None = None
    best_step: int = 0
    best_state: dict | None = None  # resumed: the best weights so far
    epoch: int = -1  # the last epoch trained
    wait: int = 0
    stop_best: float | None = None
    stop_requested: bool = False  # early stopping asked, min_epochs not done yet
    stopped: bool = False
    failed: str | None = None
    reporter: Any = None  # a search's trial: reports after each epoch, may be pruned
    pruned_at: int | None = None
    epochs_done: int = 0
    file_log: logging.Logger | None = None

    signature: str = ""
    output_subdir: str | None = ".hydra"
    resumed: bool = False
    record: dict = field(default_factory=dict)

    def say(self, message: str, *args: Any) -> None:
        if self.file_log is not None:
            self.file_log.info(message, *args)


def limit(count: int, value: Any) -> int:
    """Lightning's limit_*_batches: None/1.0 all, an int a count, a float a fraction."""
    if value is None:
        return count
    if isinstance(value, float) and value <= 1.0:
        return int(count * value) if value < 1.0 else count
    return min(count, int(value))


class TaskCall(nn.Module):
    """A task's own methods as a module's forward, so that functional_call + vmap run them with
    each trial's weights: the packed trainer has no loss of its own. Training: the task's
    `training_loss(batch)` (mean loss, correct predictions or None); evaluation: the task's
    `outputs(batch)` and `loss(outputs, targets)`."""

    def __init__(self, task: nn.Module):
        super().__init__()
        self.task = task
        self.counts_correct = False

    def forward(self, batch, evaluate: bool = False):
        if evaluate:
            out, y = self.task.outputs(batch)
            return out, y, self.task.loss(out, y)
        loss, correct = self.task.training_loss(batch)
        self.counts_correct = correct is not None
        return loss, (loss.new_zeros(()) if correct is None else correct.to(loss.dtype))


class PackedGroup:
    def __init__(
        self,
        trials: list[Trial],
        device: torch.device,
        state_path: Path,
        recurrent: str = "auto",
        save_every_s: float = 0.0,
    ):
        self.trials, self.device, self.state_path = trials, device, state_path
        self.save_every_s = save_every_s
        self.tasks = [t.task for t in trials]
        first = trials[0]
        self.classification = isinstance(first.task, ClassificationTask)
        # One copy of every distinct data set, stacked: (datasets, samples, ...) per tensor.
        distinct = list({t.data.key: t.data for t in trials}.values())
        keys = [d.key for d in distinct]
        self.data_index = torch.tensor([keys.index(t.data.key) for t in trials], device=device)
        self.loaders = {
            split: [getattr(d, f"{split}_loader") for d in distinct] for split in ("val", "test")
        }
        self.loaders["train"] = [t.data.train_loader for t in trials]
        self.data = {  # every distinct data set once: (data sets, samples, ...) per tensor
            split: [
                torch.stack([getattr(d, f"{split}_loader").tensors[i] for d in distinct]).to(device)
                for i in range(len(first.data.train_loader.tensors))
            ]
            for split in ("train", "val", "test")
        }
        self.base = stack.functional_copy(first.task, recurrent).to(device)
        self.caller = TaskCall(self.base)
        params, self.buffers = stack.stack_states([t.task for t in trials], device)
        # all parameters in one (trials, n) leaf; `params` are views of it by name
        self.layout = stack.Flat(params)
        self.flat = self.layout.join(params).detach().requires_grad_(True)
        self.native = self._trial_network()
        how = "its layers on the trial axis" if self.native else "vmapped over trials"
        log.info("Stacked network: %s", how)
        self.optimizer_name = type(first.optimizer).__name__
        self._averaging_spec()

    def _averaging_spec(self) -> None:
        """Every trial's averaged weights in one (trials, n) tensor, with its per-trial count
        and decay (the group's trials share one kind: the launcher's signature)."""
        self.averaging = self.trials[0].averaging
        if self.averaging is None:
            return
        self.avg_flat = self.flat.detach().clone()
        averaging = [t.averaging for t in self.trials]
        self.avg_count = torch.tensor([float(a.count) for a in averaging], device=self.device)
        if self.averaging.decay is not None:  # 1 - decay as each trial alone rounds it
            self.decay = torch.tensor([a.decay for a in averaging], device=self.device)[:, None]
            self.rest = torch.tensor([1 - a.decay for a in averaging], device=self.device)[:, None]
        else:
            self.decay = self.rest = None

    def _average(self, mask: torch.Tensor) -> None:
        """One averaging update (engine/averaging.py's rule) of the `mask`ed trials."""
        with torch.no_grad():
            new = blend(self.avg_flat, self.flat, self.avg_count[:, None], self.decay, self.rest)
            self.avg_flat.copy_(torch.where(mask[:, None], new, self.avg_flat))
            self.avg_count += mask.to(self.avg_count.dtype)

    @property
    def eval_flat(self) -> torch.Tensor:
        """The weights validation, checkpoints and test see: the averaged ones of the trials
        that have any, else the trained ones."""
        flat = self.flat.detach()
        if self.averaging is None:
            return flat
        return torch.where((self.avg_count > 0)[:, None], self.avg_flat, flat)

    @property
    def params(self) -> dict[str, torch.Tensor]:
        """{name: (trials, ...)} views of the flat parameters (made anew for each step: a
        view's place in the autograd graph comes with it)."""
        return self.layout.split(self.flat)

    @property
    def best_params(self) -> dict[str, torch.Tensor]:
        return self.layout.split(self.best_flat)

    # -- the vectorised pieces -----------------------------------------------------------------
    def _call(self, params, buffers, batch, evaluate: bool = False):
        """The task's own loss (TaskCall) with one trial's weights (vmapped over trials)."""
        named = {f"task.{k}": v for k, v in (params | buffers).items()}
        return torch.func.functional_call(self.caller, named, (batch,), {"evaluate": evaluate})

    def _train_fn(self, params, buffers, x, y):
        return self._call(params, buffers, (x, y))

    def _eval_fn(self, params, buffers, x, y):
        return self._call(params, buffers, (x, y), evaluate=True)

    def _around_outputs(self, out, x, y, evaluate: bool = False):
        """The task's own code for one trial (vmapped) with `out` as its network's outputs."""
        stand_in = self.native[1]
        stand_in.value, stand_in.inputs = out, x
        network, self.base.net = self.base.net, stand_in
        try:
            return self.caller((x, y), evaluate=evaluate)
        finally:
            self.base.net = network

    def _trial_network(self):
        """(TrialNetwork, Outputs) when the network's layers all run on a trial axis
        (packed/dense.py) and the task calls it as `net(inputs)`; else None (vmapped)."""
        network = dense.trial_network(self.base.net, prefix="net.")
        if network is None or {*self.layout.split(self.flat), *self.buffers} != set(network.slots):
            return None
        batch = self._slice("train", 0, 1)
        if len(batch) != 2:  # (inputs, targets) only
            return None
        x, y = batch
        self.native = (network, dense.Outputs())
        try:  # the task's calling convention, training and evaluating
            with torch.no_grad():
                for evaluate in (False, True):
                    self.base.train(not evaluate)
                    self._stepper(evaluate)(self.params, self.buffers, x, y)
        except dense.NotNative:
            return None
        finally:
            self.base.train()
        return self.native

    def _stepper(self, evaluate: bool = False):
        """fn(params, buffers, x, y) -> the task's per-trial results (TaskCall) for a stack of
        trials: the network on the trial axis (packed/dense.py) when it can, else vmapped."""
        if self.native is None:
            fn = self._eval_fn if evaluate else self._train_fn
            return torch.vmap(fn, randomness="different")
        around = torch.vmap(
            functools.partial(self._around_outputs, evaluate=evaluate), randomness="different"
        )
        network = self.native[0]
        return lambda params, buffers, x, y: around(network(params, buffers, x), x, y)

    def _gather(self, split: str, idx: torch.Tensor) -> list[torch.Tensor]:
        """Each trial's own samples: idx (trials, batch) -> tensors (trials, batch, ...)."""
        rows = self.data_index[:, None]
        return [t[rows, idx] for t in self.data[split]]

    def _slice(self, split: str, start: int, end: int) -> list[torch.Tensor]:
        return [t[self.data_index, start:end] for t in self.data[split]]

    # -- training --------------------------------------------------------------------------------
    def run(self) -> None:
        trials, device = self.trials, self.device
        n_trials = len(trials)
        self._restore()
        train_loader = trials[0].data.train_loader
        batch_size = train_loader.batch_size
        num_batches = limit(train_loader._num_batches(), trials[0].cfg.trainer.limit_train_batches)
        state: dict[str, torch.Tensor] = {}  # optimizer state name -> (trials, n), as flat
        for i, t in enumerate(trials):
            for name, saved in t.optimizer_state.items():
                for key, value in saved.items():
                    if key not in state:
                        state[key] = torch.zeros_like(self.flat, requires_grad=False)
                    self.layout.split(state[key])[name][i] = value.to(device)
        parameters = TrialParameters(
            self.flat,
            self.layout,
            [t.optimizer for t in trials],
            [t.clip for t in trials],
            state,
            [t.global_step for t in trials],
        )
        optimizer_step = OptimizerStep(
            parameters,
            Accumulation(trials[0].cfg.trainer.get("accumulate_grad_batches")),
            averaging=self._average if self.averaging and self.averaging.per_step else None,
        )
        train_step = self._stepper()
        # buffers a step may change (running statistics), not the dropout rates
        running = [n for n in self.buffers if not n.endswith(DROPOUT_RATE)]
        last_epoch = max(t.max_epochs for t in trials)
        saved_at = time.monotonic()
        for epoch in range(min(t.start_epoch for t in trials), last_epoch):
            active = [
                not (t.stopped or t.failed) and t.start_epoch <= epoch < t.max_epochs
                for t in trials
            ]
            if not any(active):
                break
            mask = torch.tensor(active, device=device)
            improved = [False] * n_trials
            for t, on in zip(trials, active, strict=True):
                if on and t.lr_monitor:
                    lr = t.optimizer.param_groups[0]["lr"]
                    self._log(t, {f"lr-{self.optimizer_name}": lr}, t.global_step)
                if on and t.averaging is not None:  # SWA's schedule takes over at its epoch
                    if (swa := t.averaging.take_over_lr(t.optimizer, epoch)) is not None:
                        t.scheduler, t.scheduler_interval = swa, "epoch"
            optimizer_step.schedulers = [
                t.scheduler
                for t, on in zip(trials, active, strict=True)
                if on and t.scheduler is not None and t.scheduler_interval == "step"
            ]
            parameters.hyperparameters_changed()  # epoch schedulers, SWA's
            orders = torch.stack([loader.order(epoch) for loader in self.loaders["train"]])
            orders = orders.to(device)
            loss_sum = torch.zeros(n_trials, device=device)
            correct = torch.zeros(n_trials, device=device)
            seen = torch.zeros(n_trials, device=device)
            self.base.train()
            for b in range(num_batches):
                idx = orders[:, b * batch_size : (b + 1) * batch_size]
                x, y = self._gather("train", idx)
                before = {n: self.buffers[n].clone() for n in running}
                losses, right = train_step(parameters.views(), self.buffers, x, y)
                use = optimizer_step.going_on(losses, mask)  # NaN/inf: that trial stops
                total = torch.where(use, losses, torch.zeros_like(losses)).sum()
                optimizer_step(total, b, b == num_batches - 1, use)
                with torch.no_grad():
                    for n, old in before.items():  # frozen trials keep their statistics
                        buf = self.buffers[n]
                        buf.copy_(torch.where(stack._b(use, buf), buf, old))
                    n = float(idx.shape[1])
                    loss_sum += torch.where(use, losses.detach() * n, 0.0)
                    correct += torch.where(use, right.detach(), 0.0)
                    seen += use.to(seen.dtype) * n
            bad = mask & optimizer_step.failed  # the trials that failed in this epoch
            if self.averaging is not None and not self.averaging.per_step:  # SWA: epoch ends
                ends = [
                    on and t.averaging.updates_after_epoch(epoch)
                    for on, t in zip(active, trials, strict=True)
                ]
                self._average(torch.tensor(ends, device=device) & ~bad)
            bad_now = bad.tolist()
            step_counts = parameters.steps.long().tolist()
            val = self.evaluate("val", self.layout.split(self.eval_flat), self.buffers)
            train_loss = (loss_sum / seen.clamp_min(1)).tolist()
            train_acc = (correct / seen.clamp_min(1)).tolist()
            for i, t in enumerate(trials):
                if not active[i]:
                    continue
                t.global_step = step_counts[i]
                if bad_now[i]:
                    t.failed = (
                        f"training loss became nan/inf in epoch {epoch} (packed trial); lower "
                        "task.optimizer.lr, clip gradients (trainer.gradient_clip_val=1.0) or "
                        "check the data. The checkpoints from before are kept."
                    )
                    t.say("Trial failed: %s", t.failed)
                    t.run.fail(t.failed)
                    continue
                metrics = {"train/loss": train_loss[i]}
                if self.caller.counts_correct:  # the task's training_loss counts them
                    metrics["train/acc"] = train_acc[i]
                metrics.update(val[i])  # at the step Lightning logs epoch-end scalars at
                self._log(t, {**metrics, "epoch": epoch}, t.global_step - 1)
                t.say(
                    "Epoch %d: %s",
                    epoch,
                    ", ".join(f"{k}={v:.6g}" for k, v in metrics.items()),
                )
                t.epochs_done = epoch + 1
                improved[i] = self._end_of_epoch(t, epoch, metrics)
            if any(improved):
                self._keep_best(improved)
            if time.monotonic() - saved_at >= self.save_every_s or epoch + 1 == last_epoch:
                self._save_group(parameters.state)
                saved_at = time.monotonic()
        self.finish()

    def _end_of_epoch(self, t: Trial, epoch: int, metrics: dict) -> bool:
        """Checkpoints, early stopping and the scheduler, in Lightning's order; whether the
        trial's weights are its best so far (to keep: `_keep_best`)."""
        improved = False
        es = t.early_stopping
        if es is not None:
            stop = EarlyStop(es.monitor, es.mode, es.patience, es.min_delta, t.min_epochs)
            stop.best, stop.wait, stop.requested = t.stop_best, t.wait, t.stop_requested
            if stop.update(metrics, epoch):
                t.stopped = True
                t.say("Early stopping at epoch %d (%s did not improve)", epoch, es.monitor)
            t.stop_best, t.wait, t.stop_requested = stop.best, stop.wait, stop.requested
        rep = t.reporter  # as nnlab's TrialReporter callback does after a validation
        if rep is not None and t.pruned_at is None and rep.metric in metrics:
            if rep.check(float(metrics[rep.metric]), epoch):
                t.stopped, t.pruned_at = True, epoch  # leaves the group; the others go on
                t.say("Pruned by the search after epoch %d (%s)", epoch, rep.metric)
        cb = t.checkpoint
        if cb is not None:
            best = BestCheckpoint(cb.monitor, cb.mode, t.best_score, t.best_epoch, t.best_step)
            if best.update(metrics, epoch, t.global_step):  # written when the trial ends
                t.best_path = cb.format_checkpoint_name({"epoch": epoch, "step": t.global_step})
                t.best_score, t.best_epoch, t.best_step = best.score, best.epoch, best.step
                improved = True
        if t.scheduler is not None and t.scheduler_interval == "epoch":
            if isinstance(t.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                t.scheduler.step(metrics[t.scheduler_monitor])
            else:
                t.scheduler.step()
        t.epoch = epoch
        return improved

    def _resume_state(self, i: int, t: Trial) -> dict:
        """What continues trial `i` after a crash besides its weights and optimizer moments
        (those are the group's stacked tensors, index `i`): scheduler, best score and
        early-stopping counter."""
        if t.averaging is not None:
            t.averaging.count = int(self.avg_count[i])
        return {
            "index": i,
            "epoch": t.epoch,
            "averaging": t.averaging.state_dict() if t.averaging is not None else None,
            "global_step": t.global_step,
            "optimizer_groups": t.optimizer.state_dict()["param_groups"],
            "scheduler": t.scheduler.state_dict() if t.scheduler is not None else None,
            "best_score": t.best_score,
            "best_path": t.best_path,
            "best_epoch": t.best_epoch,
            "best_step": t.best_step,
            "wait": t.wait,
            "stop_best": t.stop_best,
            "stop_requested": t.stop_requested,
            "stopped": t.stopped,
            "pruned_at": t.pruned_at,
            "failed": t.failed,
        }

    def _save_group(self, state: dict) -> None:
        """One file per group, rewritten atomically (`<sweep>/.packed/group<first job>.ckpt`,
        at most every `save_every_s`): the stacked weights, best weights and optimizer moments
        as they are, and each trial's own counters; `load_states` slices them into trials, once,
        when a sweep resumes (what that saves: docs/performance.md)."""
        trials = {
            t.num: self._resume_state(i, t)
            for i, t in enumerate(self.trials)
            if t.checkpoint is not None and t.epoch >= 0
        }
        if not trials:
            return

        def host(tensors: dict) -> dict:
            return {n: v.detach().cpu() for n, v in tensors.items()}

        optimizer: dict[str, dict] = {name: {} for name, *_ in self.layout.layout}
        for key, flat in state.items():  # by parameter name, as the trials' optimizers have it
            for name, view in self.layout.split(flat).items():
                optimizer[name][key] = view.cpu()
        stacked = {
            "params": host(self.params),
            "buffers": host(self.buffers),
            "best_params": host(self.best_params),
            "best_buffers": host(self.best_buffers),
            "optimizer": optimizer,
        }
        if self.averaging is not None:
            stacked["average"] = host(self.layout.split(self.avg_flat))
        # not fsynced (as before): rewritten often, and a kill (not a power loss) is the risk
        atomic_save({"trials": trials, "stacked": stacked}, self.state_path, durable=False)

    def _keep_best(self, improved: list[bool]) -> None:
        """The current weights become the best ones of the `improved` trials."""
        keep = torch.tensor(improved, device=self.device)
        with torch.no_grad():
            flat = self.eval_flat
            self.best_flat.copy_(torch.where(stack._b(keep, flat), flat, self.best_flat))
            for name, b in self.buffers.items():
                best = self.best_buffers[name]
                best.copy_(torch.where(stack._b(keep, b), b, best))

    def _weights(self, i: int, t: Trial, params: dict, buffers: dict) -> dict:
        weights = stack.state_dict_of(params, buffers, i)
        state_dict = t.task.state_dict()  # the task's own names (net.…), these weights in them
        state_dict.update({k: v for k, v in weights.items() if k in state_dict})
        return state_dict

    def _save(
        self, t: Trial, path: Path, state_dict: dict, epoch: int, step: int, current=None
    ) -> None:
        """A Lightning-format checkpoint: `Task.load_from_checkpoint` and nnlab-eval read it
        (`current`: the trained weights when `state_dict` holds averaged ones)."""
        checkpoint = {
            "epoch": epoch,
            "global_step": step,
            "pytorch-lightning_version": L.__version__,
            "state_dict": state_dict,
            "hparams_name": None,
            "hyper_parameters": dict(t.task.hparams),
        }
        if getattr(t.data.module, "hparams", None):
            checkpoint["datamodule_hparams_name"] = "kwargs"
            checkpoint["datamodule_hyper_parameters"] = dict(t.data.module.hparams)
        if current is not None:
            checkpoint[CURRENT] = current
        atomic_save(checkpoint, path, durable=False)

    def _write_checkpoints(self, i: int, t: Trial) -> None:
        """The trial's best and last checkpoints, as ModelCheckpoint leaves them."""
        cb = t.checkpoint
        if cb is None or t.epoch < 0:
            return
        if t.best_path and t.best_epoch is not None:
            best = self._weights(i, t, self.best_params, self.best_buffers)
            self._save(t, Path(t.best_path), best, t.best_epoch, t.best_step)
        # the run manager always keeps last.ckpt (nnlab/runs.py)
        last = self._weights(i, t, self.layout.split(self.eval_flat), self.buffers)
        current = None
        if self.averaging is not None and self.avg_count[i] > 0:  # as engine/averaging.py saves
            current = self._weights(i, t, self.params, self.buffers)
        self._save(t, Path(cb.dirpath) / LAST, last, t.epoch, t.global_step, current)

    def _log(self, t: Trial, metrics: dict[str, float], step: int) -> None:
        for logger in t.loggers:
            logger.log_metrics(metrics, step=max(step, 0))

    # -- validation and test -------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, split: str, params: dict, buffers: dict) -> list[dict[str, float]]:
        """Every trial's metrics on `split`, named as the task logs them."""
        loader = self.loaders[split][0]
        n = len(loader.tensors[0])
        size = loader.batch_size
        limit_key = f"limit_{split}_batches"
        batches = limit(math.ceil(n / size), self.trials[0].cfg.trainer.get(limit_key))
        fn = self._stepper(evaluate=True)
        self.base.eval()
        outputs, loss_sum, count = [], 0.0, 0
        for b in range(batches):
            x, y = self._slice(split, b * size, min((b + 1) * size, n))
            out, y, loss = fn(params, buffers, x, y)
            outputs.append((out, y))
            loss_sum = loss_sum + loss * y.shape[1]
            count += y.shape[1]
        self.base.train()
        losses = (loss_sum / max(count, 1)).tolist()
        if not self.classification and set(self.tasks[0].val_metrics.keys()) == {
            "val/mse",
            "val/mae",
        }:  # MeanSquaredError / MeanAbsoluteError over all samples, for every trial at once
            out = torch.cat([o for o, _ in outputs], dim=1)
            y = torch.cat([t for _, t in outputs], dim=1)
            mse = (out - y).pow(2).flatten(1).mean(1).tolist()
            mae = (out - y).abs().flatten(1).mean(1).tolist()
            return [
                {f"{split}/loss": loss, f"{split}/mse": a, f"{split}/mae": b}
                for loss, a, b in zip(losses, mse, mae, strict=True)
            ]
        results = []
        for i, task in enumerate(self.tasks):
            metrics = getattr(task, f"{split}_metrics")
            metrics.reset()
            out = torch.cat([o[i] for o, _ in outputs]).cpu()
            y = torch.cat([t[i] for _, t in outputs]).cpu()
            metrics.update(task.scores(out) if self.classification else out, y)
            values = {f"{split}/loss": losses[i]}
            values.update({k: float(v) for k, v in metrics.compute().items()})
            metrics.reset()
            results.append(values)
        return results

    # -- resume and the end ----------------------------------------------------------------------
    def _restore(self) -> None:
        """Trials resumed from their last.ckpt: weights into the stacked tensors, the best
        checkpoint's weights as the best so far."""
        self.best_flat = self.flat.detach().clone()
        self.best_buffers = {n: b.clone() for n, b in self.buffers.items()}
        best_params = self.best_params
        for i, t in enumerate(self.trials):
            if t.average_state is not None:
                with torch.no_grad():
                    for name, view in self.layout.split(self.avg_flat).items():
                        view[i] = t.average_state[name].to(view.device)
            if t.best_state is None:
                continue
            with torch.no_grad():
                for name, value in t.best_state.items():
                    target = best_params.get(name)
                    if target is None:
                        target = self.best_buffers.get(name)
                    if target is not None:
                        target[i] = value.to(target.device)

    def finish(self) -> None:
        """Validate and test every trial on its best weights; write metrics.json and status."""
        have_best = torch.tensor(
            [bool(t.checkpoint is not None and t.best_path) for t in self.trials],
            device=self.device,
        )
        last = self.eval_flat  # the weights in memory at the end: averaged ones where any
        flat = torch.where(stack._b(have_best, last), self.best_flat, last)
        params = self.layout.split(flat)
        buffers = {
            n: torch.where(stack._b(have_best, b), self.best_buffers[n], b)
            for n, b in self.buffers.items()
        }
        val = self.evaluate("val", params, buffers)
        test = self.evaluate("test", params, buffers)
        for i, t in enumerate(self.trials):
            self._write_checkpoints(i, t)  # a failed trial keeps those from before the NaN
            if t.failed:
                t.run.fail(t.failed)  # again for a resumed one: its start said running
                for logger in t.loggers:
                    logger.finalize("failed")
                continue
            metrics = record(
                val[i], test[i], t.best_path, t.best_epoch, t.epochs_done, t.global_step
            )
            if t.pruned_at is not None:  # status.json: pruned
                metrics["pruned_at_epoch"] = t.pruned_at
            self._log(t, {**val[i], "epoch": t.epochs_done}, t.global_step)
            self._log(t, {**test[i], "epoch": t.epochs_done}, t.global_step)
            # hyperparameters, final metrics, tags: what a sequential run sends (nnlab/tracking.py)
            log_run_summary(t.loggers, t.cfg, t.task, metrics)
            for logger in t.loggers:
                logger.finalize("success")
            t.record = t.run.finish(metrics)
            t.say("Metrics: %s", t.run.metrics_path)
