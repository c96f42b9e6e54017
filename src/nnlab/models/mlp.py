"""Multi-layer perceptron: the time-series regressor (window -> horizon) and the multi-hot text
classifier are both this network with different sizes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nnlab.errors import ConfigError, require_positive
from nnlab.models.init import Initializer
from nnlab.models.layers import activation as make_activation


class MLP(nn.Module):
    """Flatten -> [Linear -> activation -> Dropout] per hidden size -> Linear: the layer list
    `[flatten, {dense: {units, activation}}, {dropout}, ..., dense]` of model=sequential, with
    the same modules and parameter names (`layers.1.weight`, ...)."""

    def __init__(
        self,
        input_size: int,
        output_size: int,
        hidden_sizes: Sequence[int] = (10,),
        activation: str = "relu",
        dropout: float = 0.0,
        init: Initializer = "torch",
    ):
        super().__init__()
        require_positive("model.input_size", input_size)
        require_positive("model.output_size", output_size)
        if not 0.0 <= dropout < 1.0:
            raise ConfigError("model.dropout", f"must be in [0, 1), got {dropout}")
        from nnlab.models.sequential import build_layers

        make_activation(activation)  # an unknown name is model.activation's error
        layers: list = ["flatten"]
        for i, size in enumerate(hidden_sizes):
            require_positive(f"model.hidden_sizes[{i}]", size)
            layers.append({"dense": {"units": size, "activation": activation}})
            layers += [{"dropout": dropout}] if dropout else []
        # init: Keras' initialiser of every Dense layer (models/init.py), biases zero
        modules, _ = build_layers([*layers, "dense"], (input_size,), output_size, init=init)
        self.layers = nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
