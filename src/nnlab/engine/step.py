"""One optimizer step, as Lightning's loop steps, for the fused loop and packed groups:
`OptimizerStep` over a network's parameters (`ModuleParameters`) or stacked trials'
(`TrialParameters`); its sequence: docs/architecture.md, "The training engines"."""

from __future__ import annotations

import math
from typing import Any

import torch

from nnlab.engine.stacked import OPTIMIZERS, bcast
from nnlab.errors import ConfigError


class ModuleParameters:
    """A network's parameters and its torch.optim optimizer; gradients add up in `.grad` (the
    caller zeroes them when a window starts: the captured step keeps the graph's tensors)."""

    def __init__(self, params, optimizer, clip_val: float | None = None, clip_algorithm="norm"):
        self.params = [p for p in params if p.requires_grad]
        self.optimizer, self.clip_val, self.clip_algorithm = optimizer, clip_val, clip_algorithm

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def clip(self) -> None:
        if self.clip_val:
            value = self.clip_algorithm == "value"
            clip = torch.nn.utils.clip_grad_value_ if value else torch.nn.utils.clip_grad_norm_
            clip(self.params, self.clip_val, foreach=True)

    def update(self, use: Any = None) -> None:
        self.optimizer.step()

    def hyperparameters_changed(self) -> None:
        pass


class TrialParameters:
    """Trials' parameters as one (trials, n) leaf `flat` (`layout`: packed/stack.py's `Flat`),
    stepped by the hand-written optimizer of `optimizers`' kind (engine/stacked.py: OPTIMIZERS)
    with each trial's hyperparameters, read from the trial's own torch.optim optimizer (which
    its scheduler steps). `clip`: each trial's gradient-norm limit (inf: none); `state`: the
    optimizer's moments by name, (trials, n) each; `steps`: each trial's optimizer steps."""

    def __init__(self, flat, layout, optimizers, clip: list[float], state: dict, steps: list[int]):
        self.flat, self.layout, self.optimizers, self.state = flat, layout, optimizers, state
        self.step_fn, self.names, _ = OPTIMIZERS[type(optimizers[0]).__name__]
        self.max_norm = torch.tensor(clip, device=flat.device)
        self.clipping = any(map(math.isfinite, clip))
        self.steps = torch.tensor([float(s) for s in steps], device=flat.device)
        self.grad: torch.Tensor | None = None  # the window's gradient so far
        self.hyperparameters_changed()

    def views(self) -> dict[str, torch.Tensor]:
        """{name: (trials, ...)} views of `flat` for a forward pass whose loss `backward` takes
        (a view's place in the autograd graph comes with it)."""
        self._views = self.layout.split(self.flat)
        return self._views

    def backward(self, loss: torch.Tensor) -> None:
        # each view's gradient, joined: through the views to the flat leaf, autograd would make a
        # full-size zero gradient per view and add them up
        views = self._views
        grads = torch.autograd.grad(loss, list(views.values()), materialize_grads=True)
        g = self.layout.join(dict(zip(views, grads, strict=True)))
        self.grad = g if self.grad is None else self.grad.add_(g)

    def clip(self) -> None:
        """Each trial's gradient scaled as torch.nn.utils.clip_grad_norm_ scales a network's
        (by max_norm / (total 2-norm + 1e-6), at most 1)."""
        if self.clipping:
            g, max_norm = self.grad, self.max_norm
            coef = (max_norm / (g.pow(2).sum(1).sqrt() + 1e-6)).clamp(max=1.0)
            coef = torch.where(torch.isfinite(max_norm), coef, torch.ones_like(coef))
            self.grad = g * bcast(coef, g)

    @torch.no_grad()
    def update(self, use: torch.Tensor) -> None:
        """The `use`d trials' step; the others keep their parameters, moments and count."""
        self.steps = self.steps + use.to(self.steps.dtype)
        p, state = self.flat, self.state
        new, new_state = self.step_fn(p, self.grad, state, self.hp, self.steps[:, None])
        keep = bcast(use, p)
        p.copy_(torch.where(keep, new, p))
        for key, value in new_state.items():
            state[key] = torch.where(keep, value, state.get(key, torch.zeros_like(value)))
        self.grad = None

    def hyperparameters_changed(self) -> None:
        """The hyperparameters in each trial's param_groups[0], (trials, 1) each."""
        groups = [o.param_groups[0] for o in self.optimizers]
        self.hp = {}
        for name in self.names:  # (torch.optim keeps Adam's two betas as one pair)
            if name in ("beta1", "beta2"):
                values = [g["betas"][name == "beta2"] for g in groups]
            else:
                values = [float(g.get(name) or 0.0) for g in groups]
            hp = torch.tensor(values, dtype=torch.float32, device=self.flat.device)
            self.hp[name] = hp[:, None]


