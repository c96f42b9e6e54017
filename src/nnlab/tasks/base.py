"""What every task shares: the network built from its config, optimiser and scheduler from
config, and hyperparameters saved so that `Task.load_from_checkpoint(path)` stands alone."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from nnlab.errors import ConfigError


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
            }
        )
        self.net: nn.Module = instantiate(net)
        # NHWC weights and inputs: tensor-core convolutions skip their layout transposes (GPU).
        self.channels_last = channels_last
        if channels_last:
            self.net.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
        """The net's output; `extra` inputs (e.g. sequence lengths) are passed on to it."""
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x, *extra)

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
                "monitor": self.hparams.scheduler_monitor,
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
