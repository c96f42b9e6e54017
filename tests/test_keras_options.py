"""Old-Keras recurrent options: SimpleRNN activations (sigmoid too), hard_sigmoid gates,
SimpleDeepRNN (lookback) beside the deep-transition cell, Keras initialisers for torch cells,
and the reference sine RNN preset."""

from __future__ import annotations

import pytest
import torch

from nnlab.errors import ConfigError
from nnlab.models.cells import JZS3Cell, SimpleDeepRNNCell, SimpleRNNCell, hard_sigmoid
from nnlab.models.recurrent import RecurrentNet
from nnlab.schema import check_node


def test_hard_sigmoid_is_old_keras_not_torch():
    x = torch.tensor([-5.0, -1.0, 0.0, 1.0, 5.0])
    assert torch.allclose(hard_sigmoid(x), torch.tensor([0.0, 0.3, 0.5, 0.7, 1.0]))


@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid", "hard_sigmoid"])
def test_simple_rnn_step_by_hand(activation):
    torch.manual_seed(0)
    cell = SimpleRNNCell(3, 4, nonlinearity=activation)
    x, h = torch.randn(2, 3), torch.randn(2, 4)
    f = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid}.get(
        activation, hard_sigmoid
    )
    assert torch.allclose(cell(x, h), f(x @ cell.W + cell.b + h @ cell.U))


def test_rnn_with_sigmoid_runs_the_plain_cell_and_bad_names_are_refused():
    net = RecurrentNet(2, 1, cell="rnn", nonlinearity="sigmoid", hidden_size=3)
    assert net.cell == "simple_rnn" and isinstance(net.rnn.cells[0], SimpleRNNCell)
    assert net(torch.randn(2, 5, 2)).shape == (2, 1)
    net = {"_target_": "nnlab.models.recurrent.RecurrentNet", "input_size": 2, "output_size": 1}
    for key, bad in (
        ("nonlinearity", {"cell": "rnn", "nonlinearity": "softsign"}),
        ("inner_activation", {"cell": "jzs1", "inner_activation": "tanh"}),
        ("init", {"cell": "lstm", "init": "he_sideways"}),
        ("forget_bias", {"cell": "lstm", "forget_bias": "two"}),
    ):  # the schema refuses them before anything is built (nnlab.schema)
        with pytest.raises(ConfigError, match=f"model.{key}"):
            check_node({**net, **bad}, "model")


def test_simple_deep_rnn_looks_depth_states_back():
    """h_t = f(W x_t + b + sum_k g(U_k h_{t-k})), k = 1..3, unrolled by hand over 5 steps."""
    torch.manual_seed(0)
    cell = SimpleDeepRNNCell(2, 3, depth=3, nonlinearity="tanh", inner_activation="hard_sigmoid")
    xs = torch.randn(1, 5, 2)
    past = [torch.zeros(1, 3)] * 3  # h_{t-1}, h_{t-2}, h_{t-3}
    expected = []
    for t in range(5):
        h = torch.tanh(
            xs[:, t] @ cell.W
            + cell.b
            + sum(hard_sigmoid(p @ u) for p, u in zip(past, cell.U, strict=True))
        )
        past = [h, *past[:-1]]
        expected.append(h)
    net = RecurrentNet(
        2, 1, cell="simple_deep_rnn", hidden_size=3, readout="all", inner_activation="hard_sigmoid"
    )
    net.rnn.cells[0] = cell
    states = net.encode(xs)
    assert torch.allclose(states, torch.stack(expected, dim=1), atol=1e-6)


def test_the_two_deep_rnns_differ():
    a = RecurrentNet(2, 1, cell="deep_rnn", hidden_size=3)
    b = RecurrentNet(2, 1, cell="simple_deep_rnn", hidden_size=3)
    assert type(a.rnn.cells[0]).__name__ == "DeepTransitionRNNCell"
    assert type(b.rnn.cells[0]).__name__ == "SimpleDeepRNNCell"


def test_hard_sigmoid_gates_in_the_jzs_cells():
    torch.manual_seed(0)
    cell = JZS3Cell(3, 4, inner_activation="hard_sigmoid")
    x, h = torch.randn(2, 3), torch.randn(2, 4)
    xz, xr, xh = cell.project(x).chunk(3, dim=-1)
    z = hard_sigmoid(xz + torch.tanh(h) @ cell.U_z)
    r = hard_sigmoid(xr + h @ cell.U_r)
    expected = torch.tanh(xh + (r * h) @ cell.U_h) * z + h * (1 - z)
    assert torch.allclose(cell(x, h), expected)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_keras_initialisers_for_torch_cells(cell):
    torch.manual_seed(0)
    net = RecurrentNet(
        5,
        1,
        cell=cell,
        hidden_size=8,
        init="glorot_uniform",
        inner_init="orthogonal",
        forget_bias="one",
    )
    rnn, H = net.rnn, 8
    for block in rnn.weight_hh_l0.split(H):
        assert torch.allclose(block @ block.T, torch.eye(H), atol=1e-5)
    bound = (6 / (5 + H)) ** 0.5  # Glorot-uniform of each gate's (H, 5) block
    assert rnn.weight_ih_l0.abs().max() <= bound
    assert rnn.weight_ih_l0.abs().max() > 0.8 * bound
    biases = rnn.bias_ih_l0.clone()
    if cell == "lstm":  # gates i, f, g, o: the forget gate starts at one
        assert (biases[H : 2 * H] == 1).all()
        biases[H : 2 * H] = 0
    assert (biases == 0).all() and (rnn.bias_hh_l0 == 0).all()


def test_the_sine_rnn_preset_is_the_reference_shape(make_cfg):
    cfg = make_cfg("experiment=sine_rnn")
    assert cfg.data.window == 4 and cfg.model.cell == "rnn" and cfg.model.readout == "last"
    from nnlab.config import build

    task = build(cfg.task, "task", net=cfg.model, _recursive_=False)
    assert isinstance(task.net.rnn, torch.nn.RNN)
    x = torch.randn(3, 4)
    out, _ = task.net.rnn(x.unsqueeze(-1))
    assert torch.allclose(task(x), task.net.head(out[:, -1]))  # out[:, -1] as the reference


@pytest.mark.slow
def test_sine_rnn_reaches_its_bound(cli):
    assert cli("experiment=sine_rnn", "logger=none").metrics()["test/mse"] <= 0.065
