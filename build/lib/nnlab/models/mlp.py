"""Multi-layer perceptron: the time-series regressor (window -> horizon) and the multi-hot text
classifier are both this network with different sizes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nnlab.errors import ConfigError, require_positive
from nnlab.models.layers import dense_stack


class MLP(nn.Module):
    """Flatten -> [Linear -> activation -> Dropout] per hidden size -> Linear."""

    def __init__(
        self,
        input_size: int,
        output_size: int,
        hidden_sizes: Sequence[int] = (10,),
        activation: str = "relu",
        dropout: float = 0.0,
    ):
        super().__init__()
        require_positive("model.input_size", input_size)
        require_positive("model.output_size", output_size)
        if not 0.0 <= dropout < 1.0:
            raise ConfigError("model.dropout", f"must be in [0, 1), got {dropout}")
        hidden, width = dense_stack(
            input_size, hidden_sizes, activation, dropout, "model.hidden_sizes"
        )
        layers: list[nn.Module] = [nn.Flatten(), *hidden, nn.Linear(width, output_size)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
