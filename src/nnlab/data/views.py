"""The shapes of the MNIST views, without importing torch: the data config interpolates them
(`${nnlab.mnist_shape:${.view},input_size}`) so models are sized from the view, never by hand.

| view       | a sample                 | seq_len | input_size |
|------------|--------------------------|---------|------------|
| `rows`     | 28 steps of 28 pixels    | 28      | 28         |
| `pixels`   | 784 steps of 1 pixel     | 784     | 1          |
| `permuted` | `pixels`, fixed shuffle  | 784     | 1          |
| `image`    | a 1 x 28 x 28 image      | null    | 784        |

(`input_size` of `image` counts the features a flattening model sees.)
"""

from __future__ import annotations

from omegaconf import OmegaConf

HEIGHT = WIDTH = 28
PIXELS = HEIGHT * WIDTH
NUM_CLASSES = 10
MNIST_VIEWS: dict[str, dict[str, int | None]] = {
    "rows": {"seq_len": HEIGHT, "input_size": WIDTH},
    "pixels": {"seq_len": PIXELS, "input_size": 1},
    "permuted": {"seq_len": PIXELS, "input_size": 1},
    "image": {"seq_len": None, "input_size": PIXELS},
}


def mnist_shape(view: str, key: str) -> int | None:
    """`seq_len` or `input_size` of a view; None for an unknown view, so that the datamodule,
    built first, reports the bad `data.view` with the choices."""
    return MNIST_VIEWS.get(view, {}).get(key)


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("nnlab.mnist_shape"):
        OmegaConf.register_new_resolver("nnlab.mnist_shape", mnist_shape)
    # Sizes of the multivariate CSV data (conf/data/csv_multivariate.yaml): the number of
    # feature / target columns, and horizon x targets.
    if not OmegaConf.has_resolver("nnlab.len"):
        OmegaConf.register_new_resolver("nnlab.len", lambda items: len(items))
    if not OmegaConf.has_resolver("nnlab.product"):
        OmegaConf.register_new_resolver("nnlab.product", lambda a, b: int(a) * int(b))
