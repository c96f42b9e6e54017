"""Multi-layer perceptron: the time-series regressor (window -> horizon) and the multi-hot text
classifier are both this network with different sizes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nnlab.models.init import Initializer
from nnlab.models.layers import ActivationName
from nnlab.schema import PositiveInt, Rate


class MLP(nn.Module):
    """Flatten -> [Linear -> activation -> Dropout] per hidden size -> Linear: the layer list
    `[flatten, {dense: {units, activation}}, {dropout}, ..., dense]` of model=sequential, with
    the same modules and parameter names (`layers.1.weight`, ...)."""

    def __init__(
        self,
        input_size: PositiveInt,
        output_size: PositiveInt,
        hidden_sizes: Sequence[PositiveInt] = (10,),
        activation: ActivationName = "relu",
        dropout: Rate = 0.0,
        init: Initializer = "torch",
    ):
        super().__init__()
        from nnlab.models.sequential import build_layers

        layers: list = ["flatten"]
        for size in hidden_sizes:
            layers.append({"dense": {"units": size, "activation": activation}})
            layers += [{"dropout": dropout}] if dropout else []
        # init: Keras' initialiser of every Dense layer (models/init.py), biases zero
        modules, _ = build_layers([*layers, "dense"], (input_size,), output_size, init=init)
        self.layers = nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
