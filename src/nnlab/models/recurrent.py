"""Recurrent networks: an RNN / LSTM / GRU (cuDNN-backed torch modules) or an old-Keras cell
(deep_rnn, jzs1, jzs2, jzs3 from `cells.py`) encoder and a Linear head.

One network serves both the sequence classifier (output_size = classes) and the series
regressor (output_size = horizon): inputs are (batch, steps, features), or (batch, steps) for a
univariate series. Stacking (`num_layers`), `bidirectional` and dropout between layers work the
same for every cell.

Sequences of different lengths come as `(x, lengths)`, x zero-padded at the end: padded steps
are never read (torch cells run on packed sequences, the custom cells hold their state still
there), so the output never depends on the padding. `readout` picks what the head sees, as
Keras' `return_sequences` of the top layer does: `last` (each direction's state at its last
real step; Keras' return_sequences=False), `mean` (the top layer's outputs averaged over real
steps) or `all` (one output per step, (batch, steps, output_size): many-to-many, Keras'
return_sequences=True; outputs at padded steps are zeroed by the mask and scored by nobody).
`return_sequences: [true, ..., X]` spells the same per layer, Keras-style: every layer below the
top must return sequences (the next one reads them), and the top's X means `all` (true) or
`last` (false).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nnlab.errors import ConfigError
from nnlab.models.cells import CELLS as CUSTOM_CELLS
from nnlab.models.cells import CellStack, step_mask
from nnlab.schema import PositiveInt, Rate

TORCH_CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
CELLS = [*TORCH_CELLS, *CUSTOM_CELLS]
READOUTS = ("last", "mean", "all")
# Old Keras' initialisers for torch's cells (the custom cells always start this way):
# `init` for input weights, `inner_init` for recurrent ones; `default` keeps torch's.
INITS = ("default", "glorot_uniform")
INNER_INITS = ("default", "orthogonal")
FORGET_BIAS = {"one": 1.0, "zero": 0.0}  # Keras' forget_bias_init names
CellName = Literal[
    "rnn", "lstm", "gru", "deep_rnn", "jzs1", "jzs2", "jzs3", "simple_rnn", "simple_deep_rnn"
]
Activation = Literal["tanh", "relu", "sigmoid", "hard_sigmoid"]


class RecurrentNet(nn.Module):
    # Keys only some cells use (nnlab.schema refuses them on the others); their defaults are
    # null so that "set" and "not set" differ, and null means the value below.
    schema_applies = {
        "nonlinearity": ("cell", ("rnn", "simple_rnn", "deep_rnn", "simple_deep_rnn")),
        "inner_activation": ("cell", ("jzs1", "jzs2", "jzs3", "simple_deep_rnn")),
        "depth": ("cell", ("deep_rnn", "simple_deep_rnn")),
        "forget_bias": ("cell", ("lstm",)),
        "init": ("cell", tuple(TORCH_CELLS)),
        "inner_init": ("cell", tuple(TORCH_CELLS)),
    }

    # What these keys were set to before they became null (configs saved by earlier nnlab).
    schema_old_defaults = {
        "nonlinearity": "tanh", "inner_activation": "sigmoid", "depth": 3, "forget_bias": 1.0,
        "init": "default", "inner_init": "default",
    }  # fmt: skip

    def __init__(
        self,
        input_size: PositiveInt,
        output_size: PositiveInt,
        cell: CellName = "lstm",
        hidden_size: PositiveInt = 64,
        num_layers: PositiveInt = 1,
        bidirectional: bool = False,
        dropout: Rate = 0.0,
        readout: Literal["last", "mean", "all"] = "last",
        nonlinearity: Activation | None = None,
        forget_bias: float | Literal["one", "zero"] | None = None,
        depth: PositiveInt | None = None,
        return_sequences: list[bool] | None = None,
        inner_activation: Literal["sigmoid", "hard_sigmoid"] | None = None,
        init: Literal["default", "glorot_uniform"] | None = None,
        inner_init: Literal["default", "orthogonal"] | None = None,
    ):
        super().__init__()
        nonlinearity = nonlinearity or "tanh"
        inner_activation = inner_activation or "sigmoid"
        depth = 3 if depth is None else depth
        forget_bias = 1.0 if forget_bias is None else forget_bias
        init, inner_init = init or "default", inner_init or "default"
        if return_sequences is not None:
            readout = keras_readout(return_sequences, num_layers, readout)
        if cell == "deep_rnn" and nonlinearity not in ("tanh", "relu"):
            raise ConfigError("model.nonlinearity", f"must be tanh or relu, got {nonlinearity!r}")
        if cell == "rnn" and nonlinearity not in ("tanh", "relu"):
            cell = "simple_rnn"  # nn.RNN has tanh/relu only; the plain cell has every activation
        forget_bias = FORGET_BIAS.get(forget_bias, forget_bias)
        self.cell, self.readout, self.bidirectional = cell, readout, bidirectional
        self.rnn = make_rnn(
            cell, input_size, hidden_size, num_layers, bidirectional, dropout,
            nonlinearity, forget_bias, depth,
            inner_activation=inner_activation, init=init, inner_init=inner_init,
        )  # fmt: skip
        self.head = nn.Linear(hidden_size * (2 if bidirectional else 1), output_size)

    def encode(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, steps, features) -> (batch, hidden * directions), or (batch, steps, ...)
        for readout `all`; `lengths` the true lengths of zero-padded sequences."""
        if x.dim() == 2:
            x = x.unsqueeze(-1)
        if lengths is not None:
            lengths = lengths.clamp(min=1, max=x.shape[1])
        if self.cell in TORCH_CELLS and lengths is not None:
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            packed_out, state = self.rnn(packed)
            outputs, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=x.shape[1])
        elif self.cell in TORCH_CELLS:
            outputs, state = self.rnn(x)
        else:
            outputs, state = self.rnn(x, lengths)
        if self.readout == "all":
            return outputs
        if self.readout == "mean":
            if lengths is None:
                return outputs.mean(dim=1)
            mask = step_mask(lengths.to(outputs.device), outputs.shape[1])
            return (outputs * mask).sum(1) / lengths.to(outputs.device)[:, None]
        h_n = state[0] if isinstance(state, tuple) else state  # (layers * directions, B, H)
        if self.bidirectional:  # forward's last step and backward's last step (at t = 0)
            return torch.cat([h_n[-2], h_n[-1]], dim=-1)
        return h_n[-1]

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        out = self.head(self.encode(x, lengths))
        if self.readout == "all" and lengths is not None:  # padded steps: exactly zero
            out = out * step_mask(lengths.clamp(min=1).to(out.device), out.shape[1])
        return out


