"""A recurrent language model: Embedding -> RNN / LSTM / GRU (`make_rnn`, as RecurrentNet) ->
one Linear head per step (RecurrentNet's `readout: all`) giving the next token's logits.

`forward(ids)` -> logits (batch, steps, vocab_size), from a zero state; `step(ids, state)` ->
(logits, state) continues from a given state: truncated backpropagation through time carries it
from batch to batch, generation feeds one token at a time.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from nnlab.models.recurrent import RecurrentNet
from nnlab.schema import PositiveInt, Rate

State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class RecurrentLanguageModel(RecurrentNet):
    # a language model reads left to right, one output a step, sized by its vocabulary
    schema_excluded_keys = (
        "bidirectional",
        "readout",
        "return_sequences",
        "input_size",
        "output_size",
        # its own carried state: truncated backpropagation through time (data.tbptt)
        "stateful",
        "initial_state",
    )

    def __init__(
        self,
        vocab_size: PositiveInt,
        embedding_dim: PositiveInt = 64,
        # torch's cells only: nnlab's own cells start every sequence from zero
        cell: Literal["rnn", "lstm", "gru"] = "lstm",
        hidden_size: PositiveInt = 256,
        num_layers: PositiveInt = 1,
        dropout: Rate = 0.0,
        **keras_options,  # forget_bias, init, inner_init, nonlinearity (see RecurrentNet)
    ):
        super().__init__(
            input_size=embedding_dim,
            output_size=vocab_size,
            cell=cell,
            hidden_size=hidden_size,
            num_layers=num_layers,
            dropout=dropout,
            readout="all",
            **keras_options,
        )
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.drop = nn.Dropout(dropout)

    def step(self, ids: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Logits (batch, steps, vocab) for `ids` (batch, steps), and the state after them."""
        outputs, state = self.rnn(self.drop(self.embedding(ids)), state)
        return self.head(self.drop(outputs)), state

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.step(ids)[0]
