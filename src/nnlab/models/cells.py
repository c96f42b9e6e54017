"""Recurrent cells no modern library ships: the old-Keras family, in plain PyTorch.

- `DeepTransitionRNNCell` (`cell: deep_rnn`): a SimpleRNN whose step is `depth` layers deep
  (a "deep transition" RNN, Pascanu et al. 2014), the old Keras SimpleDeepRNN's
  "K-layer-deep network at each time step":
      s_1 = f(W x_t + U h_{t-1} + b_1),   s_k = f(S_k s_{k-1} + b_k) (k = 2..depth),   h_t = s_depth
  (The first Keras SimpleDeepRNN used `depth` for a lookback of several past states instead;
  this follows the "several inner transitions per step" reading.)
- `SimpleDeepRNNCell` (`cell: simple_deep_rnn`): the SimpleDeepRNN as the old Keras docs wrote
  it, a SimpleRNN that looks `depth` states back:
      h_t = f(W x_t + b + sum_{k=1..depth} g(U_k h_{t-k}))
  f the activation (`nonlinearity`), g the `inner_activation`; its state is the last `depth`
  h's, its output h_t.
- `SimpleRNNCell` (`cell: simple_rnn`, also `cell: rnn` with a sigmoid / hard_sigmoid
  activation, which torch's nn.RNN lacks): h_t = f(W x_t + U h_{t-1} + b), Keras' SimpleRNN.
- `JZS1Cell`, `JZS2Cell`, `JZS3Cell` (`cell: jzs1 | jzs2 | jzs3`): MUT1, MUT2, MUT3 of
  Jozefowicz, Zaremba, Sutskever (2015), "An Empirical Exploration of Recurrent Network
  Architectures", as old Keras wrote them (`keras/layers/recurrent.py` JZS1-3):

  MUT1: z = sigm(W_xz x + b_z)
        r = sigm(W_xr x + W_hr h + b_r)
        h' = tanh(W_hh (r * h) + tanh(x P) + b_h) * z + h * (1 - z)
  MUT2: z = sigm(W_xz x + W_hz h + b_z)
        r = sigm(x P + W_hr h + b_r)
        h' = tanh(W_hh (r * h) + W_xh x + b_h) * z + h * (1 - z)
  MUT3: z = sigm(W_xz x + W_hz tanh(h) + b_z)
        r = sigm(W_xr x + W_hr h + b_r)
        h' = tanh(W_hh (r * h) + W_xh x + b_h) * z + h * (1 - z)

  The paper's bare `x` (MUT1's tanh(x), MUT2's reset gate) needs input size = hidden size; old
  Keras multiplies by a matrix P instead, the identity when the sizes match and otherwise a
  random sign matrix scaled by 1/sqrt(input size), and trains it with the rest. So do we.

The gates (z, r) use `inner_activation`: `sigmoid`, or old Keras' default `hard_sigmoid`
(clip(0.2 x + 0.5, 0, 1), cheaper and piecewise linear; not torch's hardsigmoid, x / 6 + 0.5).

Every cell splits its step in two: `project(x)` applies the input weights (to a whole sequence at
once, one matrix product), `step(projected_x_t, h)` the recurrence; `cell(x_t, h)` does both.
Initialisation as old Keras: Glorot-uniform input weights, orthogonal recurrent weights, zero
biases. `CellStack` runs cells over time, stacked and optionally bidirectional, and returns what
torch's nn.RNN returns, so `RecurrentNet` reads both the same way.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nnlab.errors import ConfigError, require_positive


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """Old Keras' (Theano's) hard sigmoid: clip(0.2 x + 0.5, 0, 1)."""
    return (0.2 * x + 0.5).clamp(0.0, 1.0)


NONLINEARITIES = {"tanh": torch.tanh, "relu": torch.relu}
ACTIVATIONS = {**NONLINEARITIES, "sigmoid": torch.sigmoid, "hard_sigmoid": hard_sigmoid}
GATES = {"sigmoid": torch.sigmoid, "hard_sigmoid": hard_sigmoid}


def pick(table: dict, key: str, value: str):
    if value not in table:
        raise ConfigError(key, f"must be one of {', '.join(table)}, got {value!r}")
    return table[value]


class RecurrentCell(nn.Module):
    """One step of a recurrence with a single state vector h of `hidden_size`."""

    def __init__(self, input_size: int, hidden_size: int, inner_activation: str = "sigmoid"):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.state_size = hidden_size  # what step() carries; output() reads h_t from it
        self.gate = pick(GATES, "model.inner_activation", inner_activation)

    def output(self, state: torch.Tensor) -> torch.Tensor:
        return state

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """The input-side terms of a step, for x (..., input_size)."""
        raise NotImplementedError

    def step(self, xp: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """h_t from the projected input of step t and h_{t-1}."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        if h is None:
            h = x.new_zeros(x.shape[0], self.state_size)
        return self.step(self.project(x), h)

    def reset_parameters(self) -> None:
        """Glorot-uniform input weights (`W*`), orthogonal recurrent ones (`U*`), zero biases."""
        with torch.no_grad():
            for name, param in self.named_parameters():
                if name.startswith("W"):  # each gate's block on its own, as Keras' separate W_*
                    for block in param.split(self.hidden_size, dim=-1):
                        nn.init.xavier_uniform_(block)
                elif name.startswith("U"):  # each gate's (H, H) block, as Keras' U_*
                    for block in param.split(self.hidden_size, dim=-1):
                        nn.init.orthogonal_(block)
                elif name.startswith("b"):
                    nn.init.zeros_(param)


