"""The run's config inside each of its checkpoints: a checkpoint alone (no run directory) then
says what it was trained on, and `nnlab-eval ckpt=PATH` rebuilds its data module and task
from it (nnlab/evaluate.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback
from omegaconf import OmegaConf

# the checkpoint's key for the run's resolved config (as <run>/config.yaml saved it)
CONFIG_KEY = "nnlab_config"


class RunConfigInCheckpoint(Callback):
    """Adds the run's saved config (`path`, read once) to every checkpoint the run writes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config: dict[str, Any] | None = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if self.config is None and self.path.is_file():
            self.config = OmegaConf.to_container(OmegaConf.load(self.path))
        if self.config is not None:
            checkpoint[CONFIG_KEY] = self.config
