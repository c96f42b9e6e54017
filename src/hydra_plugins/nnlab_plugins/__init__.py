"""nnlab's Hydra plugins; Hydra finds (and only accepts) plugins under the hydra_plugins namespace.

- NNLAB_CONFIG_PATH: folders (separated by ':') whose config groups join nnlab's, for your own
  experiments without forking (`NNLAB_CONFIG_PATH=~/my_conf nnlab-train experiment=mine`); the
  same as nnlab-train's `--config-dir ~/my_conf`.
- `OptunaSweeper`: the name nnlab's search presets gave the sweeper before it was nnlab's own
  (`hydra_plugins.nnlab_search.NnlabSweeper`); a config that still names it gets that sweeper.
"""

from __future__ import annotations

import os
from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

from hydra_plugins.nnlab_search import NnlabSweeper


class NnlabSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        folders = [f for f in os.environ.get("NNLAB_CONFIG_PATH", "").split(os.pathsep) if f]
        for folder in reversed(folders):  # the first folder named is searched first
            path = Path(folder).expanduser().absolute()
            search_path.prepend(provider="nnlab-config-path", path=f"file://{path}")


class OptunaSweeper(NnlabSweeper):
    """nnlab's sweeper under the name older configs give it."""
