"""The old-Keras cells: one step against the paper's formulas written out by hand with the
cell's own weights; stacking, bidirectional and dropout through RecurrentNet; the sine CLI."""

from __future__ import annotations

import pytest
import torch

from nnlab.errors import ConfigError
from nnlab.models.cells import (
    CellStack,
    DeepTransitionRNNCell,
    JZS1Cell,
    JZS2Cell,
    JZS3Cell,
    run_cell,
)
from nnlab.models.recurrent import RecurrentNet
from nnlab.schema import check_args

CUSTOM = ["deep_rnn", "jzs1", "jzs2", "jzs3"]
sig, tanh = torch.sigmoid, torch.tanh


def randomise(cell: torch.nn.Module, seed: int = 0) -> None:
    """Non-zero values everywhere (biases start at 0), so every term of a formula counts."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in cell.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def inputs(input_size: int, hidden: int, batch: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, input_size, generator=g), torch.randn(batch, hidden, generator=g)


def test_jzs1_step_by_hand():
    cell = JZS1Cell(input_size=5, hidden_size=4)
    randomise(cell)
    x, h = inputs(5, 4)
    W_xz, W_xr = cell.W_zr[:, :4], cell.W_zr[:, 4:]
    b_z, b_r = cell.b_zr[:4], cell.b_zr[4:]
    z = sig(x @ W_xz + b_z)
    r = sig(x @ W_xr + h @ cell.U_r + b_r)
    expected = tanh((r * h) @ cell.U_h + tanh(x @ cell.P) + cell.b_h) * z + h * (1 - z)
    assert torch.allclose(cell(x, h), expected, atol=1e-6)


def test_jzs2_step_by_hand():
    cell = JZS2Cell(input_size=5, hidden_size=4)
    randomise(cell)
    x, h = inputs(5, 4)
    W_xz, W_xh = cell.W_zh[:, :4], cell.W_zh[:, 4:]
    z = sig(x @ W_xz + h @ cell.U_z + cell.b_z)
    r = sig(x @ cell.P + h @ cell.U_r + cell.b_r)
    expected = tanh((r * h) @ cell.U_h + x @ W_xh + cell.b_h) * z + h * (1 - z)
    assert torch.allclose(cell(x, h), expected, atol=1e-6)


def test_jzs3_step_by_hand():
    cell = JZS3Cell(input_size=5, hidden_size=4)
    randomise(cell)
    x, h = inputs(5, 4)
    W_xz, W_xr, W_xh = cell.W[:, :4], cell.W[:, 4:8], cell.W[:, 8:]
    b_z, b_r, b_h = cell.b[:4], cell.b[4:8], cell.b[8:]
    z = sig(x @ W_xz + tanh(h) @ cell.U_z + b_z)
    r = sig(x @ W_xr + h @ cell.U_r + b_r)
    expected = tanh((r * h) @ cell.U_h + x @ W_xh + b_h) * z + h * (1 - z)
    assert torch.allclose(cell(x, h), expected, atol=1e-6)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_deep_transition_step_by_hand(nonlinearity):
    cell = DeepTransitionRNNCell(input_size=5, hidden_size=4, depth=3, nonlinearity=nonlinearity)
    randomise(cell)
    x, h = inputs(5, 4)
    f = torch.tanh if nonlinearity == "tanh" else torch.relu
    s1 = f(x @ cell.W + h @ cell.U + cell.b)
    s2 = f(s1 @ cell.U_inner[0] + cell.b_inner[0])
    s3 = f(s2 @ cell.U_inner[1] + cell.b_inner[1])
    assert torch.allclose(cell(x, h), s3, atol=1e-6)
    shallow = DeepTransitionRNNCell(5, 4, depth=1)
    randomise(shallow)
    assert torch.allclose(shallow(x, h), tanh(x @ shallow.W + h @ shallow.U + shallow.b))
    with pytest.raises(ConfigError, match="model.depth"):
        DeepTransitionRNNCell(5, 4, depth=0)


def test_jzs_projection_follows_old_keras():
    assert torch.equal(JZS1Cell(4, 4).P, torch.eye(4))  # same sizes: the identity
    p = JZS2Cell(9, 4).P
    assert torch.allclose(p.abs(), torch.full((9, 4), 1 / 3))  # else signs / sqrt(input)
    assert p.requires_grad  # trained, as Keras' Pmat


def test_initialisation_orthogonal_recurrent_zero_biases():
    cell = JZS3Cell(6, 8)
    assert torch.allclose(cell.U_h @ cell.U_h.T, torch.eye(8), atol=1e-5)
    assert torch.equal(cell.b, torch.zeros(24))


def test_run_cell_iterates_the_step_from_zero():
    cell = JZS2Cell(3, 5)
    randomise(cell)
    x = torch.randn(2, 7, 3)
    h = torch.zeros(2, 5)
    for t in range(7):
        h = cell(x[:, t], h)
    states, _ = run_cell(cell, x)
    assert states.shape == (2, 7, 5)
    assert torch.allclose(states[:, -1], h, atol=1e-6)


def test_stack_layers_and_directions_by_hand():
    stack = CellStack("jzs1", input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
    for k, cell in enumerate(stack.cells):
        randomise(cell, seed=k)
    x = torch.randn(2, 6, 3)
    forward0 = run_cell(stack.cells[0], x)[0]
    backward0 = run_cell(stack.cells[1], x.flip(1))[0].flip(1)
    layer0 = torch.cat([forward0, backward0], dim=-1)
    forward1 = run_cell(stack.cells[2], layer0)[0]
    backward1 = run_cell(stack.cells[3], layer0.flip(1))[0].flip(1)
    outputs, h_n = stack(x)
    assert torch.allclose(outputs, torch.cat([forward1, backward1], dim=-1), atol=1e-6)
    assert h_n.shape == (4, 2, 4)
    assert torch.allclose(h_n[-2], forward1[:, -1]) and torch.allclose(h_n[-1], backward1[:, 0])
    assert stack.cells[2].input_size == 8  # the second layer reads both directions


@pytest.mark.parametrize("cell", CUSTOM)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("readout", ["last", "mean"])
def test_custom_cells_in_the_recurrent_net(cell, bidirectional, readout):
    net = RecurrentNet(
        input_size=5,
        output_size=3,
        cell=cell,
        hidden_size=7,
        num_layers=2,
        bidirectional=bidirectional,
        readout=readout,
        dropout=0.1,
        depth=2,
    )
    x = torch.randn(4, 9, 5)
    out = net(x)
    assert out.shape == (4, 3)
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    if readout == "last":  # the same convention as torch's modules
        net.eval()  # no dropout: the two passes below see the same weights
        outputs, _ = net.rnn(x)
        expected = (
            torch.cat([outputs[:, -1, :7], outputs[:, 0, 7:]], dim=-1)
            if bidirectional
            else outputs[:, -1]
        )
        assert torch.allclose(net.encode(x), expected, atol=1e-6)


def test_dropout_acts_between_layers_only():
    torch.manual_seed(0)
    x = torch.randn(4, 5, 3)
    deep = RecurrentNet(3, 2, cell="jzs3", hidden_size=16, num_layers=2, dropout=0.5)
    deep.train()
    assert not torch.allclose(deep(x), deep(x))  # a new mask each call
    deep.eval()
    assert torch.allclose(deep(x), deep(x))
    single = RecurrentNet(3, 2, cell="jzs3", hidden_size=16, num_layers=1, dropout=0.5)
    single.train()
    assert torch.allclose(single(x), single(x))  # nothing between layers to drop


def test_custom_cells_read_a_univariate_series():
    for cell in CUSTOM:
        assert RecurrentNet(input_size=1, output_size=2, cell=cell)(torch.randn(4, 16)).shape == (
            4,
            2,
        )


def test_bad_nonlinearity_for_deep_rnn():
    with pytest.raises(ConfigError, match="model.nonlinearity"):
        RecurrentNet(1, 1, cell="deep_rnn", nonlinearity="sigmoid")
    with pytest.raises(ConfigError, match="'deep_rnn', 'jzs1', 'jzs2', 'jzs3'"):
        check_args(RecurrentNet, "model", input_size=1, output_size=1, cell="jzs4")


@pytest.mark.parametrize("cell", CUSTOM)
def test_the_sine_regressor_trains_with_each_custom_cell(cli, cell):
    metrics = cli(f"model.cell={cell}", "debug=limit", "trainer.accelerator=cpu").metrics()
    # standardised series: predicting the mean gives ~1; a blow-up or raw units would not
    assert metrics["test/mse"] < 1.5 and metrics["epochs"] == 2
