"""Text classifiers over padded token-id sequences: Embedding + (bi)LSTM/GRU, Embedding + Conv1D.

Both take `(ids, lengths)`: ids (batch, time) padded with 0 at the end, lengths the true
lengths. Padding never changes the output: the recurrent net runs on packed sequences (pads are
never read) and pools only real steps; the convolutional net zeroes the pads' features (a pad
then looks exactly like the convolution's own zero padding) and takes its maximum over real
positions only. Without `lengths` they are taken as the number of non-zero ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import nn

from nnlab.models.init import Initializer, init_module
from nnlab.models.layers import ActivationName
from nnlab.models.layers import activation as make_activation
from nnlab.models.state import RecurrentState, run_rnn, state_sizes
from nnlab.schema import PositiveInt, Rate

PAD = 0
POOLINGS = ("last", "mean", "max")


def _lengths(ids: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    if lengths is None:
        lengths = (ids != PAD).sum(dim=1)
    return lengths.clamp(min=1, max=ids.size(1))


def _mask(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """(batch, steps) True at real positions."""
    return torch.arange(steps, device=lengths.device)[None, :] < lengths[:, None]


def embedding(num_words: int, dim: int, scale: float = 0.05) -> nn.Embedding:
    """Word vectors started small (uniform in +-scale, as Keras does) with a zero pad row: with
    PyTorch's N(0, 1) start, Adam's ~lr-sized steps barely move them and training crawls."""
    layer = nn.Embedding(num_words, dim, padding_idx=PAD)
    with torch.no_grad():
        layer.weight.uniform_(-scale, scale)
        layer.weight[PAD].zero_()
    return layer


class RecurrentTextClassifier(RecurrentState, nn.Module):
    """Embedding -> (bi)LSTM/GRU over the packed sequence -> pooled state -> Dropout -> Linear.

    `pooling`: `last` (the final hidden state of each direction), or `mean` / `max` over the
    top layer's outputs at the real time steps. `stateful` and `initial_state` as
    model=recurrent's (Keras' stateful=True; a learned start state; models/state.py): a stateful
    network reads row i of a batch as the continuation of row i of the batch before.
    """

    CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}

    def __init__(
        self,
        num_words: PositiveInt,
        output_size: PositiveInt = 1,
        embedding_dim: PositiveInt = 64,
        hidden_size: PositiveInt = 64,
        cell: Literal["lstm", "gru"] = "lstm",
        num_layers: PositiveInt = 1,
        bidirectional: bool = True,
        pooling: Literal["last", "mean", "max"] = "last",
        dropout: Rate = 0.0,
        init: Initializer = "torch",
        inner_init: Initializer = "torch",
        stateful: bool = False,
        initial_state: Literal["zeros", "learned"] = "zeros",
    ):
        super().__init__()
        self.pooling = pooling
        self.directions = 2 if bidirectional else 1
        self.embedding = embedding(num_words, embedding_dim)
        self.rnn = self.CELLS[cell](
            embedding_dim,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(hidden_size * self.directions, output_size)
        )
        # Keras' initialisers (models/init.py): `init` for the input weights and the head,
        # `inner_init` for the recurrent ones, as model=recurrent's; the embedding keeps its start
        init_module(self, init, inner_init)
        rows = num_layers * self.directions
        self.init_state(stateful, initial_state, rows, state_sizes(self.rnn))

    def features(self, ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        lengths = _lengths(ids, lengths)
        h0 = self.start_state(ids.shape[0], ids.device)
        padded, state, end = run_rnn(self.rnn, self.embedding(ids), lengths, h0)
        self.keep(end)  # stateful: the next batch's rows continue from here
        if self.pooling == "last":
            h = state[0] if isinstance(state, tuple) else state  # (layers * dirs, batch, hidden)
            return torch.cat(list(h[-self.directions :]), dim=-1)
        mask = _mask(lengths.to(padded.device), padded.size(1))[..., None]
        if self.pooling == "mean":
            return (padded * mask).sum(1) / lengths.to(padded.device)[:, None]
        return padded.masked_fill(~mask, float("-inf")).amax(1)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.classifier(self.features(ids, lengths))


class ConvTextClassifier(nn.Module):
    """Embedding -> [Conv1D ('same') -> activation] per entry of `channels` -> global max
    pooling over the real positions -> Dropout -> Linear."""

    def __init__(
        self,
        num_words: PositiveInt,
        output_size: PositiveInt = 1,
        embedding_dim: PositiveInt = 64,
        channels: Annotated[Sequence[PositiveInt], Field(min_length=1)] = (128,),
        kernel_size: PositiveInt = 5,
        activation: ActivationName = "relu",
        dropout: Rate = 0.0,
        init: Initializer = "torch",
    ):
        super().__init__()
        self.embedding = embedding(num_words, embedding_dim)
        self.convs = nn.ModuleList()
        self.activations = nn.ModuleList()
        width = embedding_dim
        for c in channels:
            self.convs.append(nn.Conv1d(width, c, kernel_size, padding="same"))
            self.activations.append(make_activation(activation))
            width = c
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, output_size))
        init_module(self, init)  # Keras' initialiser of the convs and the head; biases zero

    def features(self, ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        lengths = _lengths(ids, lengths)
        mask = _mask(lengths, ids.size(1))[:, None, :]  # (batch, 1, time)
        x = self.dropout(self.embedding(ids)).transpose(1, 2) * mask  # (batch, emb, time)
        for conv, act in zip(self.convs, self.activations, strict=True):
            x = act(conv(x)) * mask  # pads stay zero, like the convolution's own padding
        return x.masked_fill(~mask, float("-inf")).amax(dim=2)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.classifier(self.features(ids, lengths))
