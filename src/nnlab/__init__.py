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


# model=sequential's sizes: `${nnlab.example_shape:${data}}`, `${nnlab.task_width:${task},${data}}`.
from omegaconf import OmegaConf as _OmegaConf  # noqa: E402

from nnlab.models import MODEL_RESOLVERS as _MODEL_RESOLVERS  # noqa: E402

for _name, _fn in _MODEL_RESOLVERS.items():
    if not _OmegaConf.has_resolver(_name):
        _OmegaConf.register_new_resolver(_name, _fn)
