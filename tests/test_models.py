"""Model families: output shapes and their documented initialisation."""

import pytest
import torch

from nnlab.errors import ConfigError
from nnlab.models.mlp import MLP
from nnlab.models.recurrent import RecurrentNet
from nnlab.schema import check_args


def test_mlp_reference_shape():
    net = MLP(input_size=4, output_size=1, hidden_sizes=[10])
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(4, 10), (10, 1)]
    assert net(torch.randn(32, 4)).shape == (32, 1)


def test_mlp_options():
    net = MLP(6, 3, hidden_sizes=[8, 8], activation="tanh", dropout=0.5)
    assert sum(isinstance(m, torch.nn.Dropout) for m in net.modules()) == 2
    assert net(torch.randn(2, 6)).shape == (2, 3)
    with pytest.raises(ConfigError, match="model.activation: got 'swishy'; expected one of"):
        check_args(MLP, "model", input_size=4, output_size=1, activation="swishy")


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("readout", ["last", "mean"])
def test_recurrent_shapes(cell, bidirectional, readout):
    net = RecurrentNet(
        input_size=5,
        output_size=3,
        cell=cell,
        hidden_size=7,
        num_layers=2,
        bidirectional=bidirectional,
        readout=readout,
        dropout=0.1,
    )
    assert net(torch.randn(4, 9, 5)).shape == (4, 3)


def test_recurrent_reads_a_univariate_series():
    net = RecurrentNet(input_size=1, output_size=2)
    assert net(torch.randn(4, 16)).shape == (4, 2)


def test_last_readout_is_the_final_hidden_state():
    net = RecurrentNet(input_size=2, output_size=1, cell="gru", hidden_size=4)
    x = torch.randn(3, 6, 2)
    outputs, _ = net.rnn(x)
    assert torch.allclose(net.encode(x), outputs[:, -1])


def test_bidirectional_last_readout_takes_each_direction_at_its_end():
    net = RecurrentNet(input_size=2, output_size=1, cell="rnn", hidden_size=4, bidirectional=True)
    x = torch.randn(3, 6, 2)
    outputs, _ = net.rnn(x)
    expected = torch.cat([outputs[:, -1, :4], outputs[:, 0, 4:]], dim=-1)
    assert torch.allclose(net.encode(x), expected)


def test_lstm_forget_gate_bias_starts_at_one():
    net = RecurrentNet(input_size=2, output_size=1, cell="lstm", hidden_size=4, num_layers=2)
    for layer in range(2):
        b_ih = getattr(net.rnn, f"bias_ih_l{layer}")
        b_hh = getattr(net.rnn, f"bias_hh_l{layer}")
        assert torch.equal(b_ih[4:8] + b_hh[4:8], torch.ones(4))


def test_relu_rnn_and_bad_names():
    net = RecurrentNet(input_size=1, output_size=1, cell="rnn", nonlinearity="relu")
    assert net.rnn.nonlinearity == "relu"
    with pytest.raises(ConfigError, match="model.cell"):
        check_args(RecurrentNet, "model", input_size=1, output_size=1, cell="transformer")
    with pytest.raises(ConfigError, match="model.readout"):
        check_args(RecurrentNet, "model", input_size=1, output_size=1, readout="max")
