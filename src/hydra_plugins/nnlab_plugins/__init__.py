"""nnlab's Hydra plugins; Hydra finds (and only accepts) plugins under the hydra_plugins namespace.

- NNLAB_CONFIG_PATH: folders (separated by ':') whose config groups join nnlab's, for your own
  experiments without forking (`NNLAB_CONFIG_PATH=~/my_conf nnlab-train experiment=mine`); the
  same as nnlab-train's `--config-dir ~/my_conf`.
- `OptunaSweeper` (nnlab/sweeps.py): hydra-optuna-sweeper's, recording failed trials as FAIL.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import (
        OptunaSweeper as _PluginOptunaSweeper,
    )
except ImportError:  # the [sweep] extra is not installed
    _PluginOptunaSweeper = None


class NnlabSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        folders = [f for f in os.environ.get("NNLAB_CONFIG_PATH", "").split(os.pathsep) if f]
        for folder in reversed(folders):  # the first folder named is searched first
            path = Path(folder).expanduser().absolute()
            search_path.prepend(provider="nnlab-config-path", path=f"file://{path}")


if _PluginOptunaSweeper is not None:

    class OptunaSweeper(_PluginOptunaSweeper):
        """hydra-optuna-sweeper's sweeper; failed trials are told to Optuna as FAIL and the
        study goes on (see nnlab/sweeps.py)."""

        def setup(self, *args: Any, **kwargs: Any) -> None:
            from nnlab.sweeps import FailureAwareLauncher

            super().setup(*args, **kwargs)
            self.sweeper.launcher = FailureAwareLauncher(self.sweeper.launcher)

        def sweep(self, arguments: list[str]) -> None:
            from nnlab.sweeps import NoTrialCompleted, grid_exhaustion_tolerated

            try:
                with grid_exhaustion_tolerated():
                    return super().sweep(arguments)
            except ValueError as exc:  # Optuna asked for the best of no completed trial
                if "does not exist" not in str(exc) and "No trials are completed" not in str(exc):
                    raise
                raise NoTrialCompleted(
                    "none of the search's trials completed; each trial's status.json (and "
                    "nnlab-report) says why"
                ) from None
