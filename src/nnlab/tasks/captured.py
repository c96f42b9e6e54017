"""The fused loop's step (tasks/loops.py), eager or, on CUDA, the whole step (forward, loss,
backward, clipping, optimizer step, the epoch's sums) recorded once as a CUDA graph and replayed
for every full micro-batch. A capture that fails falls back to eager steps, with a log line."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import torch

from nnlab.engine.step import OptimizerStep

log = logging.getLogger(__name__)

WARMUP_STEPS = 3  # eager steps on a side stream before capture: cuDNN/cuBLAS pick and allocate
# The torch.optim option that makes a step read no host values (Adam, AdamW, RMSprop, ...): the
# learning rate then lives in a device tensor that schedulers update in place.
CAPTURABLE = "capturable"


class CapturedStep:
    """`step(micro_batch, apply)`: `loss_fn(micro_batch)` -> (mean loss, correct predictions or
    None), the device side of `optimizer_step` (engine/step.py: backward, clip, optimizer step)
    and the sums (`sums.add`). With `capture` on CUDA, micro-batches of `micro_batch_size` replay
    a graph; a smaller one (the epoch's last) takes an eager step on the same tensors."""

    def __init__(
        self,
        optimizer_step: OptimizerStep,
        loss_fn: Callable[[Sequence[torch.Tensor]], tuple[torch.Tensor, torch.Tensor | None]],
        sums: Any,
        micro_batch_size: int,
        autocast_dtype: torch.dtype | None = None,
        capture: bool = True,
    ):
        self.optimizer_step, self.loss_fn, self.sums = optimizer_step, loss_fn, sums
        self.optimizer = optimizer_step.parameters.optimizer
        self.micro_batch_size = int(micro_batch_size)
        self.autocast_dtype = autocast_dtype
        self.window_start = True  # gradients start from zero at the next step
        self.device = optimizer_step.parameters.params[0].device
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: list[torch.Tensor] = []
        self.warmup_left = WARMUP_STEPS
        self.eager_reason: str | None = None  # why steps are eager (set when capture fails too)
        if capture and self.device.type == "cuda":
            self._make_capturable()
        else:
            self.eager_reason = "not captured"

    # -- the optimizer inside a graph -------------------------------------------------------------
    def _make_capturable(self) -> None:
        """Learning rates as device tensors (schedulers `fill_` them) and step counters on the
        device, so the step reads nothing from the host."""
        for group in self.optimizer.param_groups:
            if CAPTURABLE not in group:
                continue
            group[CAPTURABLE] = True
            if not isinstance(group["lr"], torch.Tensor):
                group["lr"] = torch.tensor(float(group["lr"]), device=self.device)
            for p in group["params"]:
                state = self.optimizer.state.get(p, {})
                if isinstance(state.get("step"), torch.Tensor):
                    state["step"] = state["step"].to(self.device, torch.float32)

    # -- one step -------------------------------------------------------------------------------
    def _forward(self, batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.graph is None and self.eager_reason is not None:
            return self.loss_fn(batch)  # Lightning's precision context already autocasts
        # Autocast's weight cache must stay off while capturing (its casts would be graph-private).
        autocast = (
            torch.autocast(self.device.type, dtype=self.autocast_dtype, cache_enabled=False)
            if self.autocast_dtype is not None
            else nullcontext()
        )
        with autocast:
            return self.loss_fn(batch)

    def _step(self, batch: Sequence[torch.Tensor], apply: bool = True) -> torch.Tensor:
        """Forward to optimizer step (`apply`; else the gradients accumulate); also the body that
        is captured, where gradients are assigned, not accumulated (None when it starts)."""
        loss, correct = self._forward(batch)
        self.optimizer_step.backward(loss, apply)
        self.sums.add(loss, correct, batch[0].shape[0])
        return loss.detach()

    def _eager(self, batch: Sequence[torch.Tensor], apply: bool = True) -> torch.Tensor:
        if self.window_start:  # in place after capture: the gradients are the graph's tensors
            self.optimizer.zero_grad(set_to_none=self.graph is None)
        loss = self._step(batch, apply)
        self.window_start = apply
        return loss

    def _capture(self, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        self.static = [t.clone() for t in batch]
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.static_loss = self._step(self.static)
        self.graph = graph
        log.info("CUDA graph: training step captured for micro-batches of %d", len(batch[0]))
        graph.replay()  # capture records without running: this executes the batch
        return self.static_loss

    def __call__(self, batch: Sequence[torch.Tensor], apply: bool = True) -> torch.Tensor:
        """One micro-batch's gradients and, with `apply`, the optimizer step that ends its
        accumulation window; returns its loss (on the device). Accumulating steps are eager
        (the capability check keeps them out of graphs)."""
        if not apply or not self.window_start:
            return self._eager(batch, apply)
        full = batch[0].shape[0] == self.micro_batch_size
        if self.graph is not None and full:
            for static, t in zip(self.static, batch, strict=True):
                static.copy_(t, non_blocking=True)
            self.graph.replay()
            return self.static_loss
        if self.eager_reason is not None or not full:
            return self._eager(batch)
        if self.warmup_left > 0:  # warm-up steps are real steps, on a side stream
            self.warmup_left -= 1
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                loss = self._eager(batch)
            torch.cuda.current_stream().wait_stream(side)
            return loss
        try:
            return self._capture(batch)
        except RuntimeError as exc:
            self.graph = None
            self.eager_reason = str(exc).splitlines()[0]
            log.warning("CUDA graph: off, capture failed (%s); eager steps", self.eager_reason)
            return self._eager(batch)


def plain_lrs(checkpoint: dict[str, Any]) -> None:
    """Learning rates saved as numbers, as an eager run saves them: a checkpoint from a captured
    run then resumes anywhere, CPU included."""
    for state in checkpoint.get("optimizer_states", []):
        for group in state.get("param_groups", []):
            if isinstance(group.get("lr"), torch.Tensor):
                group["lr"] = float(group["lr"])
            if group.get(CAPTURABLE):
                group[CAPTURABLE] = False
    for state in checkpoint.get("lr_schedulers", []):
        for key in ("_last_lr", "base_lrs"):
            if key in state:
                state[key] = [float(v) for v in state[key]]
