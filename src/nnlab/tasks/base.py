"""What every task shares: the network built from its config, optimiser and scheduler from
config, and hyperparameters saved so that `Task.load_from_checkpoint(path)` stands alone."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from nnlab.config import reported
from nnlab.data.base import DataModule
from nnlab.engine.keys import ENGINE_KEYS, engine_keys
from nnlab.errors import ConfigError
from nnlab.schema import TargetNode, network_arguments
from nnlab.tasks import optimizers

log = logging.getLogger(__name__)


def plain(cfg: Any) -> Any:
    """A DictConfig as plain dicts/lists (what checkpoints and TensorBoard can store)."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


# A data module's `target_kind` (data/base.py): what it is, and the task that learns it.
TARGET_KINDS = {
    "classes": ("one class per sample", "classification"),
    "labels": ("k-hot labels", "multilabel"),
    "values": ("real-valued targets", "regression"),
    "tokens": ("the next token at every step", "language_model"),
    "outputs": ("several targets by name", "multi_output"),
}


class Task(L.LightningModule):
    """The network arrives as its config (a mapping with `_target_`), not as a module, so the
    checkpoint's hyperparameters are enough to rebuild it anywhere."""

    target_kind = "values"  # the data modules' target_kind this task learns

    # How the run trains the task (engine/keys.py), taken through **engine and checked there.
    schema_extra_keys = ENGINE_KEYS

    def __init__(
        self,
        net: Mapping[str, Any],
        optimizer: TargetNode | None = None,
        scheduler: TargetNode | None = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        scheduler_monitor: str = "val/loss",
        channels_last: bool = False,
        compile: bool | Mapping[str, Any] = False,
        **engine: Any,
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
                # how the run trains it (read when the run is assembled): kept with the
                # checkpoint, never acted on here
                **engine_keys(engine),
                "compile": plain(compile),
            }
        )
        # the keys every network takes besides its constructor's (nnlab.schema.NETWORK_KEYS):
        # kept in the hyperparameters, acted on when the run is assembled (model.weights)
        self.net: nn.Module = instantiate(network_arguments(net))
        # NHWC weights and inputs: tensor-core convolutions skip their layout transposes (GPU).
        self.channels_last = channels_last
        if channels_last:
            self.net.to(memory_format=torch.channels_last)

    def forward(self, x: Any = None, *extra: torch.Tensor, **named: torch.Tensor) -> Any:
        """The net's output; `extra` inputs (e.g. sequence lengths) are passed on to it, and
        `named` ones (model=graph's inputs by name) too."""
        if self.channels_last and isinstance(x, torch.Tensor) and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.net(*(() if x is None else (x,)), *extra, **named)
        if isinstance(out, Mapping) and torch.jit.is_tracing():
            # model=graph's outputs by name, as a tuple for a strict trace (TensorBoard's graph)
            return tuple(out.values())
        return out

    # -- training: one loss function, whatever trains the task --------------------------------
    def training_loss(self, batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mean loss, number of correct predictions or None) of one batch, without reading
        anything on the host: every engine trains with this, the CUDA graph captures it, and the
        packed trainer runs it over stacked trials (nnlab/packed/group.py: TaskCall)."""
        raise NotImplementedError

    def outputs(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(the net's outputs, targets) of a batch, as `loss` scores them."""
        raise NotImplementedError

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The task's loss of `outputs(batch)`: training_loss, evaluation and packed trials
        all use this one definition."""
        raise NotImplementedError

    def training_step(self, batch, batch_idx):
        loss, correct = self.training_loss(batch)
        n = len(batch[-1])
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=n)
        if correct is not None:
            self.log("train/acc", correct / n, on_step=False, on_epoch=True, batch_size=n)
        return loss

    def graph_blocker(self) -> str | None:
        """Why this task's training step cannot be captured as a CUDA graph (None: it can)."""
        return None

    # -- evaluation: each task's `_evaluate` logs `<stage>/loss` and its metrics ---------------
    def _evaluate(self, batch, metrics, stage: str):
        raise NotImplementedError

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, self.val_metrics, "val")

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, self.test_metrics, "test")

    # -- stateful networks (models/recurrent.py, `stateful`): the state carried from batch to
    # batch resets where training's epoch starts and where each evaluation starts and ends (a
    # call outside training and evaluation, e.g. a figure's, starts afresh); a mid-epoch
    # checkpoint holds training's, so that a resumed run reads the next batch as the one never
    # stopped.
    def stateful_modules(self) -> list[nn.Module]:
        return [m for m in self.net.modules() if getattr(m, "stateful", False)]

    def on_train_epoch_start(self) -> None:
        for module in self.stateful_modules():
            module.reset_states(True)

    def _reset_evaluation_states(self) -> None:
        for module in self.stateful_modules():
            module.reset_states(False)

    def on_validation_epoch_start(self) -> None:
        self._reset_evaluation_states()

    def on_test_epoch_start(self) -> None:
        self._reset_evaluation_states()

    def on_predict_epoch_start(self) -> None:
        self._reset_evaluation_states()

    def on_validation_epoch_end(self) -> None:
        self._reset_evaluation_states()

    def on_test_epoch_end(self) -> None:
        self._reset_evaluation_states()

    def on_predict_epoch_end(self) -> None:
        self._reset_evaluation_states()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        carried = {
            name: m.carried[True]
            for name, m in self.net.named_modules()
            if getattr(m, "stateful", False) and m.carried.get(True) is not None
        }
        if carried:
            checkpoint["carried_states"] = carried

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        modules = dict(self.net.named_modules())
        for name, state in checkpoint.get("carried_states", {}).items():
            if name in modules:
                modules[name].carried[True] = state

    def configure_model(self) -> None:
        options = self.hparams.get("compile")
        if options and not getattr(self, "_compiled", False):
            # nn.Module.compile keeps parameter names, so checkpoints stay interchangeable.
            self.net.compile(**(options if isinstance(options, Mapping) else {}))
            self._compiled = True
            self.example_input_array = None  # TensorBoard's graph tracer cannot trace it
            log.info("torch.compile: on (%s)", options)

    def configure_optimizers(self):
        optimizer = optimizers.build_optimizer(
            self.hparams.optimizer, self.parameters(), self.device
        )
        self._optimizer_flags = optimizers.implementation(optimizer)
        if not self.hparams.scheduler:
            return optimizer
        try:
            scheduler = instantiate(self.hparams.scheduler)(optimizer=optimizer)
        except (TypeError, ValueError, RuntimeError) as exc:  # torch refused a value
            raise reported("task.scheduler", self.hparams.scheduler, exc) from exc
        interval = self.hparams.scheduler_interval
        counts = getattr(scheduler, "interval", interval)  # a schedule that says what it counts
        if counts != interval:
            raise ConfigError(
                "task.scheduler_interval",
                f"is {interval}, but {type(scheduler).__name__} counts {counts}s; "
                f"set task.scheduler_interval={counts}",
            )
        config = {"scheduler": scheduler, "interval": interval}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and (
            self.automatic_optimization  # (with manual optimization the step reads it itself)
        ):
            config["monitor"] = self.hparams.scheduler_monitor
        return {"optimizer": optimizer, "lr_scheduler": config}

    def on_train_start(self) -> None:
        # A resumed run's optimizer state came with the saving process's fused/foreach flags.
        flags = getattr(self, "_optimizer_flags", None)
        if flags is not None and self.trainer.optimizers:
            optimizers.restore(self.trainer.optimizers[0], flags)

    # -- does the network fit the data? (checked before training starts) ------------------------
    def output_width(self, datamodule) -> int | None:
        """How many outputs per sample this task scores against `datamodule`'s targets."""
        return None

    def check_targets(self, datamodule) -> None:
        """A task that does not learn this data's kind of target is refused before anything is
        built on it (a LightningDataModule of the user's own declares no kind: not checked)."""
        kind = getattr(datamodule, "target_kind", None)
        if kind is None or kind == self.target_kind:
            return
        learns = TARGET_KINDS[self.target_kind][1]
        data = type(datamodule).__name__
        if kind not in TARGET_KINDS:  # a data module of the user's own, with a kind of its own
            raise ConfigError(
                "task",
                f"{learns} on {data}, whose target_kind is {kind!r}, which no nnlab task learns; "
                f"declare one of {', '.join(TARGET_KINDS)} on {data}, or set task._target_ to "
                f"a task of your own whose target_kind is {kind!r}",
            )
        what, task = TARGET_KINDS[kind]
        raise ConfigError("task", f"{learns} on {data}, whose targets are {what}; use task={task}")

    @torch.no_grad()
    def check_data(self, datamodule) -> None:
        """Run the network once on the data's example input: a network sized for other data fails
        here, with the key to change, instead of deep inside the first training step."""
        self.check_targets(datamodule)
        if self.stateful_modules() and getattr(datamodule, "shuffle", False):
            raise ConfigError(
                "data.shuffle",
                "true, but model.stateful carries each row's state to the same row of the next "
                "batch, which needs the batches in their order; set data.shuffle=false",
            )
        if not isinstance(datamodule, DataModule):  # a LightningDataModule of the user's own
            return
        example = datamodule.example_input(2)
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
            self._reset_evaluation_states()  # the example was no evaluation's first batch
        self.check_output(out, datamodule)

    def check_output(self, out, datamodule) -> None:
        """The network's output on the example input against what this task scores."""
        if isinstance(out, Mapping):
            raise ConfigError(
                "model.outputs",
                f"the network gives several outputs ({', '.join(out)}); {type(self).__name__} "
                "scores one: use task=multi_output, or give the network one output",
            )
        width = self.output_width(datamodule)
        if width is not None and out.shape[-1] != width:
            raise ConfigError(
                "model.output_size",
                f"the network gives {out.shape[-1]} outputs per sample but {type(self).__name__} "
                f"needs {width} for this data; take it from the data config",
            )