def sign_projection(input_size: int, hidden_size: int) -> torch.Tensor:
    """Old Keras' P: the identity for equal sizes, else random +-1/sqrt(input_size) entries."""
    if input_size == hidden_size:
        return torch.eye(hidden_size)
    signs = torch.randint(0, 2, (input_size, hidden_size)).float() * 2 - 1
    return signs / math.sqrt(input_size)


class DeepTransitionRNNCell(RecurrentCell):
    def __init__(
        self, input_size: int, hidden_size: int, depth: int = 3, nonlinearity: str = "tanh"
    ):
        super().__init__(input_size, hidden_size)
        require_positive("model.depth", depth)
        if nonlinearity not in NONLINEARITIES:
            raise ConfigError("model.nonlinearity", f"must be tanh or relu, got {nonlinearity!r}")
        self.depth, self.nonlinearity = int(depth), nonlinearity
        self.act = NONLINEARITIES[nonlinearity]
        self.W = nn.Parameter(torch.empty(input_size, hidden_size))
        self.U = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.b = nn.Parameter(torch.empty(hidden_size))
        # The inner transitions s_{k-1} -> s_k, k = 2..depth (recurrent-like: orthogonal init).
        self.U_inner = nn.ParameterList(
            nn.Parameter(torch.empty(hidden_size, hidden_size)) for _ in range(self.depth - 1)
        )
        self.b_inner = nn.ParameterList(
            nn.Parameter(torch.empty(hidden_size)) for _ in range(self.depth - 1)
        )
        self.reset_parameters()

    def project(self, x):
        return x @ self.W + self.b

    def step(self, xp, h):
        s = self.act(xp + h @ self.U)
        for weight, bias in zip(self.U_inner, self.b_inner, strict=True):
            s = self.act(s @ weight + bias)
        return s


class JZS1Cell(RecurrentCell):
    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        inner_activation: str = "sigmoid",
        nonlinearity: str = "tanh",
    ):
        super().__init__(input_size, hidden_size, inner_activation)
        self.act = pick(ACTIVATIONS, "model.nonlinearity", nonlinearity)  # the candidate's
        H = hidden_size
        self.W_zr = nn.Parameter(torch.empty(input_size, 2 * H))  # [W_xz | W_xr]
        self.b_zr = nn.Parameter(torch.empty(2 * H))
        self.U_r = nn.Parameter(torch.empty(H, H))
        self.U_h = nn.Parameter(torch.empty(H, H))
        self.b_h = nn.Parameter(torch.empty(H))
        self.P = nn.Parameter(sign_projection(input_size, H))
        self.reset_parameters()

    def project(self, x):
        return torch.cat([x @ self.W_zr + self.b_zr, torch.tanh(x @ self.P) + self.b_h], dim=-1)

    def step(self, xp, h):
        xz, xr, xh = xp.chunk(3, dim=-1)
        z = self.gate(xz)
        r = self.gate(xr + h @ self.U_r)
        candidate = self.act(xh + (r * h) @ self.U_h)
        return candidate * z + h * (1 - z)


