"""One optimizer step, for the fused loop (tasks/loops.py, tasks/captured.py) and packed groups
(packed/group.py); Lightning's own loop does the same by itself.

`OptimizerStep` owns the sequence, in this order:
1. the accumulation window (`Accumulation`, `trainer.accumulate_grad_batches`): with k batches
   accumulated, each batch's loss is scaled by 1/k before its backward pass, and the optimizer
   steps after every k-th batch of an epoch and after the epoch's last batch, whose window may be
   short (it is still scaled by 1/k, as in Lightning); gradients start from zero at each window;
2. gradient clipping (`trainer.gradient_clip_val`, by norm or by value);
3. the optimizer step;
4. counting it (`trainer.global_step`; a stacked trial's step count, which its Adam reads too);
5. the schedulers stepped per optimizer step (`task.scheduler_interval=step`);
6. weight averaging after each step (engine/averaging.py, EMA);
7. the non-finite-loss policy (`going_on`): a trial whose loss becomes NaN/inf stops.
Steps 1-3 (`backward`) run on the device and are graph-safe: the CUDA-graph step records them;
4-6 (`after`) run on the host, after the step or its graph's replay.

Two kinds of parameters take the step: `ModuleParameters`, a network's own parameters with its
torch.optim optimizer (the fused loop), and `TrialParameters`, packed trials' parameters stacked
on a leading trial axis with hand-written optimizers that apply each trial's own
hyperparameters (packed/stack.py), clipped per trial and updated under a mask of the trials that
go on (a stopped or failed trial keeps its values).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from nnlab.errors import ConfigError
from nnlab.packed import stack


class Accumulation:
    def __init__(self, batches: int | None = 1):
        batches = 1 if batches is None else batches
        if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
            raise ConfigError(
                "trainer.accumulate_grad_batches", f"must be a whole number >= 1, got {batches}"
            )
        self.batches = batches

    def scaled(self, loss):
        """A batch's loss as its backward pass takes it (divided by k, as Lightning divides)."""
        return loss / self.batches if self.batches > 1 else loss

    def steps_after(self, index: int, last: bool) -> bool:
        """Whether the optimizer steps after the epoch's batch `index` (0-based; `last`: the
        epoch's final batch)."""
        return (index + 1) % self.batches == 0 or last


class ModuleParameters:
    """A network's parameters and its torch.optim optimizer. The optimizer keeps its own step
    count and reads its learning rate from its param groups; gradients accumulate in `.grad`
    (the caller zeroes them when a window starts: the captured step keeps the graph's tensors)."""

    def __init__(
        self,
        params: Sequence[torch.nn.Parameter],
        optimizer: torch.optim.Optimizer,
        clip_val: float | None = None,
        clip_algorithm: str = "norm",
    ):
        self.params = [p for p in params if p.requires_grad]
        self.optimizer, self.clip_val, self.clip_algorithm = optimizer, clip_val, clip_algorithm

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def clip(self) -> None:
        if not self.clip_val:
            return
        if self.clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(self.params, self.clip_val, foreach=True)
        else:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip_val, foreach=True)

    def update(self, use: Any = None) -> None:
        self.optimizer.step()

    def hyperparameters_changed(self) -> None:
        pass  # torch.optim reads its param groups at every step


