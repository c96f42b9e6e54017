"""nnlab: a PyTorch Lightning + Hydra experiment lab for the classic network families."""

from pathlib import Path

__version__ = "0.1.0"

# The Hydra configs ship inside the package (the repository's top-level conf/ is a link to it), so
# an installed wheel finds them from any working directory.
CONF_DIR = Path(__file__).resolve().parent / "conf"

# The `${nnlab.*:}` config interpolations: registered on import so that they resolve wherever a
# config is composed (nnlab-train, the other commands, tests, notebooks).
from nnlab.resolvers import register_resolvers as _register_resolvers  # noqa: E402

_register_resolvers()