class JZS2Cell(RecurrentCell):
    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        inner_activation: str = "sigmoid",
        nonlinearity: str = "tanh",
    ):
        super().__init__(input_size, hidden_size, inner_activation)
        self.act = pick(ACTIVATIONS, "model.nonlinearity", nonlinearity)  # the candidate's
        H = hidden_size
        self.W_zh = nn.Parameter(torch.empty(input_size, 2 * H))  # [W_xz | W_xh]
        self.b_z = nn.Parameter(torch.empty(H))
        self.b_r = nn.Parameter(torch.empty(H))
        self.b_h = nn.Parameter(torch.empty(H))
        self.U_z = nn.Parameter(torch.empty(H, H))
        self.U_r = nn.Parameter(torch.empty(H, H))
        self.U_h = nn.Parameter(torch.empty(H, H))
        self.P = nn.Parameter(sign_projection(input_size, H))
        self.reset_parameters()

    def project(self, x):
        xz, xh = (x @ self.W_zh).chunk(2, dim=-1)
        return torch.cat([xz + self.b_z, x @ self.P + self.b_r, xh + self.b_h], dim=-1)

    def step(self, xp, h):
        xz, xr, xh = xp.chunk(3, dim=-1)
        z = self.gate(xz + h @ self.U_z)
        r = self.gate(xr + h @ self.U_r)
        candidate = self.act(xh + (r * h) @ self.U_h)
        return candidate * z + h * (1 - z)


class JZS3Cell(RecurrentCell):
    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        inner_activation: str = "sigmoid",
        nonlinearity: str = "tanh",
    ):
        super().__init__(input_size, hidden_size, inner_activation)
        self.act = pick(ACTIVATIONS, "model.nonlinearity", nonlinearity)  # the candidate's
        H = hidden_size
        self.W = nn.Parameter(torch.empty(input_size, 3 * H))  # [W_xz | W_xr | W_xh]
        self.b = nn.Parameter(torch.empty(3 * H))  # [b_z | b_r | b_h]
        self.U_z = nn.Parameter(torch.empty(H, H))
        self.U_r = nn.Parameter(torch.empty(H, H))
        self.U_h = nn.Parameter(torch.empty(H, H))
        self.reset_parameters()

    def project(self, x):
        return x @ self.W + self.b

    def step(self, xp, h):
        xz, xr, xh = xp.chunk(3, dim=-1)
        z = self.gate(xz + torch.tanh(h) @ self.U_z)
        r = self.gate(xr + h @ self.U_r)
        candidate = self.act(xh + (r * h) @ self.U_h)
        return candidate * z + h * (1 - z)


class SimpleRNNCell(RecurrentCell):
    def __init__(self, input_size: int, hidden_size: int, nonlinearity: str = "tanh"):
        super().__init__(input_size, hidden_size)
        self.act = pick(ACTIVATIONS, "model.nonlinearity", nonlinearity)
        self.W = nn.Parameter(torch.empty(input_size, hidden_size))
        self.U = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.b = nn.Parameter(torch.empty(hidden_size))
        self.reset_parameters()

    def project(self, x):
        return x @ self.W + self.b

    def step(self, xp, h):
        return self.act(xp + h @ self.U)