class TrialParameters:
    """Trials' parameters as one (trials, n) leaf `flat` (`layout`: packed/stack.py's `Flat`),
    stepped with the hand-written optimizer of `optimizers`' kind (packed/stack.py: OPTIMIZERS)
    and each trial's hyperparameters, read from its own torch.optim optimizer (which its
    scheduler steps). `clip`: each trial's gradient-norm limit (inf: none); `state`: the
    optimizer's moments by name, (trials, n) each; `steps`: each trial's optimizer steps."""

    def __init__(
        self,
        flat: torch.Tensor,
        layout: Any,
        optimizers: list[torch.optim.Optimizer],
        clip: list[float],
        state: dict[str, torch.Tensor],
        steps: list[int],
    ):
        self.flat, self.layout, self.optimizers = flat, layout, optimizers
        self.step_fn, self.decoupled, self.names, _ = stack.OPTIMIZERS[type(optimizers[0]).__name__]
        device = flat.device
        self.max_norm = torch.tensor(clip, device=device) if any(map(math.isfinite, clip)) else None
        self.state = state
        self.steps = torch.tensor([float(s) for s in steps], device=device)
        self.grad: torch.Tensor | None = None  # the window's gradient so far, (trials, n)
        self.hyperparameters_changed()

    def views(self) -> dict[str, torch.Tensor]:
        """{name: (trials, ...)} views of `flat` for one forward pass, whose loss `backward`
        takes (a view's place in the autograd graph comes with it)."""
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
        if self.max_norm is not None:
            g = self.grad
            self.grad = g * stack._b(stack.clip_coefficients(g, self.max_norm), g)

    @torch.no_grad()
    def update(self, use: torch.Tensor) -> None:
        """The step of the `use`d trials; the others keep parameters, moments and count."""
        self.steps = self.steps + use.to(self.steps.dtype)
        p, state = self.flat, self.state
        new, new_state = self.step_fn(p, self.grad, state, self.hp, self.steps, self.decoupled)
        keep = stack._b(use, p)
        p.copy_(torch.where(keep, new, p))
        for key, value in new_state.items():
            state[key] = torch.where(keep, value, state.get(key, torch.zeros_like(value)))
        self.grad = None

    def hyperparameters_changed(self) -> None:
        groups = [o.param_groups[0] for o in self.optimizers]
        self.hp = stack.hyperparameters(groups, self.names, self.flat.device)


class OptimizerStep:
    """The sequence of the module's text over `parameters` (ModuleParameters or
    TrialParameters). The engine sets what runs after each step: `count(use)` (tells its step
    counter), `schedulers` (stepped per optimizer step; the engine sets them each epoch) and
    `averaging(use)`. `use`: None for one network, else the mask of trials that step."""

    def __init__(
        self,
        parameters: ModuleParameters | TrialParameters,
        accumulation: Accumulation | None = None,
        count: Callable[[Any], None] | None = None,
        averaging: Callable[[Any], None] | None = None,
    ):
        self.parameters = parameters
        self.accumulation = accumulation or Accumulation(1)
        self.count, self.averaging = count, averaging
        self.schedulers: list = []
        self.failed: bool | torch.Tensor = False  # (trials,): whose loss became NaN/inf

    def ends_window(self, index: int, last: bool) -> bool:
        return self.accumulation.steps_after(index, last)

    def backward(self, loss: torch.Tensor, apply: bool, use: Any = None) -> None:
        """Steps 1-3: the loss's gradients added to the window's and, with `apply`, the clipped
        optimizer step (graph-safe)."""
        self.parameters.backward(self.accumulation.scaled(loss))
        if apply:
            self.parameters.clip()
            self.parameters.update(use)

    def after(self, use: Any = None) -> None:
        """Steps 4-6, on the host after an optimizer step."""
        if self.count is not None:
            self.count(use)
        for scheduler in self.schedulers:
            scheduler.step()
        if self.schedulers:
            self.parameters.hyperparameters_changed()
        if self.averaging is not None:
            self.averaging(use)

    def __call__(self, loss: torch.Tensor, index: int, last: bool, use: Any = None) -> bool:
        """Batch `index` of the epoch (`last`: its final one): the whole sequence; whether the
        optimizer stepped."""
        apply = self.ends_window(index, last)
        self.backward(loss, apply, use)
        if apply:
            self.after(use)
        return apply

    def going_on(self, loss: torch.Tensor, active: torch.Tensor | None = None) -> Any:
        """The non-finite-loss policy: a trial whose training loss became NaN/inf stops.

        One network (`active` None): whether training goes on after this loss's step. A loss on
        the CPU is read at once (it costs nothing) and the loop stops after its step, where the
        NaN check (callbacks/resilience.py) names that step and fails the run; on a GPU that
        check reads the losses in batches, never a sync per step. Stacked trials (`loss`:
        (trials,)): the mask of trials that go on, from `active`, before this loss's backward
        pass: a failed trial's parameters, moments and step count keep their values from
        before it, and the group marks it failed at the epoch's end; the others go on.
        """
        if active is None:
            return loss.device.type != "cpu" or math.isfinite(loss.item())
        bad = active & ~torch.isfinite(loss.detach())
        self.failed = self.failed | bad
        return active & ~self.failed
