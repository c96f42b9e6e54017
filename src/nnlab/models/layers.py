"""Small building blocks shared by the model families."""

from __future__ import annotations

from torch import nn

from nnlab.errors import ConfigError

ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "selu": nn.SELU,
    "leaky_relu": nn.LeakyReLU,
    "linear": nn.Identity,
}


def activation(name: str, key: str = "model.activation") -> nn.Module:
    """An activation layer by its Keras-style name."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ConfigError(
            key, f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}"
        ) from None
