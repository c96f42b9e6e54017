"""nnlab: a PyTorch Lightning + Hydra experiment lab for the classic network families."""

from pathlib import Path

__version__ = "0.1.0"

# The Hydra configs ship inside the package (the repository's top-level conf/ is a link to it), so
# an installed wheel finds them from any working directory.
CONF_DIR = Path(__file__).resolve().parent / "conf"

# Config interpolations the data configs use (`${nnlab.mnist_shape:...}`): registered on import
# so that they resolve wherever a config is composed (nnlab-train, tests, notebooks).
from nnlab.data.views import register_resolvers as _register_data_resolvers  # noqa: E402

_register_data_resolvers()


def _register_model_resolvers() -> None:
    """`${nnlab.example_shape:${data}}` and `${nnlab.task_width:${task},${data}}`: model=sequential
    sized from the data's example input and the task (torch is imported only when they resolve)."""
    from omegaconf import OmegaConf

    def example_shape(data):
        from nnlab.models.sequential import example_shape

        shape = example_shape(data)  # a ListConfig: OmegaConf.resolve keeps it
        return None if shape is None else OmegaConf.create(shape)

    def task_width(task, data):
        from nnlab.models.sequential import task_width

        return task_width(task, data)

    for name, fn in (("nnlab.example_shape", example_shape), ("nnlab.task_width", task_width)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


_register_model_resolvers()
