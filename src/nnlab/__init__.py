"""nnlab: a PyTorch Lightning + Hydra experiment lab for the classic network families."""

from pathlib import Path

__version__ = "0.1.0"

# The Hydra configs live beside src/ (the repository's conf/), so that conf/ and src/nnlab/
# mirror each other; NNLAB_CONF_DIR points elsewhere for a non-editable install.
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
