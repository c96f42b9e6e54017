"""One packed group: the trials of a sweep whose networks have the same shapes, trained together
as one stacked model, each as nnlab-train's Lightning loop would train it alone (its data
order, the task's loss, engine/step.py's step, engine/policy.py's decisions) and each ending in
its own run directory. A trial whose loss becomes NaN/inf is frozen and marked failed; the
others go on. The group's resume file and checkpoints: docs/architecture.md.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig
from torch import Tensor, nn

from nnlab.assemble import record
from nnlab.callbacks.run_config import saved_config
from nnlab.checkpoint_io import save_task_checkpoint
from nnlab.engine.averaging import CURRENT, StackedAverage
from nnlab.engine.policy import BestCheckpoint, EarlyStop
from nnlab.engine.stacked import bcast
from nnlab.engine.step import EpochSums, OptimizerStep, TrialParameters, step_scheduler
from nnlab.packed import dense, stack
from nnlab.packed.recurrent import DROPOUT_RATE
from nnlab.runs import LAST, PACKED_STATE, RESOLVED_CONFIG, Run, atomic_save
from nnlab.tasks.classification import ClassificationTask
from nnlab.tracking import log_run_summary

log = logging.getLogger("nnlab.packed")
STATE_DIR = PACKED_STATE  # in the sweep directory: each group's resume state, one file each
STATE_FORMAT = 2  # stacked tensors as the group holds them (flat)


def _map(fn, tree: Any, *others: Any) -> Any:
    """`fn(tensor, *the same place in others)` for every tensor of a nest of dicts."""
    if isinstance(tree, dict):
        return {k: _map(fn, v, *(o[k] for o in others)) for k, v in tree.items()}
    return fn(tree, *others)


def _where(mask: torch.Tensor, new: Any, old: Any) -> Any:
    """Per trial (`mask`, (trials,)), `new`'s rows or `old`'s, for nests of stacked tensors."""
    return _map(lambda a, b: torch.where(bcast(mask, a), a, b), new, old)


def load_states(sweep_dir: Path) -> dict[int, dict]:
    """Every trial's newest resume state in `<sweep>/.packed/` (by job number), with its rows of
    the group's stacked tensors under "rows"."""
    found: dict[int, dict] = {}
    for path in sorted((sweep_dir / STATE_DIR).glob("group*.ckpt")):
        try:
            saved = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # damaged: those trials start again
            log.warning("Skipping damaged packed state %s: %s", path, exc)
            continue
        if saved.get("format") != STATE_FORMAT:
            log.warning("Skipping %s: written by an older nnlab, its trials start again", path)
            continue
        for num, state in saved["trials"].items():
            if num not in found or state["epoch"] > found[num]["epoch"]:
                rows = _map(lambda v, i=state["index"]: v[i].clone(), saved["stacked"])
                found[num] = {**state, "rows": rows}
    return found


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
    run: Run
    task: Any
    data: Data
    optimizer: torch.optim.Optimizer
    scheduler: Any = None
    scheduler_interval: str = "epoch"
    checkpoint: ModelCheckpoint | None = None  # names the checkpoint files
    best: BestCheckpoint | None = None  # its choice so far (None: no checkpoints)
    stop: EarlyStop | None = None
    lr_monitor: bool = False
    loggers: list = field(default_factory=list)
    max_epochs: int = 1
    clip: float = math.inf
    averaging: Any = None  # the averaging group's EMA / SWA (engine/averaging.py), or None
    # training progress (restored on resume)
    saved: dict | None = None  # resumed: its rows of the group's stacked tensors
    global_step: int = 0
    best_path: str | None = None
    epoch: int = -1  # the last epoch trained (resumed: it goes on at the next)
    stopped: bool = False
    failed: str | None = None
    reporter: Any = None  # a search's trial: reports after each epoch, may be pruned
    pruned_at: int | None = None
    file_log: logging.Logger | None = None

    signature: str = ""
    output_subdir: str | None = ".hydra"
    resumed: bool = False
    record: dict = field(default_factory=dict)

    def say(self, message: str, *args: Any) -> None:
        if self.file_log is not None:
            self.file_log.info(message, *args)


