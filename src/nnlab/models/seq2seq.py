"""Encoder-decoder (seq2seq) forecaster: an LSTM/GRU encoder reads the window, a decoder cell
started from its final state emits `output_size` (= data.horizon) steps one at a time, each
step the `num_targets` target values (data.num_targets); flattened step by step to
(batch, horizon * num_targets), as the series data's targets are.

The decoder's input at step k is the previous step's targets: at k = 0 their last values in the
window (the features `target_features` points at; zeros when a target is no feature), then its
own previous prediction (autoregressive, always at validation / test / prediction time) or,
while training, the true previous targets with probability `teacher_forcing_ratio` per step
(teacher forcing: faster, steadier early training; 0 trains exactly as it is used).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from nnlab.errors import ConfigError
from nnlab.models.init import Initializer, init_module
from nnlab.schema import Fraction, NonNegativeInt, PositiveInt

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}


class Seq2SeqForecaster(nn.Module):
    #: tells the regression task to hand the targets over while training (teacher forcing)
    uses_targets = True

    def __init__(
        self,
        input_size: PositiveInt,
        output_size: PositiveInt,
        num_targets: PositiveInt = 1,
        cell: Literal["lstm", "gru"] = "lstm",
        hidden_size: PositiveInt = 32,
        num_layers: PositiveInt = 1,
        teacher_forcing_ratio: Fraction = 0.5,
        target_features: Sequence[NonNegativeInt] | None = (0,),
        init: Initializer = "torch",
        inner_init: Initializer = "torch",
    ):
        super().__init__()
        if target_features is not None:
            target_features = [int(i) for i in target_features]
            if len(target_features) != num_targets or not all(
                0 <= i < input_size for i in target_features
            ):
                raise ConfigError(
                    "model.target_features",
                    f"{target_features}: one input feature (< {input_size}) per target "
                    f"({num_targets}), or null",
                )
        self.horizon, self.num_targets, self.ratio = output_size, num_targets, teacher_forcing_ratio
        self.target_features = target_features
        self.encoder = CELLS[cell](input_size, hidden_size, num_layers, batch_first=True)
        self.decoder = CELLS[cell](num_targets, hidden_size, num_layers, batch_first=True)
        self.head = nn.Linear(hidden_size, num_targets)
        # Keras' initialisers (models/init.py), as model=recurrent's init / inner_init
        init_module(self, init, inner_init)

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """x (batch, window[, features]) -> (batch, horizon * num_targets); `targets` (batch,
        horizon * num_targets) only while training, for teacher forcing."""
        if x.dim() == 2:
            x = x.unsqueeze(-1)
        _, state = self.encoder(x)
        if self.target_features is None:
            previous = x.new_zeros(len(x), 1, self.num_targets)
        else:
            previous = x[:, -1:, self.target_features]  # (batch, 1, num_targets)
        forcing = self.training and targets is not None and self.ratio > 0
        if forcing:
            targets = targets.reshape(len(x), self.horizon, self.num_targets)
        outputs = []
        for k in range(self.horizon):
            out, state = self.decoder(previous, state)
            value = self.head(out)  # (batch, 1, num_targets)
            outputs.append(value[:, 0])
            if forcing and torch.rand(()) < self.ratio:
                previous = targets[:, k : k + 1].to(value.dtype)
            else:
                previous = value
        return torch.stack(outputs, dim=1).flatten(1)
