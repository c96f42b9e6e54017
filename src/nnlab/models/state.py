"""Where a recurrent encoder starts, for every network that has one: Keras' `stateful=True`
and a learned initial state (`initial_state: zeros | learned`).

`RecurrentState` is mixed into the modules that run a recurrent encoder (model=recurrent's
RecurrentNet, the text classifier's RecurrentTextClassifier, a layer list's or graph node's
recurrent layer): `start_state(batch)` is the state a batch starts from (the one carried from
the batch before when stateful, the learned one, or None: zeros), `keep(end)` carries a batch's
final state to the next one. The task (nnlab/tasks/base.py) finds every module whose `stateful`
is true, resets their carried states where training's epochs and evaluations start and saves
training's in mid-epoch checkpoints; engine/capabilities.py refuses stateful networks for CUDA
graphs and packed trials (and learned starts, `initial_h`, for packed trials).

`run_rnn` runs either kind of encoder, torch's nn.RNN / LSTM / GRU or nnlab's CellStack, from a
given start state, on padded sequences with lengths or on whole ones.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nnlab.models.cells import CellStack

State = Any  # one tensor (layers * directions, batch, size), or torch's LSTM's (h, c)


class RecurrentState:
    """Keras' stateful / initial_state for an nn.Module that runs one recurrent encoder."""

    stateful: bool = False

    def init_state(
        self,
        stateful: bool,
        initial_state: str,
        rows: int,
        sizes: tuple[int, ...],
        key: str = "model",
    ) -> None:
        """`rows`: layers * directions; `sizes`: the state's parts as the encoder takes them
        (torch's LSTM: h and c; any other: one tensor of the cell's whole state); `key`: the
        config key of the layer, for errors (`model`, `model.layers[1]`)."""
        self.stateful, self.state_key = bool(stateful), key
        self.carried: dict[bool, State] = {}  # training? -> the state the next batch starts from
        if initial_state == "learned":  # (rows, 1, size) expanded to the batch
            self.initial_h = nn.Parameter(torch.zeros(rows, 1, sizes[0]))
            if len(sizes) > 1:
                self.initial_c = nn.Parameter(torch.zeros(rows, 1, sizes[1]))

    def start_state(self, batch: int, device: torch.device | None = None) -> State | None:
        """The state a batch of `batch` sequences starts from: the one carried from the batch
        before (stateful), the learned one, or None (zeros)."""
        carried = self.carried.get(self.training) if self.carries() else None
        if carried is not None:
            first = carried[0] if isinstance(carried, tuple) else carried
            if batch > first.shape[1]:
                raise ValueError(
                    f"{self.state_key}.stateful: a batch of {batch} sequences after one of "
                    f"{first.shape[1]}; stateful training needs batches of one size (a shorter "
                    "last batch is fine)"
                )
            if isinstance(carried, tuple):  # (one read from a checkpoint is on the CPU)
                return tuple(c[:, :batch].to(device).contiguous() for c in carried)
            return carried[:, :batch].to(device).contiguous()
        if not hasattr(self, "initial_h"):
            return None
        h = self.initial_h.expand(-1, batch, -1).contiguous()
        if hasattr(self, "initial_c"):
            return h, self.initial_c.expand(-1, batch, -1).contiguous()
        return h

    def carries(self) -> bool:
        """Stateful, and not being traced (a TensorBoard graph, an ONNX export: the network as
        one call from its initial state)."""
        return self.stateful and not (torch.jit.is_tracing() or torch.compiler.is_exporting())

    def keep(self, end: State) -> None:
        """Carry `end` (the batch's final state) to the next batch's rows; no gradient across."""
        if self.carries():
            detached = tuple(e.detach() for e in end) if isinstance(end, tuple) else end.detach()
            self.carried[self.training] = detached

    def reset_states(self, training: bool | None = None) -> None:
        """Forget the carried state (Keras' reset_states): training's, evaluation's or both."""
        if training is None:
            self.carried.clear()
        else:
            self.carried.pop(training, None)


def state_sizes(rnn: nn.Module) -> tuple[int, ...]:
    """The parts of `rnn`'s state as it takes one: torch's LSTM (h, c), another torch cell h,
    nnlab's cells their whole state (CellStack.state_size)."""
    if isinstance(rnn, nn.LSTM):
        return rnn.hidden_size, rnn.hidden_size
    if isinstance(rnn, nn.RNNBase):
        return (rnn.hidden_size,)
    return (rnn.state_size,)


def run_rnn(
    rnn: nn.Module,
    x: torch.Tensor,
    lengths: torch.Tensor | None = None,
    h0: State | None = None,
    total_length: int | None = None,
) -> tuple[torch.Tensor, State, State]:
    """(outputs (batch, steps, hidden * directions), h_n as torch's nn.RNN returns it, the
    whole state at the end) of `rnn` (batch-first) from `h0` (None: zeros). With `lengths`,
    padded steps are never read (torch's cells on packed sequences; nnlab's hold their state)
    and outputs there are zero; `total_length`: the padded outputs' steps (default x's)."""
    start = () if h0 is None else (h0,)  # (packed trials' layers take no state)
    if isinstance(rnn, CellStack):
        return rnn.run(x, lengths, h0)
    # torch's cells, or what stands in for them (packed trials' TrialRNN)
    if lengths is None:
        outputs, state = rnn(x, *start)
        return outputs, state, state
    packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
    packed_out, state = rnn(packed, *start)
    steps = x.shape[1] if total_length is None else total_length
    outputs, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=steps)
    return outputs, state, state
