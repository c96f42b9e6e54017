"""`hydra/launcher=packed`: trains the jobs of a sweep whose networks have the same shapes as one
stacked model (see nnlab/packed/). Hydra takes launcher classes from `hydra_plugins` only, so
this class is here and forwards to nnlab.packed.launcher."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from nnlab.schema import NonNegativeFloat, PositiveInt


class PackedLauncher(Launcher):
    # The settings' types and bounds (checked by nnlab's schema before a sweep starts).
    def __init__(
        self,
        pack_size: PositiveInt = 32,
        device: str = "auto",
        recurrent: Literal["auto", "batched", "per_trial"] = "auto",
        save_every_s: NonNegativeFloat = 10.0,
    ) -> None:
        from nnlab.errors import ConfigError, require_positive
        from nnlab.packed.recurrent import KERNELS

        if recurrent not in KERNELS:
            raise ConfigError(
                "hydra.launcher.recurrent", f"{recurrent!r}; choose one of {', '.join(KERNELS)}"
            )
        require_positive("hydra.launcher.save_every_s", save_every_s, allow_zero=True)
        self.pack_size, self.device, self.recurrent = int(pack_size), device, recurrent
        self.save_every_s = float(save_every_s)
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        from nnlab.heap import importing

        with importing():  # torch and Lightning, if the up-front check has not imported them
            from nnlab.packed.launcher import share_compositions

        self.config, self.task_function, self.hydra_context = config, task_function, hydra_context
        share_compositions(self)

    def device_for(self, cfg: Any):
        """`device: auto` follows the trial's trainer.accelerator (a GPU when there is one)."""
        import torch

        if self.device != "auto":
            return torch.device(self.device)
        accelerator = str(cfg.trainer.get("accelerator", "auto"))
        wants_gpu = accelerator in ("gpu", "cuda") or accelerator == "auto"
        return torch.device("cuda" if wants_gpu and torch.cuda.is_available() else "cpu")

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        from nnlab.packed.launcher import launch

        return launch(self, job_overrides, initial_job_idx)