def step_scheduler(scheduler: Any, metrics: dict | None = None, monitor: str | None = None):
    """An epoch-interval scheduler's step at the epoch's end: ReduceLROnPlateau's with its
    monitored metric (as Lightning's loop steps it), the others' without."""
    if not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        return scheduler.step()
    if metrics is None or metrics.get(monitor) is None:
        logged = ", ".join(sorted(metrics or {})) or "none"
        raise ConfigError(
            "task.scheduler_monitor",
            f"ReduceLROnPlateau watches {monitor}, which this run does not log (it logs "
            f"{logged}); name a logged metric",
        )
    scheduler.step(float(metrics[monitor]))


class OptimizerStep:
    """The step's sequence over `parameters` (ModuleParameters or TrialParameters), then the
    engine's `count(use)`, its per-step `schedulers` (set each epoch) and `averaging(use)`.
    `use`: None for one network, the mask of the stacked trials that step."""

    def __init__(self, parameters, accumulate: int | None = 1, count=None, averaging=None):
        self.parameters, self.accumulate = parameters, accumulate or 1
        self.count, self.averaging = count, averaging
        self.schedulers: list = []
        self.failed: bool | torch.Tensor = False  # (trials,): whose loss became NaN/inf

    def ends_window(self, index: int, last: bool) -> bool:
        """Whether the optimizer steps after the epoch's batch `index` (0-based; `last`: the
        epoch's final batch)."""
        return (index + 1) % self.accumulate == 0 or last

    def backward(self, loss: torch.Tensor, apply: bool, use: Any = None) -> None:
        """The loss's gradients added to the window's (scaled by 1/k); with `apply`, the clipped
        optimizer step. On the device: a CUDA graph records it."""
        self.parameters.backward(loss / self.accumulate if self.accumulate > 1 else loss)
        if apply:
            self.parameters.clip()
            self.parameters.update(use)

    def after(self, use: Any = None) -> None:
        """Counting, per-step schedulers, averaging: on the host, after an optimizer step."""
        if self.count is not None:
            self.count(use)
        for scheduler in self.schedulers:
            scheduler.step()
        if self.schedulers:
            self.parameters.hyperparameters_changed()
        if self.averaging is not None:
            self.averaging(use)

    def __call__(self, loss: torch.Tensor, index: int, last: bool, use: Any = None) -> None:
        """All of it for the epoch's batch `index` (`last`: its final one)."""
        apply = self.ends_window(index, last)
        self.backward(loss, apply, use)
        if apply:
            self.after(use)

    def going_on(self, loss: torch.Tensor, active: torch.Tensor | None = None) -> Any:
        """The non-finite-loss policy. One network (`active` None): whether training goes on
        (read at once on the CPU only; on a GPU callbacks/resilience.py reads losses in
        batches). Stacked trials, before the backward pass: the mask of `active` trials that go
        on (a failed one keeps its parameters, moments and count from before)."""
        if active is None:
            return loss.device.type != "cpu" or math.isfinite(loss.item())
        self.failed = self.failed | (active & ~torch.isfinite(loss.detach()))
        return active & ~self.failed


class EpochSums:
    """An epoch's training loss and correct predictions (per trial: `shape` (trials,)), summed
    on the device (in a captured step too), read once when the epoch is logged; samples and
    micro-batches counted on the host. Checkpointed: a run resumed mid-epoch logs the same."""

    def __init__(self, device: torch.device, state: dict | None = None, shape: tuple = ()):
        state = state or {}
        self.loss = torch.full(shape, float(state.get("loss", 0.0)), device=device)
        self.correct = torch.full(shape, int(state.get("correct", 0)), device=device)
        self.samples = state.get("samples", 0)
        self.micro_batches = state.get("micro_index", 0)  # (accumulation windows)
        self.counts_correct = state.get("counts_correct", False)

    def reset(self) -> None:  # in place: a captured step adds to these tensors
        self.loss.zero_()
        self.correct.zero_()
        self.samples = self.micro_batches = 0

    def add(self, loss: torch.Tensor, correct: torch.Tensor | None, n: int, use=None) -> None:
        """A batch of `n` samples; stacked trials: those `use`d (the others are not logged)."""
        loss = loss.detach().float()
        if use is not None:
            loss = torch.where(use, loss, 0.0)
            correct = None if correct is None else torch.where(use, correct, 0).long()
        self.loss.add_(loss, alpha=n)
        if correct is not None:
            self.correct.add_(correct)
            self.counts_correct = True

    def metrics(self) -> dict[str, torch.Tensor]:
        n = max(self.samples, 1)
        metrics = {"train/loss": self.loss / n}
        if self.counts_correct:
            metrics["train/acc"] = self.correct.float() / n
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {
            "loss": float(self.loss),
            "correct": int(self.correct),
            "samples": self.samples,
            "counts_correct": self.counts_correct,
            "micro_index": self.micro_batches,
        }
