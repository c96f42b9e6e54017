"""What every task shares: the network built from its config, optimiser and scheduler from
config, and hyperparameters saved so that `Task.load_from_checkpoint(path)` stands alone."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from nnlab.errors import ConfigError
from nnlab.tasks import captured

log = logging.getLogger(__name__)


def plain(cfg: Any) -> Any:
    """A DictConfig as plain dicts/lists (what checkpoints and TensorBoard can store)."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


class Task(L.LightningModule):
    """The network arrives as its config (a mapping with `_target_`), not as a module, so the
    checkpoint's hyperparameters are enough to rebuild it anywhere."""

    def __init__(
        self,
        net: Mapping[str, Any],
        optimizer: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        scheduler_interval: str = "epoch",
        scheduler_monitor: str = "val/loss",
        channels_last: bool = False,
        cuda_graph: bool | str = False,
        fused_loop: bool = False,
        graph_batches: int = 8,
        compile: bool | Mapping[str, Any] = False,
    ):
        super().__init__()
        net, optimizer, scheduler = plain(net), plain(optimizer), plain(scheduler)
        self.save_hyperparameters(
            {
                "net": net,
                "optimizer": optimizer,
                "scheduler": scheduler,
                "scheduler_interval": scheduler_interval,
                "scheduler_monitor": scheduler_monitor,
                "channels_last": channels_last,
                "cuda_graph": cuda_graph,
                "fused_loop": fused_loop,
                "graph_batches": graph_batches,
                "compile": plain(compile),
            }
        )
        if cuda_graph not in (True, False, "auto"):
            raise ConfigError("task.cuda_graph", f"must be true, false or auto, got {cuda_graph!r}")
        if int(graph_batches) < 1:
            raise ConfigError("task.graph_batches", f"must be >= 1, got {graph_batches}")
        self.net: nn.Module = instantiate(net)
        # NHWC weights and inputs: tensor-core convolutions skip their layout transposes (GPU).
        self.channels_last = channels_last
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        # Set in setup() (see tasks/captured.py).
        self.fused = False  # nnlab's fused loop (manual optimization) is on
        self.capture = False  # ... and its step is captured as a CUDA graph
        self.captured_step: captured.CapturedStep | None = None
        self.train_group = 1  # micro-batches per Lightning batch, read by the training loader

    def forward(self, x: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
        """The net's output; `extra` inputs (e.g. sequence lengths) are passed on to it."""
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x, *extra)

    # -- how the training step runs: eager, compiled, or replayed as a CUDA graph --------------
    def configure_model(self) -> None:
        options = self.hparams.get("compile")
        if options and not getattr(self, "_compiled", False):
            # nn.Module.compile keeps parameter names, so checkpoints stay interchangeable.
            self.net.compile(**(options if isinstance(options, Mapping) else {}))
            self._compiled = True
            self.example_input_array = None  # TensorBoard's graph tracer cannot trace it
            log.info("torch.compile: on (%s)", options)

    def setup(self, stage: str) -> None:
        wants_graph = self.hparams.get("cuda_graph", False) is not False
        if stage != "fit" or not (wants_graph or self.hparams.get("fused_loop")):
            return
        # An explicit `true` that cannot be honoured is a warning; `auto` just says so.
        level = logging.WARNING if self.hparams.cuda_graph is True else logging.INFO
        reason = captured.loop_blocker(self, self.trainer)
        if reason is not None:
            log.log(level, "Fused loop and CUDA graph: off, Lightning's loop (%s)", reason)
            return
        self.capture = False
        if wants_graph:
            reason = captured.graph_blocker(self, self.trainer, self.trainer.datamodule)
            self.capture = reason is None
            if reason is not None:
                fused = self.hparams.get("fused_loop")
                after = "the fused loop's eager steps" if fused else "Lightning's loop"
                log.log(level, "CUDA graph: off, %s (%s)", after, reason)
                if not fused:
                    return
        # The fused step does backward and optimizer step itself: Lightning's manual mode.
        self.fused, self.automatic_optimization = True, False
        self.train_group = int(self.hparams.graph_batches)
        log.info(
            "Fused loop: %d micro-batches per Lightning batch%s",
            self.train_group,
            ", step captured as a CUDA graph" if self.capture else "",
        )

    def training_step(self, batch, batch_idx):
        if not self.fused:
            return self.eager_training_step(batch, batch_idx)
        if self.captured_step is None:  # built here: the optimizer exists and is restored now
            self.captured_step = self._build_captured_step()
        return {"loss": self.captured_step.train_batch(batch)}

    def eager_training_step(self, batch, batch_idx):
        raise NotImplementedError

    def train_loss(self, batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mean loss, correct predictions or None) with no host sync: the captured step."""
        raise NotImplementedError

    def _build_captured_step(self) -> captured.CapturedStep:
        trainer = self.trainer
        lightning_optimizer = self.optimizers()
        per_step = self._schedulers() if self.hparams.scheduler_interval == "step" else []

        def after_step() -> None:  # what Lightning does around an optimizer step it runs itself
            lightning_optimizer._on_before_step()
            lightning_optimizer._on_after_step()
            for scheduler in per_step:
                scheduler.step()

        precision = str(trainer.precision)
        return captured.CapturedStep(
            self.parameters(),
            lightning_optimizer.optimizer,
            self.train_loss,
            micro_batch_size=trainer.datamodule.batch_size,
            clip_val=trainer.gradient_clip_val,
            clip_algorithm=getattr(trainer.gradient_clip_algorithm, "value", None) or "norm",
            autocast_dtype=torch.bfloat16 if precision == "bf16-mixed" else None,
            on_step=after_step,
            capture=self.capture,
        )

    def on_train_epoch_start(self) -> None:
        if self.captured_step is not None:
            self.captured_step.epoch_start()

    def on_train_epoch_end(self) -> None:
        if not self.fused or self.captured_step is None:
            return
        self.log_dict(self.captured_step.epoch_metrics(), prog_bar=False)
        if self.hparams.scheduler_interval != "step":
            for scheduler in self._schedulers():
                scheduler.step()

    def _schedulers(self) -> list:
        schedulers = self.lr_schedulers()
        if schedulers is None:
            return []
        return list(schedulers) if isinstance(schedulers, list) else [schedulers]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.fused:
            captured.plain_lrs(checkpoint)

    def configure_optimizers(self):
        optimizer_cfg = self.hparams.optimizer or {
            "_target_": "torch.optim.Adam",
            "_partial_": True,
            "lr": 1e-3,
        }
        optimizer = instantiate(optimizer_cfg)(params=self.parameters())
        if not self.hparams.scheduler:
            return optimizer
        scheduler = instantiate(self.hparams.scheduler)(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "interval": self.hparams.scheduler_interval,
                # The captured step steps its schedulers itself (never ReduceLROnPlateau).
                **({} if self.fused else {"monitor": self.hparams.scheduler_monitor}),
            },
        }

    # -- does the network fit the data? (checked before training starts) ------------------------
    def output_width(self, datamodule) -> int | None:
        """How many outputs per sample this task scores against `datamodule`'s targets."""
        return None

    @torch.no_grad()
    def check_data(self, datamodule) -> None:
        """Run the network once on the data's example input: a network sized for other data fails
        here, with the key to change, instead of deep inside the first training step."""
        example = datamodule.example_input(2) if hasattr(datamodule, "example_input") else None
        if example is None:
            return
        inputs = example if isinstance(example, tuple | list) else (example,)
        shapes = ", ".join(str(tuple(x.shape)) for x in inputs)
        was_training = self.training
        self.eval()
        try:
            out = self(*inputs)
        except (RuntimeError, ValueError, IndexError) as exc:
            raise ConfigError(
                "model",
                f"the network cannot read this data's inputs of shape {shapes}: "
                f"{str(exc).splitlines()[0]}; size it from the data config (e.g. "
                "model.input_size: ${data.input_size}) instead of typing sizes",
            ) from None
        finally:
            self.train(was_training)
        width = self.output_width(datamodule)
        if width is not None and out.shape[-1] != width:
            raise ConfigError(
                "model.output_size",
                f"the network gives {out.shape[-1]} outputs per sample but {type(self).__name__} "
                f"needs {width} for this data; take it from the data config",
            )
