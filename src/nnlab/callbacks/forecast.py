"""The prediction-vs-truth plot over the test segment of a series."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from nnlab.callbacks import log_figure
from nnlab.data.series import SeriesDataModule
from nnlab.errors import ConfigError


class ForecastPlot(L.Callback):
    """After testing: one-step-ahead predictions against the true series, in the series' units,
    logged to TensorBoard (`test/forecast`) and saved as `<dirpath>/forecast.png`."""

    def __init__(self, dirpath: str | None = None, filename: str = "forecast.png"):
        self.path = Path(dirpath) / filename if dirpath else None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not isinstance(trainer.datamodule, SeriesDataModule):
            raise ConfigError(
                "callbacks.forecast_plot",
                f"plots a series, but the data are {type(trainer.datamodule).__name__}; "
                "use it with data=sine or data=csv",
            )

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        dm = trainer.datamodule  # a SeriesDataModule (setup)
        if dm is None or "test" not in dm.datasets:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        x, y = dm.datasets["test"].tensors
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            (inputs,) = dm.batch_transform((x.to(pl_module.device),))
            pred = pl_module(inputs).float().cpu()
        pl_module.train(was_training)
        t = torch.arange(len(x)) + dm.starts["test"]
        k = dm.num_targets  # the first step ahead of each target: one panel each
        observed, predicted = dm.decode(y[:, :k]), dm.decode(pred[:, :k])
        figure, axes = plt.subplots(k, 1, figsize=(9, 3.5 * k), sharex=True, squeeze=False)
        clean = dm.clean_series()
        for j, (ax, name) in enumerate(zip(axes[:, 0], dm.targets, strict=True)):
            ax.plot(t, observed[:, j], ".", ms=3, color="0.55", label="observed")
            if clean is not None:
                ax.plot(t, clean[t], color="0.2", lw=1, label="noise-free signal")
            ax.plot(t, predicted[:, j], color="C1", lw=1.5, label="prediction (1 step ahead)")
            ax.set(ylabel=name)
            ax.legend(loc="best", fontsize=8)
        mse = torch.mean((dm.decode(pred) - dm.decode(y)) ** 2).item()  # the data's units
        axes[0, 0].set(title=f"test split: MSE {mse:.4f} over all {y.shape[1]} outputs")
        axes[-1, 0].set(xlabel="time step")
        log_figure(trainer, "test/forecast", figure, self.path)
