"""nnlab's sweeper as a Hydra plugin (Hydra finds plugins only under the `hydra_plugins`
namespace): `hydra/sweeper=nnlab`, its samplers in `hydra/sweeper/sampler`. The work is in
nnlab/search/."""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper

from nnlab.search.config import register_configs

register_configs()


class NnlabSweeper(Sweeper):
    """Hyperparameter search on Optuna: asynchronous workers, pruning, several objectives."""

    # its settings' types, bounds and meanings (checked by nnlab's schema before a search)
    schema_declared_by = "nnlab.search.config.sweeper_settings"

    def __init__(self, **settings: Any) -> None:
        from nnlab.search.sweeper import SearchSweeper

        self.search = SearchSweeper(**settings)

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.search.setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.launcher = self.search.launcher

    def sweep(self, arguments: list[str]) -> None:
        return self.search.sweep(arguments, validate_batch=self.validate_batch_is_legal)
