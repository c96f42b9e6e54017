"""nnlab's fused training loop, and its step as one CUDA graph.

Small classic models are bound by per-step overhead, not arithmetic. The fused loop runs inside
Lightning's loop (manual optimization, so checkpoints, logging, callbacks and validation work as
usual) but takes `task.graph_batches` optimizer steps per Lightning batch, one per micro-batch,
so Lightning's own per-batch overhead is paid once for all of them; loss and accuracy are summed
on the device and read only when the epoch is logged. On CUDA the step itself (forward, loss,
backward, gradient clipping, optimizer step) is recorded once as a CUDA graph and replayed.

`task.cuda_graph` (auto/true) asks for the graph, `task.fused_loop` for the loop alone (any
device). Each has conditions, checked up front (`loop_blocker`, `graph_blocker`); where one is
not met the run says why in one log line and goes on without it. A capture that fails anyway
falls back to eager steps at the first batch, also with a log line.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from hydra.utils import get_class

log = logging.getLogger(__name__)

WARMUP_STEPS = 3  # eager steps on a side stream before capture: cuDNN/cuBLAS pick and allocate
# The torch.optim option that makes a step read no host values (Adam, AdamW, RMSprop, ...): the
# learning rate then lives in a device tensor that schedulers update in place.
CAPTURABLE = "capturable"


def loop_blocker(task, trainer) -> str | None:
    """Why nnlab's fused loop (micro-batches, sums on the device) cannot run here (None: it can)."""
    if trainer.world_size > 1:
        return f"{trainer.world_size} processes (DDP) reduce gradients once per backward"
    precision = str(trainer.precision)
    if precision.startswith("16") or precision == "transformer-engine":
        return f"precision {precision} scales the loss with host-side overflow checks"
    if trainer.accumulate_grad_batches != 1:
        return "trainer.accumulate_grad_batches > 1"
    if str((task.hparams.get("scheduler") or {}).get("_target_", "")).endswith("ReduceLROnPlateau"):
        return "ReduceLROnPlateau needs the monitored metric, which Lightning's loop provides"
    return None


def optimizer_blocker(optimizer_cfg: dict | None, scheduler_cfg: dict | None) -> str | None:
    """Why this optimizer/scheduler pair cannot step inside a graph (None: it can)."""
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


def graph_blocker(task, trainer, datamodule) -> str | None:
    """Why the fused loop's step cannot be captured as a CUDA graph here (None: it can)."""
    device = trainer.strategy.root_device
    if device.type != "cuda":
        return f"training runs on {device.type}, CUDA graphs need a CUDA device"
    if task.hparams.get("compile"):
        return "task.compile is on (torch.compile does its own graph capture)"
    example = datamodule.example_input(2) if hasattr(datamodule, "example_input") else None
    if isinstance(example, tuple | list):
        return "the net reads variable-length sequences (packed by their lengths on the host)"
    return optimizer_blocker(task.hparams.get("optimizer"), task.hparams.get("scheduler"))


class CapturedStep:
    """Replays `loss_fn(micro_batch)` + backward + clip + `optimizer.step()` as one CUDA graph.

    `loss_fn(batch) -> (mean loss, number of correct predictions or None)`. Micro-batches of the
    captured size replay the graph; a smaller one (the epoch's last) takes an eager step on the
    same parameters, gradients and optimizer state. `on_step` is called after every optimizer
    step (Lightning's step counter, per-step schedulers).
    """

    def __init__(
        self,
        params: Sequence[torch.nn.Parameter],
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable[[Sequence[torch.Tensor]], tuple[torch.Tensor, torch.Tensor | None]],
        micro_batch_size: int,
        clip_val: float | None = None,
        clip_algorithm: str = "norm",
        autocast_dtype: torch.dtype | None = None,
        on_step: Callable[[], None] = lambda: None,
        capture: bool = True,
    ):
        self.params = [p for p in params if p.requires_grad]
        self.optimizer, self.loss_fn, self.on_step = optimizer, loss_fn, on_step
        self.micro_batch_size = int(micro_batch_size)
        self.clip_val, self.clip_algorithm = clip_val, clip_algorithm
        self.autocast_dtype = autocast_dtype
        self.device = self.params[0].device
        # Per-epoch sums, updated inside the graph; read when the epoch is logged.
        self.loss_sum = torch.zeros((), device=self.device)
        self.correct = torch.zeros((), device=self.device, dtype=torch.long)
        self.samples = 0
        self.correct_counted = False
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

    def epoch_start(self) -> None:
        self.loss_sum.zero_()
        self.correct.zero_()
        self.samples = 0

    # -- one step -------------------------------------------------------------------------------
    def _forward(self, batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        # Autocast's weight cache must stay off while capturing (its casts would be graph-private).
        autocast = (
            torch.autocast("cuda", dtype=self.autocast_dtype, cache_enabled=False)
            if self.autocast_dtype is not None
            else nullcontext()
        )
        with autocast:
            return self.loss_fn(batch)

    def _step(self, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        """Forward to optimizer step; also the body that is captured. Gradients are assigned, not
        accumulated (they are None when this starts)."""
        loss, correct = self._forward(batch)
        loss.backward()
        if self.clip_val:
            if self.clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(self.params, self.clip_val, foreach=True)
            else:
                torch.nn.utils.clip_grad_norm_(self.params, self.clip_val, foreach=True)
        self.optimizer.step()
        n = batch[0].shape[0]
        self.loss_sum.add_(loss.detach().float(), alpha=n)
        if correct is not None:
            self.correct.add_(correct)
            self.correct_counted = True
        return loss.detach()

    def _eager(self, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        # Zero in place: after capture the gradients are the graph's static tensors.
        self.optimizer.zero_grad(set_to_none=self.graph is None)
        return self._step(batch)

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

    def train_micro_batch(self, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        full = batch[0].shape[0] == self.micro_batch_size
        if self.graph is not None and full:
            for static, t in zip(self.static, batch, strict=True):
                static.copy_(t, non_blocking=True)
            self.graph.replay()
            loss = self.static_loss
        elif self.eager_reason is not None or not full:
            loss = self._eager(batch)
        elif self.warmup_left > 0:  # warm-up steps are real steps, on a side stream
            self.warmup_left -= 1
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                loss = self._eager(batch)
            torch.cuda.current_stream().wait_stream(side)
        else:
            try:
                loss = self._capture(batch)
            except RuntimeError as exc:
                self.graph = None
                self.eager_reason = str(exc).splitlines()[0]
                log.warning("CUDA graph: off, capture failed (%s); eager steps", self.eager_reason)
                loss = self._eager(batch)
        self.samples += batch[0].shape[0]
        self.on_step()
        return loss

    def train_batch(self, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        """One Lightning batch: `graph_batches` micro-batches concatenated (the last may be short)."""
        loss = None
        for micro in zip(*(torch.split(t, self.micro_batch_size) for t in batch), strict=True):
            loss = self.train_micro_batch(micro)
        return loss

    def epoch_metrics(self) -> dict[str, torch.Tensor]:
        n = max(self.samples, 1)
        metrics = {"train/loss": self.loss_sum / n}
        if self.correct_counted:  # a classification loss_fn counts correct predictions
            metrics["train/acc"] = self.correct.float() / n
        return metrics


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