class SimpleDeepRNNCell(RecurrentCell):
    """State: [h_{t-1} | h_{t-2} | ... | h_{t-depth}] (batch, depth * hidden)."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        depth: int = 3,
        nonlinearity: str = "tanh",
        inner_activation: str = "hard_sigmoid",
    ):
        super().__init__(input_size, hidden_size, inner_activation)
        require_positive("model.depth", depth)
        self.depth, self.state_size = int(depth), int(depth) * hidden_size
        self.act = pick(ACTIVATIONS, "model.nonlinearity", nonlinearity)
        self.inner = pick(ACTIVATIONS, "model.inner_activation", inner_activation)
        self.W = nn.Parameter(torch.empty(input_size, hidden_size))
        self.b = nn.Parameter(torch.empty(hidden_size))
        self.U = nn.ParameterList(
            nn.Parameter(torch.empty(hidden_size, hidden_size)) for _ in range(self.depth)
        )
        self.reset_parameters()

    def output(self, state):
        return state[..., : self.hidden_size]

    def project(self, x):
        return x @ self.W + self.b

    def step(self, xp, state):
        past = state.split(self.hidden_size, dim=-1)  # h_{t-1}, ..., h_{t-depth}
        h = self.act(xp + sum(self.inner(p @ u) for p, u in zip(past, self.U, strict=True)))
        return torch.cat([h, *past[:-1]], dim=-1)


class KerasLSTMCell(RecurrentCell):
    """Keras' LSTM with any `activation` (`nonlinearity`) and `inner_activation` (gates):
        i = g(x W_i + h U_i + b_i)   f = g(x W_f + h U_f + b_f)   o = g(x W_o + h U_o + b_o)
        c' = f * c + i * act(x W_c + h U_c + b_c)                 h' = o * act(c')
    (torch's fused nn.LSTM has sigmoid gates and tanh only.) State: [h | c]."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        inner_activation: str = "sigmoid",
        nonlinearity: str = "tanh",
        forget_bias: float = 1.0,
    ):
        super().__init__(input_size, hidden_size, inner_activation)
        self.act = pick(ACTIVATIONS, "model.nonlinearity", nonlinearity)
        self.state_size = 2 * hidden_size
        H = hidden_size
        self.W = nn.Parameter(torch.empty(input_size, 4 * H))  # [W_i | W_f | W_c | W_o]
        self.U = nn.Parameter(torch.empty(H, 4 * H))
        self.b = nn.Parameter(torch.empty(4 * H))
        self.reset_parameters()
        with torch.no_grad():  # Keras' forget_bias_init ("one"): the forget gate starts open
            self.b[H : 2 * H] = float(forget_bias)

    def output(self, state):
        return state[..., : self.hidden_size]

    def project(self, x):
        return x @ self.W + self.b

    def step(self, xp, state):
        h, c = state.chunk(2, dim=-1)
        i, f, g, o = (xp + h @ self.U).chunk(4, dim=-1)
        c = self.gate(f) * c + self.gate(i) * self.act(g)
        return torch.cat([self.gate(o) * self.act(c), c], dim=-1)


class KerasGRUCell(RecurrentCell):
    """Keras' GRU (reset before the recurrent product, Keras 2's reset_after=False) with any
    `activation` and `inner_activation`:
        z = g(x W_z + h U_z + b_z)   r = g(x W_r + h U_r + b_r)
        h~ = act(x W_h + (r * h) U_h + b_h)   h' = z * h + (1 - z) * h~"""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        inner_activation: str = "sigmoid",
        nonlinearity: str = "tanh",
    ):
        super().__init__(input_size, hidden_size, inner_activation)
        self.act = pick(ACTIVATIONS, "model.nonlinearity", nonlinearity)
        H = hidden_size
        self.W = nn.Parameter(torch.empty(input_size, 3 * H))  # [W_z | W_r | W_h]
        self.U_zr = nn.Parameter(torch.empty(H, 2 * H))
        self.U_h = nn.Parameter(torch.empty(H, H))
        self.b = nn.Parameter(torch.empty(3 * H))
        self.reset_parameters()

    def project(self, x):
        return x @ self.W + self.b

    def step(self, xp, h):
        xz, xr, xh = xp.chunk(3, dim=-1)
        hz, hr = (h @ self.U_zr).chunk(2, dim=-1)
        z, r = self.gate(xz + hz), self.gate(xr + hr)
        return z * h + (1 - z) * self.act(xh + (r * h) @ self.U_h)


CELLS = {
    "deep_rnn": DeepTransitionRNNCell,
    "jzs1": JZS1Cell,
    "jzs2": JZS2Cell,
    "jzs3": JZS3Cell,
    "keras_gru": KerasGRUCell,
    "keras_lstm": KerasLSTMCell,
    "simple_rnn": SimpleRNNCell,
    "simple_deep_rnn": SimpleDeepRNNCell,
}