class TaskCall(nn.Module):
    """The task's own methods as a module's forward, for functional_call + vmap with each trial's
    weights: training, `training_loss(batch)` (mean loss, correct predictions or None);
    evaluation, `outputs(batch)` and `loss(outputs, targets)`."""

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
        first = trials[0]
        self.classification = isinstance(first.task, ClassificationTask)
        # One copy of every distinct data set, stacked: (datasets, samples, ...) per tensor.
        distinct = list({t.data.key: t.data for t in trials}.values())
        keys = [d.key for d in distinct]
        self.data_index = torch.tensor([keys.index(t.data.key) for t in trials], device=device)
        self.data = {
            split: [
                torch.stack([getattr(d, f"{split}_loader").tensors[i] for d in distinct]).to(device)
                for i in range(len(first.data.train_loader.tensors))
            ]
            for split in ("train", "val", "test")
        }
        self.base = stack.functional_copy(first.task, recurrent).to(device)
        self.caller = TaskCall(self.base)
        params, self.buffers = stack.stack_states([t.task for t in trials], device)
        # buffers a step may change (running statistics), not the dropout rates
        self.running = [n for n in self.buffers if not n.endswith(DROPOUT_RATE)]
        # all parameters in one (trials, n) leaf; `params` are views of it by name
        self.layout = stack.Flat(params)
        self.flat = self.layout.join(params).detach().requires_grad_(True)
        self.native = self._trial_network()
        how = "its layers on the trial axis" if self.native else "vmapped over trials"
        log.info("Stacked network: %s", how)
        averaging = [t.averaging for t in trials]
        self.average = StackedAverage(averaging, self.flat) if first.averaging else None

    def weights(self, averaged: bool = True) -> dict[str, Any]:
        """The stacked weights ("flat" parameters, "buffers") that validation, checkpoints and
        test see: the averaged ones of the trials that have any, else the trained ones."""
        averaged = averaged and self.average is not None
        flat = self.average.weights(self.flat) if averaged else self.flat.detach()
        return {"flat": flat, "buffers": self.buffers}

    def _stacked(self, optimizer_state: dict) -> dict[str, Any]:
        """The tensors a resume file holds, by the names `load_states` gives their rows."""
        stacked = {"flat": self.flat, "buffers": self.buffers, "best": self.best_weights}
        stacked["optimizer"] = optimizer_state
        if self.average is not None:
            stacked["avg_flat"] = self.average.flat
        return stacked

    # -- the vectorised pieces -----------------------------------------------------------------
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
        self.native = (network, dense.Outputs())
        try:  # the task's calling convention, training and evaluating
            with torch.no_grad():
                for evaluate in (False, True):
                    self.base.train(not evaluate)
                    self._stepper(evaluate)(self.layout.split(self.flat), self.buffers, *batch)
        except dense.NotNative:
            return None
        finally:
            self.base.train()
        return self.native

    def _stepper(self, evaluate: bool = False):
        """fn(params, buffers, x, y) -> the task's per-trial results (TaskCall) for a stack of
        trials: the network on the trial axis (packed/dense.py) when it can, else vmapped."""
        if self.native is None:  # the task's own loss (TaskCall) with one trial's weights

            def call(params, buffers, x, y):
                named = {f"task.{k}": v for k, v in (params | buffers).items()}
                return torch.func.functional_call(
                    self.caller, named, ((x, y),), {"evaluate": evaluate}
                )

            return torch.vmap(call, randomness="different")
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

    def _batches(self, split: str) -> tuple[Any, int]:
        """`split`'s loader (the first trial's: the group's have its sizes) and the batches an
        epoch reads: limit_<split>_batches as Lightning reads it (None all, a float up to 1.0 a
        fraction, else a count)."""
        loader = getattr(self.trials[0].data, f"{split}_loader")
        count, value = len(loader), self.trials[0].cfg.trainer.get(f"limit_{split}_batches")
        if isinstance(value, float) and value <= 1.0:
            return loader, int(count * value)
        return loader, count if value is None else min(count, int(value))

    # -- training --------------------------------------------------------------------------------
    def run(self) -> None:
        trials = self.trials
        parameters = TrialParameters(
            self.flat,
            self.layout,
            [t.optimizer for t in trials],
            [t.clip for t in trials],
            self._restore(),
            [t.global_step for t in trials],
        )
        per_step = self.average is not None and self.average.per_step  # EMA after each step
        average = functools.partial(self.average.update, self.flat) if per_step else None
        accumulate = trials[0].cfg.trainer.get("accumulate_grad_batches")
        self.optimizer_step = OptimizerStep(parameters, accumulate, averaging=average)
        last_epoch = max(t.max_epochs for t in trials)
        saved_at = time.monotonic()
        for epoch in range(min(t.epoch + 1 for t in trials), last_epoch):
            active = [
                not (t.stopped or t.failed) and t.epoch < epoch < t.max_epochs for t in trials
            ]
            if not any(active):
                break
            self._end_of_epoch(epoch, active, *self._train_epoch(epoch, active))
            if time.monotonic() - saved_at >= self.save_every_s or epoch + 1 == last_epoch:
                self._save_group()
                saved_at = time.monotonic()
        self.finish()

    def _train_epoch(self, epoch: int, active: list[bool]) -> tuple[torch.Tensor, EpochSums]:
        """One epoch of the `active` trials: the trials that failed in it, and the epoch's
        training loss and correct predictions of the others."""
        trials, step = self.trials, self.optimizer_step
        for t, on in zip(trials, active, strict=True):
            if on and t.lr_monitor:
                lr = t.optimizer.param_groups[0]["lr"]
                self._log(t, {f"lr-{type(t.optimizer).__name__}": lr}, t.global_step)
            if on and t.averaging is not None:  # SWA's schedule takes over at its epoch
                if (swa := t.averaging.take_over_lr(t.optimizer, epoch)) is not None:
                    t.scheduler, t.scheduler_interval = swa, "epoch"
        step.schedulers = [
            t.scheduler
            for t, on in zip(trials, active, strict=True)
            if on and t.scheduler is not None and t.scheduler_interval == "step"
        ]
        step.parameters.hyperparameters_changed()  # epoch schedulers, SWA's
        loader, batches = self._batches("train")
        size = loader.batch_size
        orders = torch.stack([t.data.train_loader.order(epoch) for t in trials]).to(self.device)
        mask = torch.tensor(active, device=self.device)
        sums = EpochSums(self.device, shape=(len(trials),))
        train_step = self._stepper()
        self.base.train()
        for b in range(batches):
            idx = orders[:, b * size : (b + 1) * size]
            x, y = self._gather("train", idx)
            before = {n: self.buffers[n].clone() for n in self.running}
            losses, right = train_step(step.parameters.views(), self.buffers, x, y)
            use = step.going_on(losses, mask)  # NaN/inf: that trial stops
            step(torch.where(use, losses, torch.zeros_like(losses)).sum(), b, b == batches - 1, use)
            with torch.no_grad():
                for n, old in before.items():  # frozen trials keep their statistics
                    self.buffers[n].copy_(_where(use, self.buffers[n], old))
                counted = right if self.caller.counts_correct else None  # the task counts them
                sums.add(losses, counted, idx.shape[1], use)
                sums.samples += idx.shape[1]
        return mask & step.failed, sums

    def _end_of_epoch(self, epoch: int, active: list[bool], bad, sums: EpochSums) -> None:
        """Averaging, validation, the loggers, and each trial's decisions; the best weights."""
        if self.average is not None and not self.average.per_step:  # SWA: epoch ends
            ends = [
                on and t.averaging.updates_after_epoch(epoch)
                for on, t in zip(active, self.trials, strict=True)
            ]
            self.average.update(self.flat, torch.tensor(ends, device=self.device) & ~bad)
        val = self.evaluate("val", self.weights())
        train = {k: v.tolist() for k, v in sums.metrics().items()}
        steps = self.optimizer_step.parameters.steps.long().tolist()
        improved = [False] * len(self.trials)
        for i, (t, failed) in enumerate(zip(self.trials, bad.tolist(), strict=True)):
            if not active[i]:
                continue
            t.global_step = steps[i]
            if failed:
                t.failed = (
                    f"training loss became nan/inf in epoch {epoch} (packed trial); lower "
                    "task.optimizer.lr, clip gradients (trainer.gradient_clip_val=1.0) or "
                    "check the data. The checkpoints from before are kept."
                )
                t.say("Trial failed: %s", t.failed)
                t.run.fail(t.failed)
                continue
            metrics = {k: v[i] for k, v in train.items()} | val[i]
            # at the step Lightning logs epoch-end scalars at
            self._log(t, {**metrics, "epoch": epoch}, t.global_step - 1)
            t.say("Epoch %d: %s", epoch, ", ".join(f"{k}={v:.6g}" for k, v in metrics.items()))
            improved[i] = self._decide(t, epoch, metrics)
        if any(improved):  # the current weights become the best ones of those trials
            keep = torch.tensor(improved, device=self.device)
            _map(Tensor.copy_, self.best_weights, _where(keep, self.weights(), self.best_weights))

    def _decide(self, t: Trial, epoch: int, metrics: dict) -> bool:
        """Early stopping, pruning, the best checkpoint and the scheduler, in Lightning's
        order; whether the trial's weights are its best so far."""
        if t.stop is not None and t.stop.update(metrics, epoch):
            t.stopped = True
            t.say("Early stopping at epoch %d (%s did not improve)", epoch, t.stop.monitor)
        rep = t.reporter  # as nnlab's TrialReporter callback does after a validation
        if rep is not None and t.pruned_at is None and rep.metric in metrics:
            if rep.check(float(metrics[rep.metric]), epoch):
                t.stopped, t.pruned_at = True, epoch  # leaves the group; the others go on
                t.say("Pruned by the search after epoch %d (%s)", epoch, rep.metric)
        improved = t.best is not None and t.best.update(metrics, epoch, t.global_step)
        if improved:  # written when the trial ends
            t.best_path = t.checkpoint.format_checkpoint_name(
                {"epoch": epoch, "step": t.global_step}
            )
        if t.scheduler is not None and t.scheduler_interval == "epoch":
            step_scheduler(t.scheduler, metrics, t.task.hparams.get("scheduler_monitor"))
        t.epoch = epoch
        return improved

    # -- resume ----------------------------------------------------------------------------------
    def _save_group(self) -> None:
        """The group's resume file, rewritten atomically: the stacked tensors (a trial's weights
        and moments are their rows `index`) and each trial's counters and decisions."""
        trials = {}
        for i, t in enumerate(self.trials):
            if t.best is None or t.epoch < 0:
                continue
            if t.averaging is not None:
                t.averaging.count = int(self.average.count[i])
            trials[t.num] = {
                "index": i,
                "epoch": t.epoch,
                "global_step": t.global_step,
                "averaging": t.averaging.state_dict() if t.averaging is not None else None,
                "optimizer_groups": t.optimizer.state_dict()["param_groups"],
                "scheduler": t.scheduler.state_dict() if t.scheduler is not None else None,
                "best": (t.best.score, t.best.epoch, t.best.step),
                "best_path": t.best_path,
                "stop": None if t.stop is None else (t.stop.best, t.stop.wait, t.stop.requested),
                "stopped": t.stopped,
                "pruned_at": t.pruned_at,
                "failed": t.failed,
            }
        if trials:  # not fsynced: rewritten often, and a kill (not a power loss) is the risk
            state = self.optimizer_step.parameters.state
            stacked = _map(lambda v: v.detach().cpu(), self._stacked(state))
            saved = {"format": STATE_FORMAT, "trials": trials, "stacked": stacked}
            atomic_save(saved, self.state_path, durable=False)

    def _restore(self) -> dict[str, torch.Tensor]:
        """The best weights so far (the current ones to start with), and resumed trials' rows
        of the stacked tensors put back; returns the optimizer moments, (trials, n) by name."""
        self.best_weights = _map(Tensor.clone, self.weights(averaged=False))
        state: dict[str, torch.Tensor] = {}

        def put(target: dict, rows: dict, i: int) -> None:
            for name, row in rows.items():
                if isinstance(row, dict):
                    put(target[name], row, i)
                else:
                    if name not in target:  # an optimizer moment the group has none of yet
                        target[name] = torch.zeros_like(self.flat, requires_grad=False)
                    target[name][i] = row

        with torch.no_grad():
            for i, t in enumerate(self.trials):
                put(self._stacked(state), t.saved or {}, i)
        return state

    # -- validation, test and the end ------------------------------------------------------------
    def _log(self, t: Trial, metrics: dict[str, float], step: int) -> None:
        for logger in t.loggers:
            logger.log_metrics(metrics, step=max(step, 0))

    @torch.no_grad()
    def evaluate(self, split: str, weights: dict) -> list[dict[str, float]]:
        """Every trial's metrics on `split` with `weights`, named as the task logs them."""
        params, buffers = self.layout.split(weights["flat"]), weights["buffers"]
        loader, batches = self._batches(split)
        size = loader.batch_size
        fn = self._stepper(evaluate=True)
        self.base.eval()
        outputs, loss_sum = [], 0.0
        for b in range(batches):
            out, y, loss = fn(params, buffers, *self._slice(split, b * size, (b + 1) * size))
            outputs.append((out, y))
            loss_sum = loss_sum + loss * y.shape[1]
        self.base.train()
        out, y = (torch.cat(parts, dim=1) for parts in zip(*outputs, strict=True))
        losses = (loss_sum / y.shape[1]).tolist()
        regression = {"val/mse", "val/mae"}
        if not self.classification and set(self.trials[0].task.val_metrics) == regression:
            # MeanSquaredError / MeanAbsoluteError over all samples, for every trial at once
            mse = (out - y).pow(2).flatten(1).mean(1).tolist()
            mae = (out - y).abs().flatten(1).mean(1).tolist()
            return [
                {f"{split}/loss": loss, f"{split}/mse": a, f"{split}/mae": b}
                for loss, a, b in zip(losses, mse, mae, strict=True)
            ]
        results = []
        for i, task in enumerate(t.task for t in self.trials):
            metrics = getattr(task, f"{split}_metrics")
            metrics.reset()
            metrics.update(
                task.scores(out[i].cpu()) if self.classification else out[i].cpu(), y[i].cpu()
            )
            results.append(
                {f"{split}/loss": losses[i], **{k: float(v) for k, v in metrics.compute().items()}}
            )
            metrics.reset()
        return results

    def _weights(self, i: int, t: Trial, weights: dict) -> dict:
        """Trial `i`'s rows of stacked `weights` under its task's own names (net.…)."""
        rows = self.layout.split(weights["flat"]) | weights["buffers"]
        state_dict = t.task.state_dict()  # (the base's dropout-rate buffers are not in it)
        state_dict.update(
            {k: v[i].detach().cpu().clone() for k, v in rows.items() if k in state_dict}
        )
        return state_dict

    def _checkpoints(self, i: int, t: Trial, last: dict) -> None:
        """Trial `i`'s best and last checkpoints as a sequential run leaves them: the run's
        config inside, the trained weights beside averaged ones (engine/averaging.py)."""
        extra = saved_config(t.run.root / RESOLVED_CONFIG)

        def save(path, weights: dict, epoch: int, step: int, **more: Any) -> None:
            weights = self._weights(i, t, weights)
            save_task_checkpoint(Path(path), t.task, t.data.module, weights, epoch, step, **more)

        if t.best_path and t.best.epoch is not None:
            save(t.best_path, self.best_weights, t.best.epoch, t.best.step, **extra)
        if self.average is not None and self.average.count[i] > 0:
            extra[CURRENT] = self._weights(i, t, self.weights(averaged=False))
        # the run manager always keeps last.ckpt (nnlab/runs.py)
        save(Path(t.checkpoint.dirpath) / LAST, last, t.epoch, t.global_step, **extra)

    def finish(self) -> None:
        """Each trial's best and last checkpoints, as ModelCheckpoint leaves them; validate and
        test every trial on its best weights; metrics.json and status."""
        have_best = torch.tensor([bool(t.best_path) for t in self.trials], device=self.device)
        last = self.weights()  # the weights in memory at the end: averaged ones where any
        chosen = _where(have_best, self.best_weights, last)
        val, test = self.evaluate("val", chosen), self.evaluate("test", chosen)
        for i, t in enumerate(self.trials):
            if t.best is not None and t.epoch >= 0:  # a failed trial's: from before the NaN
                self._checkpoints(i, t, last)
            if t.failed:
                t.run.fail(t.failed)  # again for a resumed one: its start said running
                for logger in t.loggers:
                    logger.finalize("failed")
                continue
            best_epoch = t.best.epoch if t.best is not None else None
            metrics = record(val[i], test[i], t.best_path, best_epoch, t.epoch + 1, t.global_step)
            if t.pruned_at is not None:  # status.json: pruned
                metrics["pruned_at_epoch"] = t.pruned_at
            self._log(t, {**val[i], "epoch": t.epoch + 1}, t.global_step)
            self._log(t, {**test[i], "epoch": t.epoch + 1}, t.global_step)
            # hyperparameters, final metrics, tags: what a sequential run sends (nnlab/tracking.py)
            log_run_summary(t.loggers, t.cfg, t.task, metrics)
            for logger in t.loggers:
                logger.finalize("success")
            t.record = t.run.finish(metrics)
            t.say("Metrics: %s", t.run.metrics_path)
