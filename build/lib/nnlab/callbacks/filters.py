"""The first convolution's filters as an image: what the network learned to look for first."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn


def first_conv(model: nn.Module) -> nn.Module | None:
    """The first Conv2d the model applies (for a separable CNN, its depthwise part)."""
    return next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)


def filter_grid(conv: nn.Conv2d, tile: int = 64) -> torch.Tensor:
    """(3, H, W) grid in [0, 1]: one tile (about `tile` pixels wide) per filter, each min-max
    scaled on its own; filters of 3 input channels as colour, others as the mean over their
    input channels."""
    from torchvision.utils import make_grid

    w = conv.weight.detach().float().cpu()
    if w.shape[1] != 3:
        w = w.mean(dim=1, keepdim=True)
    lo = w.amin(dim=(1, 2, 3), keepdim=True)
    hi = w.amax(dim=(1, 2, 3), keepdim=True)
    w = (w - lo) / (hi - lo).clamp_min(1e-12)
    scale = max(1, tile // w.shape[-1])
    w = torch.nn.functional.interpolate(w, scale_factor=scale, mode="nearest")
    nrow = max(1, int(len(w) ** 0.5 + 0.999))
    return make_grid(w, nrow=nrow, padding=2, pad_value=1.0)


class ConvFilters(L.Callback):
    """After each training epoch: the first conv layer's filters to TensorBoard
    (`filters/first_conv`); at the end of fitting also `<dirpath>/<filename>` (PNG)."""

    def __init__(self, dirpath: str | None = None, filename: str = "first_layer_filters.png"):
        self.path = Path(dirpath) / filename if dirpath else None

    def _grid(self, pl_module: L.LightningModule) -> torch.Tensor | None:
        conv = first_conv(getattr(pl_module, "net", pl_module))
        return None if conv is None else filter_grid(conv)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or (grid := self._grid(pl_module)) is None:
            return
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("filters/first_conv", grid, trainer.global_step)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or self.path is None:
            return
        if (grid := self._grid(pl_module)) is not None:
            from torchvision.utils import save_image

            self.path.parent.mkdir(parents=True, exist_ok=True)
            save_image(grid, self.path)