def step_mask(lengths: torch.Tensor | None, steps: int) -> torch.Tensor | None:
    """(batch, steps, 1) True at real steps, or None when every step is real."""
    if lengths is None:
        return None
    return (torch.arange(steps, device=lengths.device)[None, :] < lengths[:, None])[..., None]


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Each sequence's real steps in reverse order, padding left where it is (a backward pass
    then starts at each sequence's own last step, never at padding)."""
    if lengths is None:
        return x.flip(1)
    t = torch.arange(x.shape[1], device=x.device)[None, :]
    lengths = lengths.to(x.device)[:, None]
    index = torch.where(t < lengths, lengths - 1 - t, t)
    return x.gather(1, index[..., None].expand_as(x))


def run_cell(
    cell: RecurrentCell,
    x: torch.Tensor,
    lengths: torch.Tensor | None = None,
    truncate: int | None = None,
    h0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, steps, features) -> (every step's output (batch, steps, hidden), the state at the
    end (batch, state_size)), from `h0` (None: zeros).
    With `lengths`, a sequence's state stops changing after its last real step (so the last
    column holds each sequence's final real state) and padded steps read no input.

    `truncate` k (old Keras' / Theano's truncate_gradient): gradients flow through the last k
    steps only; the steps before run without a graph (their outputs and the state they hand
    on are constants), so nothing earlier in the sequence gets a gradient. The values are
    those of the full pass."""
    steps = x.shape[1]
    cut = max(steps - truncate, 0) if truncate else 0
    mask = step_mask(lengths, steps)
    h = x.new_zeros(x.shape[0], cell.state_size) if h0 is None else h0
    states = []
    for start, end in ((0, cut), (cut, steps)):
        if start == end:
            continue
        with torch.set_grad_enabled(torch.is_grad_enabled() and start >= cut):
            projected = cell.project(x[:, start:end])  # one matrix product for the span
            for t in range(start, end):
                new = cell.step(projected[:, t - start], h)
                h = new if mask is None else torch.where(mask[:, t], new, h)
                states.append(cell.output(h))
    return torch.stack(states, dim=1), h


class CellStack(nn.Module):
    """`num_layers` layers of a cell, each optionally bidirectional, dropout between layers.

    `forward(x)` returns `(outputs, h_n)` as torch's nn.RNN with batch_first=True does: outputs
    (batch, steps, hidden * directions) of the top layer, h_n (layers * directions, batch,
    hidden) with each direction's state at the end of its pass (the backward one at t = 0).
    """

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        truncate_gradient: int | None = None,
        **cell_kwargs,
    ):
        super().__init__()
        self.num_layers, self.directions = num_layers, 2 if bidirectional else 1
        self.cell_name = cell
        self.truncate = truncate_gradient
        self.hidden_size = hidden_size
        self.cells = nn.ModuleList(
            CELLS[cell](
                input_size if layer == 0 else hidden_size * self.directions,
                hidden_size,
                **cell_kwargs,
            )
            for layer in range(num_layers)
            for _ in range(self.directions)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """With `lengths`, padded steps are never read: h_n holds each sequence's state at its
        own last real step (the backward pass starts there) and outputs are zero at padding."""
        outputs, h_n, _ = self.run(x, lengths)
        return outputs, h_n

    @property
    def state_size(self) -> int:
        return self.cells[0].state_size

    def run(
        self, x: torch.Tensor, lengths: torch.Tensor | None = None, h0: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(outputs, h_n, the whole state at the end): as `forward`, from `h0` (layers *
        directions, batch, state_size; None: zeros), the state a next batch may continue from."""
        finals, ends = [], []
        mask = step_mask(lengths, x.shape[1])
        for layer in range(self.num_layers):
            if layer > 0:
                x = self.dropout(x)
            outputs = []
            for direction in range(self.directions):
                index = layer * self.directions + direction
                cell, start = self.cells[index], None if h0 is None else h0[index]
                if direction == 0:
                    states, end = run_cell(cell, x, lengths, self.truncate, start)
                else:  # read each sequence backwards, store the states in forward time order
                    backwards = reverse_padded(x, lengths)
                    states, end = run_cell(cell, backwards, lengths, self.truncate, start)
                finals.append(states[:, -1])
                ends.append(end)
                if direction:
                    states = reverse_padded(states, lengths)
                outputs.append(states if mask is None else states * mask)
            x = torch.cat(outputs, dim=-1)
        return x, torch.stack(finals), torch.stack(ends)
