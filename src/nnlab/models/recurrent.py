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

Keras' `stateful=True` (`stateful: true`): each sample's state at the end of a batch is where the
same row of the next batch starts (detached: gradients stop at the batch boundary), so batches
must come in order (data.shuffle=false) and row i of consecutive batches must continue the same
sequence. The carried state resets where an epoch of training starts and where each evaluation
(validation, test, prediction) starts and ends (nnlab/tasks/base.py); training and evaluation
carry their own. A last, shorter batch continues its rows' states. `initial_state`: where a sequence (or, stateful, an epoch)
starts: `zeros` (torch's and Keras' default) or `learned` (a trained parameter per layer and
direction, h and, for torch's LSTM, c; saved in checkpoints like any weight).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from nnlab.errors import ConfigError
from nnlab.models.cells import CELLS as CUSTOM_CELLS
from nnlab.models.cells import CellStack, step_mask
from nnlab.models.init import INITIALIZERS, Initializer, check, init_module
from nnlab.models.state import RecurrentState, run_rnn, state_sizes
from nnlab.schema import PositiveInt, Rate

TORCH_CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
CELLS = [*TORCH_CELLS, *CUSTOM_CELLS]
READOUTS = ("last", "mean", "all")
# Keras' initialisers (models/init.py): `init` for the input weights and the head, `inner_init`
# for the recurrent weights; `default` (torch) keeps each layer's own start (nnlab's cells
# start as old Keras did: glorot_uniform and orthogonal).
INITS = INNER_INITS = INITIALIZERS
FORGET_BIAS = {"one": 1.0, "zero": 0.0}  # Keras' forget_bias_init names
CellName = Literal[
    "rnn", "lstm", "gru", "deep_rnn", "jzs1", "jzs2", "jzs3", "simple_rnn", "simple_deep_rnn",
    "keras_lstm", "keras_gru",
]  # fmt: skip
Activation = Literal["tanh", "relu", "sigmoid", "hard_sigmoid"]
# What torch's fused cells cannot do, done by nnlab's cells (models/cells.py) instead: other
# activations or gates (old Keras' hard_sigmoid), truncated backpropagation.
KERAS_CELLS = {"rnn": "simple_rnn", "lstm": "keras_lstm", "gru": "keras_gru"}


class RecurrentNet(RecurrentState, nn.Module):
    # Keys only some cells use (nnlab.schema refuses them on the others); their defaults are
    # null so that "set" and "not set" differ, and null means the value in __init__.
    schema_applies = {
        "inner_activation": (
            "cell",
            ("lstm", "gru", "jzs1", "jzs2", "jzs3", "simple_deep_rnn", "keras_lstm", "keras_gru"),
        ),
        "depth": ("cell", ("deep_rnn", "simple_deep_rnn")),
        "forget_bias": ("cell", ("lstm", "keras_lstm")),
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
        init: Initializer = "default",
        inner_init: Initializer = "default",
        activation: Activation | None = None,
        truncate_gradient: PositiveInt | None = None,
        stateful: bool = False,
        initial_state: Literal["zeros", "learned"] = "zeros",
    ):
        super().__init__()
        nonlinearity = nonlinearity or "tanh"
        inner_activation = inner_activation or "sigmoid"
        depth = 3 if depth is None else depth
        forget_bias = 1.0 if forget_bias is None else forget_bias
        init, inner_init = init or "default", inner_init or "default"
        if return_sequences is not None:
            readout = keras_readout(return_sequences, num_layers, readout)
        if activation is not None:  # Keras' name for the nonlinearity
            if nonlinearity not in ("tanh", activation):
                raise ConfigError(
                    "model.activation",
                    f"{activation!r} and model.nonlinearity {nonlinearity!r} name the same "
                    "thing; set one of them",
                )
            nonlinearity = activation
        if cell == "deep_rnn" and nonlinearity not in ("tanh", "relu"):
            raise ConfigError("model.nonlinearity", f"must be tanh or relu, got {nonlinearity!r}")
        init, inner_init = check(init, "model.init"), check(inner_init, "model.inner_init")
        cell = keras_cell(cell, nonlinearity, inner_activation, truncate_gradient)
        forget_bias = FORGET_BIAS.get(forget_bias, forget_bias)
        self.cell, self.readout, self.bidirectional = cell, readout, bidirectional
        self.rnn = make_rnn(
            cell, input_size, hidden_size, num_layers, bidirectional, dropout,
            nonlinearity, forget_bias, depth,
            inner_activation=inner_activation, init=init, inner_init=inner_init,
            truncate_gradient=truncate_gradient,
        )  # fmt: skip
        self.head = nn.Linear(hidden_size * (2 if bidirectional else 1), output_size)
        init_module(self.head, init, key="model.init")  # Keras' Dense on top
        rows = num_layers * (2 if bidirectional else 1)
        self.init_state(stateful, initial_state, rows, state_sizes(self.rnn))

    def encode(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, steps, features) -> (batch, hidden * directions), or (batch, steps, ...)
        for readout `all`; `lengths` the true lengths of zero-padded sequences."""
        if x.dim() == 2:
            x = x.unsqueeze(-1)
        if lengths is not None:
            lengths = lengths.clamp(min=1, max=x.shape[1])
        h0 = self.start_state(x.shape[0], x.device)
        outputs, state, end = run_rnn(self.rnn, x, lengths, h0)
        self.keep(end)  # stateful: the next batch's rows continue from here
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


def keras_cell(
    cell: str, nonlinearity: str, inner_activation: str, truncate_gradient: int | None
) -> str:
    """`cell`, or nnlab's cell of the same math where torch's fused one cannot do what is
    asked: an activation other than tanh (relu too for rnn), gates other than sigmoid, or
    truncated backpropagation."""
    if cell not in TORCH_CELLS:
        return cell
    keras_only = (
        nonlinearity not in (("tanh", "relu") if cell == "rnn" else ("tanh",))
        or (inner_activation != "sigmoid" and cell != "rnn")
        or truncate_gradient is not None
    )
    return KERAS_CELLS[cell] if keras_only else cell


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
    truncate_gradient: int | None = None,
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
    else:
        gates = {"inner_activation": inner_activation, "nonlinearity": nonlinearity}
        kwargs = {
            "deep_rnn": {"depth": depth, "nonlinearity": nonlinearity},
            "simple_rnn": {"nonlinearity": nonlinearity},
            "simple_deep_rnn": {"depth": depth, **gates},
            "keras_lstm": {**gates, "forget_bias": forget_bias},
        }.get(cell, gates)
        rnn = CellStack(
            cell, input_size, hidden_size, **common, truncate_gradient=truncate_gradient, **kwargs
        )
    # Keras' initialisers (torch's cells: each gate's block; nnlab's: in place of their own)
    init_module(rnn, init, inner_init)
    if cell == "lstm":
        init_forget_bias(rnn, forget_bias)
    elif cell == "keras_lstm" and (init, inner_init) != ("torch", "torch"):
        for c in rnn.cells:  # the initialiser zeroed the biases; the forget gate opens again
            with torch.no_grad():
                c.b[c.hidden_size : 2 * c.hidden_size] = float(forget_bias)
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
