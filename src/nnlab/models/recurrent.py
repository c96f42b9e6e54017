"""Recurrent networks: an RNN / LSTM / GRU (cuDNN-backed torch modules) or an old-Keras cell
(deep_rnn, jzs1, jzs2, jzs3 from `cells.py`) encoder and a Linear head.

One network serves both the sequence classifier (output_size = classes) and the series
regressor (output_size = horizon): inputs are (batch, steps, features), or (batch, steps) for a
univariate series. Stacking (`num_layers`), `bidirectional` and dropout between layers work the
same for every cell.
"""

from __future__ import annotations

import torch
from torch import nn

from nnlab.errors import ConfigError, require_positive
from nnlab.models.cells import CELLS as CUSTOM_CELLS
from nnlab.models.cells import CellStack

TORCH_CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
CELLS = [*TORCH_CELLS, *CUSTOM_CELLS]
READOUTS = ("last", "mean")


class RecurrentNet(nn.Module):
    def __init__(
        self,
        input_size: int,
        output_size: int,
        cell: str = "lstm",
        hidden_size: int = 64,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        readout: str = "last",
        nonlinearity: str = "tanh",
        forget_bias: float = 1.0,
        depth: int = 3,
    ):
        super().__init__()
        require_positive("model.input_size", input_size)
        require_positive("model.output_size", output_size)
        require_positive("model.hidden_size", hidden_size)
        require_positive("model.num_layers", num_layers)
        if cell not in CELLS:
            raise ConfigError(
                "model.cell", f"unknown cell {cell!r}; choose one of {', '.join(CELLS)}"
            )
        if readout not in READOUTS:
            raise ConfigError(
                "model.readout", f"unknown readout {readout!r}; choose one of {', '.join(READOUTS)}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ConfigError("model.dropout", f"must be in [0, 1), got {dropout}")
        if cell in ("rnn", "deep_rnn") and nonlinearity not in ("tanh", "relu"):
            raise ConfigError("model.nonlinearity", f"must be tanh or relu, got {nonlinearity!r}")
        self.cell, self.readout, self.bidirectional = cell, readout, bidirectional
        self.rnn = make_rnn(
            cell, input_size, hidden_size, num_layers, bidirectional, dropout,
            nonlinearity, forget_bias, depth,
        )  # fmt: skip
        self.head = nn.Linear(hidden_size * (2 if bidirectional else 1), output_size)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, steps, features) -> (batch, hidden * directions)."""
        if x.dim() == 2:
            x = x.unsqueeze(-1)
        outputs, state = self.rnn(x)
        if self.readout == "mean":
            return outputs.mean(dim=1)
        h_n = state[0] if isinstance(state, tuple) else state  # (layers * directions, B, H)
        if self.bidirectional:  # forward's last step and backward's last step (at t = 0)
            return torch.cat([h_n[-2], h_n[-1]], dim=-1)
        return h_n[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode(x))


def make_rnn(
    cell: str,
    input_size: int,
    hidden_size: int,
    num_layers: int = 1,
    bidirectional: bool = False,
    dropout: float = 0.0,
    nonlinearity: str = "tanh",
    forget_bias: float = 1.0,
    depth: int = 3,
) -> nn.Module:
    """The recurrent encoder (batch-first; returns `(outputs, state)` as torch's nn.RNN does):
    a torch RNN/LSTM/GRU or a `CellStack` of nnlab's cells. Shared with model=sequential."""
    common = {
        "num_layers": num_layers,
        "bidirectional": bidirectional,
        "dropout": dropout if num_layers > 1 else 0.0,  # applied between layers only
    }
    if cell in TORCH_CELLS:
        kwargs = {"nonlinearity": nonlinearity} if cell == "rnn" else {}
        rnn = TORCH_CELLS[cell](input_size, hidden_size, batch_first=True, **common, **kwargs)
    else:
        kwargs = {"depth": depth, "nonlinearity": nonlinearity} if cell == "deep_rnn" else {}
        rnn = CellStack(cell, input_size, hidden_size, **common, **kwargs)
    if cell == "lstm":
        init_forget_bias(rnn, forget_bias)
    return rnn


def init_forget_bias(lstm: nn.LSTM, value: float) -> None:
    """Start every forget gate open (bias `value`), as old Keras recommended: gradients then
    flow through long sequences from the first step. torch orders the gates i, f, g, o and adds
    two biases, so the forget slice of one is set and of the other zeroed."""
    hidden = lstm.hidden_size
    with torch.no_grad():
        for name, param in lstm.named_parameters():
            if name.startswith("bias_ih"):
                param[hidden : 2 * hidden].fill_(value)
            elif name.startswith("bias_hh"):
                param[hidden : 2 * hidden].zero_()
