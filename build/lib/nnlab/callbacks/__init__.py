"""Callbacks that turn a run into figures and text, in TensorBoard and in the run directory."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.loggers import TensorBoardLogger


def log_figure(trainer, tag: str, figure, path: Path | None = None) -> None:
    """Send a matplotlib figure to every TensorBoard logger and save it as a PNG, then close it."""
    import matplotlib.pyplot as plt

    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=120, bbox_inches="tight")
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_figure(tag, figure, global_step=trainer.global_step, close=False)
    plt.close(figure)
