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


def saved_config(path: Path) -> dict[str, Any]:
    """{CONFIG_KEY: the run's config as `path` saved it}, or {} when it has none."""
    return {CONFIG_KEY: OmegaConf.to_container(OmegaConf.load(path))} if path.is_file() else {}


class RunConfigInCheckpoint(Callback):
    """Adds the run's saved config (`path`, read once) to every checkpoint the run writes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config: dict[str, Any] = {}

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        self.config = self.config or saved_config(self.path)
        checkpoint.update(self.config)
