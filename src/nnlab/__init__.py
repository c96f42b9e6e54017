"""nnlab: a PyTorch Lightning + Hydra experiment lab for the classic network families."""

from pathlib import Path

__version__ = "0.1.0"

# The Hydra configs live beside src/ (the repository's conf/), so that conf/ and src/nnlab/
# mirror each other; NNLAB_CONF_DIR points elsewhere for a non-editable install.
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

# Config interpolations the data configs use (`${nnlab.mnist_shape:...}`): registered on import
# so that they resolve wherever a config is composed (nnlab-train, tests, notebooks).
from nnlab.data.views import register_resolvers as _register_data_resolvers  # noqa: E402

_register_data_resolvers()