def keras_readout(return_sequences, num_layers: int, readout: str) -> str:
    """The readout that Keras' per-layer `return_sequences` flags spell (see the docstring)."""
    flags = [bool(f) for f in return_sequences]
    if len(flags) != num_layers:
        raise ConfigError(
            "model.return_sequences",
            f"{len(flags)} flags for {num_layers} layers (model.num_layers); give one per layer",
        )
    if not all(flags[:-1]):
        raise ConfigError(
            "model.return_sequences",
            f"{flags}: a layer below the top must return sequences (true), the next layer reads "
            "them; only the top layer may return its last state",
        )
    spelled = "all" if flags[-1] else "last"
    if readout not in (spelled, "last"):
        raise ConfigError(
            "model.readout",
            f"{readout!r} contradicts model.return_sequences {flags} (which means {spelled!r}); "
            "set one of them",
        )
    return spelled


def keras_init(rnn: nn.RNNBase, init: str, inner_init: str) -> None:
    """Glorot-uniform input and orthogonal recurrent weights, each gate's block on its own (as
    Keras' separate W_i, W_f ... matrices), zero biases."""
    if init == "default" and inner_init == "default":
        return
    with torch.no_grad():
        for name, param in rnn.named_parameters():
            blocks = param.split(rnn.hidden_size, dim=0)  # torch stacks the gates' rows
            if name.startswith("weight_ih") and init == "glorot_uniform":
                for block in blocks:
                    nn.init.xavier_uniform_(block)
            elif name.startswith("weight_hh") and inner_init == "orthogonal":
                for block in blocks:
                    nn.init.orthogonal_(block)
            elif name.startswith("bias"):
                param.zero_()


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
    *,
    inner_activation: str = "sigmoid",
    init: str = "default",
    inner_init: str = "default",
) -> nn.Module:
    """The recurrent encoder (batch-first; returns `(outputs, state)` as torch's nn.RNN does):
    a torch RNN/LSTM/GRU (Keras' `init` / `inner_init` optional) or a `CellStack` of nnlab's
    cells. Shared with model=sequential."""
    common = {
        "num_layers": num_layers,
        "bidirectional": bidirectional,
        "dropout": dropout if num_layers > 1 else 0.0,  # applied between layers only
    }
    if cell in TORCH_CELLS:
        kwargs = {"nonlinearity": nonlinearity} if cell == "rnn" else {}
        rnn = TORCH_CELLS[cell](input_size, hidden_size, batch_first=True, **common, **kwargs)
        keras_init(rnn, init, inner_init)
    else:
        kwargs = {
            "deep_rnn": {"depth": depth, "nonlinearity": nonlinearity},
            "simple_rnn": {"nonlinearity": nonlinearity},
            "simple_deep_rnn": {
                "depth": depth,
                "nonlinearity": nonlinearity,
                "inner_activation": inner_activation,
            },
        }.get(cell, {"inner_activation": inner_activation})
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
