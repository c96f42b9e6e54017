"""Encoder-decoder (seq2seq) forecaster: an LSTM/GRU encoder reads the window, a decoder cell
started from its final state emits `output_size` (= data.horizon) steps one at a time.

The decoder's input at step k is the previous value: the window's last value at k = 0, then its
own previous prediction (autoregressive, always at validation / test / prediction time) or, while
training, the true previous target with probability `teacher_forcing_ratio` per step (teacher
forcing: faster, steadier early training; 0 trains exactly as it is used).
"""

from __future__ import annotations

import torch
from torch import nn

from nnlab.errors import ConfigError, require_positive

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}


class Seq2SeqForecaster(nn.Module):
    #: tells the regression task to hand the targets over while training (teacher forcing)
    uses_targets = True

    def __init__(
        self,
        input_size: int,
        output_size: int,
        cell: str = "lstm",
        hidden_size: int = 32,
        num_layers: int = 1,
        teacher_forcing_ratio: float = 0.5,
        target_feature: int = 0,
    ):
        super().__init__()
        require_positive("model.input_size", input_size)
        require_positive("model.output_size", output_size)
        require_positive("model.hidden_size", hidden_size)
        require_positive("model.num_layers", num_layers)
        if cell not in CELLS:
            raise ConfigError("model.cell", f"unknown cell {cell!r}; choose one of lstm, gru")
        if not 0.0 <= teacher_forcing_ratio <= 1.0:
            raise ConfigError(
                "model.teacher_forcing_ratio", f"must be in [0, 1], got {teacher_forcing_ratio}"
            )
        if not 0 <= target_feature < input_size:
            raise ConfigError(
                "model.target_feature", f"must index an input feature (< {input_size})"
            )
        self.horizon, self.ratio, self.target_feature = (
            output_size,
            teacher_forcing_ratio,
            target_feature,
        )
        self.encoder = CELLS[cell](input_size, hidden_size, num_layers, batch_first=True)
        self.decoder = CELLS[cell](1, hidden_size, num_layers, batch_first=True)
        self.head = nn.Linear(hidden_size, 1)

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """x (batch, window[, features]) -> (batch, horizon); `targets` (batch, horizon) only
        while training, for teacher forcing."""
        if x.dim() == 2:
            x = x.unsqueeze(-1)
        _, state = self.encoder(x)
        previous = x[:, -1:, self.target_feature : self.target_feature + 1]  # (batch, 1, 1)
        forcing = self.training and targets is not None and self.ratio > 0
        outputs = []
        for k in range(self.horizon):
            out, state = self.decoder(previous, state)
            value = self.head(out)  # (batch, 1, 1)
            outputs.append(value[:, 0, 0])
            if forcing and torch.rand(()) < self.ratio:
                previous = targets[:, k, None, None].to(value.dtype)
            else:
                previous = value
        return torch.stack(outputs, dim=1)
