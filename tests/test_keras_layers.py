"""Keras fidelity for layers: initialisers (dense, conv, recurrent), the old-Keras recurrent
`activation` / `inner_activation` for every cell (nnlab's cells where torch's fused ones cannot),
and truncate_gradient. Each test checks the computation itself, by hand or against torch."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nnlab.errors import ConfigError
from nnlab.models.cells import KerasGRUCell, KerasLSTMCell, hard_sigmoid
from nnlab.models.init import INITIALIZERS, init_module
from nnlab.models.mlp import MLP
from nnlab.models.recurrent import KERAS_CELLS, RecurrentNet
from nnlab.models.sequential import Sequential
from nnlab.schema import check_node


# -- initialisers ---------------------------------------------------------------------------
def test_glorot_uniform_bounds_for_dense_and_conv():
    torch.manual_seed(0)
    dense = nn.Linear(300, 200)
    init_module(dense, "glorot_uniform")
    bound = math.sqrt(6 / (300 + 200))
    w = dense.weight.detach()
    assert w.abs().max() <= bound and w.abs().max() > 0.99 * bound
    assert abs(float(w.std()) - bound / math.sqrt(3)) < 0.01 * bound  # U(-l, l): std l / sqrt 3
    assert (dense.bias == 0).all()
    conv = nn.Conv2d(16, 32, 5)
    init_module(conv, "glorot_uniform")
    bound = math.sqrt(6 / (16 * 25 + 32 * 25))  # Keras' fans count the receptive field
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.99 * bound


@pytest.mark.parametrize(
    ("name", "std"),
    [
        ("glorot_normal", math.sqrt(2 / (400 + 300))),
        ("he_normal", math.sqrt(2 / 400)),
        ("lecun_normal", math.sqrt(1 / 400)),
        ("he_uniform", math.sqrt(6 / 400) / math.sqrt(3)),
        ("lecun_uniform", math.sqrt(3 / 400) / math.sqrt(3)),
    ],
)
def test_variance_scaling_initialisers(name, std):
    torch.manual_seed(0)
    layer = nn.Linear(400, 300)
    init_module(layer, name)
    w = layer.weight.detach()
    assert abs(float(w.std()) - std) < 0.02 * std, (float(w.std()), std)
    if name.endswith("_normal"):  # truncated at two of the untruncated standard deviations
        assert w.abs().max() <= 2 * std / 0.87962566103423978 + 1e-6


def test_orthogonal_zeros_and_torch():
    torch.manual_seed(0)
    layer = nn.Linear(8, 8)
    init_module(layer, "orthogonal")
    assert torch.allclose(layer.weight @ layer.weight.T, torch.eye(8), atol=1e-5)
    init_module(layer, "zeros")
    assert (layer.weight == 0).all()
    before = nn.Linear(4, 3)
    kept = before.weight.clone(), before.bias.clone()
    init_module(before, "torch")
    assert torch.equal(before.weight, kept[0]) and torch.equal(before.bias, kept[1])
    with pytest.raises(ConfigError, match="model.init: unknown initialiser 'xavier'"):
        init_module(layer, "xavier")


def test_every_initialiser_is_a_model_option():
    for name in INITIALIZERS:
        net = MLP(6, 2, hidden_sizes=[5], init=name)
        assert net(torch.randn(3, 6)).shape == (3, 2)
    torch.manual_seed(0)
    net = MLP(100, 2, hidden_sizes=[50], init="he_uniform")
    first = net.layers[1]
    assert first.weight.abs().max() <= math.sqrt(6 / 100) and (first.bias == 0).all()


def test_layer_lists_take_initialisers_per_layer_and_for_the_model():
    torch.manual_seed(0)
    net = Sequential(
        [
            {"conv1d": {"filters": 4, "kernel": 3, "kernel_initializer": "zeros"}},
            {"lstm": {"units": 6, "return_sequences": True}},
            {"gru": {"units": 5, "init": "he_normal", "inner_init": "zeros"}},
            "dense",
        ],
        input_shape=[10, 3],
        output_size=2,
        init="glorot_uniform",
        inner_init="orthogonal",
    )
    conv, lstm, gru, dense = (
        m for m in net.modules() if type(m).__name__ in ("Conv1D", "LSTM", "GRU", "Linear")
    )
    assert (conv.weight == 0).all()
    for block in lstm.weight_hh_l0.split(6):  # the model's inner_init, gate by gate
        assert torch.allclose(block @ block.T, torch.eye(6), atol=1e-5)
    assert lstm.weight_ih_l0.abs().max() <= math.sqrt(6 / (4 + 6))
    assert (gru.weight_hh_l0 == 0).all()  # the layer's own inner_init
    assert dense.weight.abs().max() <= math.sqrt(6 / (5 + 2)) and (dense.bias == 0).all()


def test_recurrent_net_initialisers_reach_nnlab_cells_and_the_head():
    torch.manual_seed(0)
    net = RecurrentNet(4, 3, cell="jzs2", hidden_size=8, init="zeros", inner_init="zeros")
    cell = net.rnn.cells[0]
    assert (cell.W_zh == 0).all() and (cell.U_r == 0).all() and (net.head.weight == 0).all()
    lstm = RecurrentNet(
        4, 1, cell="lstm", hidden_size=8, inner_activation="hard_sigmoid", init="he_uniform"
    )
    keras = lstm.rnn.cells[0]
    assert keras.W.abs().max() <= math.sqrt(6 / 4)
    assert (keras.b[8:16] == 1).all() and (keras.b[:8] == 0).all()  # forget gates open


# -- activations ----------------------------------------------------------------------------
def lstm_by_hand(cell: KerasLSTMCell, xs: torch.Tensor, gate, act) -> torch.Tensor:
    H = cell.hidden_size
    h = c = torch.zeros(xs.shape[0], H)
    W, U, b = cell.W, cell.U, cell.b
    for t in range(xs.shape[1]):
        z = xs[:, t] @ W + h @ U + b
        i, f, g, o = z[:, :H], z[:, H : 2 * H], z[:, 2 * H : 3 * H], z[:, 3 * H :]
        c = gate(f) * c + gate(i) * act(g)
        h = gate(o) * act(c)
    return h


def test_a_hard_sigmoid_lstm_is_not_a_sigmoid_lstm():
    torch.manual_seed(0)
    hard = RecurrentNet(3, 1, cell="lstm", hidden_size=5, inner_activation="hard_sigmoid")
    assert hard.cell == "keras_lstm"
    soft = RecurrentNet(3, 1, cell="keras_lstm", hidden_size=5)
    soft.load_state_dict(hard.state_dict())  # the same weights, sigmoid gates
    xs = torch.randn(4, 6, 3) * 2
    with torch.no_grad():
        h_hard, h_soft = hard.encode(xs), soft.encode(xs)
        expected = lstm_by_hand(hard.rnn.cells[0], xs, hard_sigmoid, torch.tanh)
    assert torch.allclose(h_hard, expected, atol=1e-6)
    assert (h_hard - h_soft).abs().max() > 1e-2
    # clip(0.2 x + 0.5, 0, 1), not torch's hardsigmoid (x / 6 + 0.5)
    assert not torch.allclose(hard_sigmoid(xs), torch.nn.functional.hardsigmoid(xs))


def test_the_keras_lstm_with_sigmoid_and_tanh_is_torchs_lstm():
    """The same math as nn.LSTM when nothing Keras-only is asked: weights copied across."""
    torch.manual_seed(0)
    cell, ref = KerasLSTMCell(3, 4), nn.LSTM(3, 4, batch_first=True)
    with torch.no_grad():  # both order the gates i, f, g(c), o
        ref.weight_ih_l0.copy_(cell.W.T)
        ref.weight_hh_l0.copy_(cell.U.T)
        ref.bias_ih_l0.copy_(cell.b)
        ref.bias_hh_l0.zero_()
    xs = torch.randn(2, 5, 3)
    net = RecurrentNet(3, 1, cell="keras_lstm", hidden_size=4)
    net.rnn.cells[0] = cell
    out, (h_n, _) = ref(xs)
    assert torch.allclose(net.encode(xs), h_n[0], atol=1e-6)


@pytest.mark.parametrize(("gate", "act"), [("hard_sigmoid", "tanh"), ("sigmoid", "relu")])
def test_the_keras_gru_step_by_hand(gate, act):
    torch.manual_seed(0)
    net = RecurrentNet(3, 1, cell="gru", hidden_size=4, inner_activation=gate, activation=act)
    assert net.cell == "keras_gru"
    cell = net.rnn.cells[0]
    g = {"sigmoid": torch.sigmoid, "hard_sigmoid": hard_sigmoid}[gate]
    f = {"tanh": torch.tanh, "relu": torch.relu}[act]
    xs, h = torch.randn(2, 3, 3), torch.zeros(2, 4)
    W, b, H = cell.W, cell.b, 4
    for t in range(3):
        x = xs[:, t]
        z = g(x @ W[:, :H] + b[:H] + h @ cell.U_zr[:, :H])
        r = g(x @ W[:, H : 2 * H] + b[H : 2 * H] + h @ cell.U_zr[:, H:])
        h = z * h + (1 - z) * f(x @ W[:, 2 * H :] + b[2 * H :] + (r * h) @ cell.U_h)
    assert torch.allclose(net.encode(xs), h, atol=1e-6)


def test_activations_for_every_cell_and_their_errors():
    xs = torch.randn(2, 4, 3)
    for cell in ("rnn", "lstm", "gru", "jzs1", "jzs2", "jzs3", "simple_rnn", "simple_deep_rnn"):
        sig = RecurrentNet(3, 1, cell=cell, hidden_size=4, activation="sigmoid")
        assert sig.cell == KERAS_CELLS.get(cell, cell)  # torch's fused cells have tanh only
        tanh = RecurrentNet(3, 1, cell=sig.cell, hidden_size=4)
        tanh.load_state_dict(sig.state_dict())  # the same weights: only the activation differs
        assert not torch.allclose(tanh.encode(xs), sig.encode(xs)), cell
    with pytest.raises(ConfigError, match="model.activation"):
        RecurrentNet(3, 1, activation="relu", nonlinearity="sigmoid")
    with pytest.raises(ConfigError, match="model.inner_activation"):
        RecurrentNet(3, 1, cell="lstm", inner_activation="relu")
    assert RecurrentNet(3, 1, cell="lstm").cell == "lstm"  # nothing Keras-only: torch's fused
    assert isinstance(KerasGRUCell(2, 3).gate(torch.zeros(1)), torch.Tensor)


# -- truncate_gradient ----------------------------------------------------------------------
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn", "jzs1"])
def test_truncate_gradient_stops_gradients_k_steps_back(cell):
    torch.manual_seed(0)
    full = RecurrentNet(3, 1, cell=cell, hidden_size=4)
    cut = RecurrentNet(3, 1, cell=cell, hidden_size=4, truncate_gradient=3)
    if type(full.rnn) is not type(cut.rnn):  # torch's fused cell beside nnlab's
        full = RecurrentNet(3, 1, cell=cut.cell, hidden_size=4)
    full.load_state_dict(cut.state_dict())
    xs = torch.randn(2, 8, 3, requires_grad=True)
    out = cut(xs)
    assert torch.allclose(out, full(xs), atol=1e-6)  # the same values
    (grad,) = torch.autograd.grad(out.sum(), xs)
    assert (grad[:, :5] == 0).all()  # steps 0..4: more than 3 steps back
    assert (grad[:, 5:].abs().sum((0, 2)) > 0).all()
    (grad_full,) = torch.autograd.grad(full(xs).sum(), xs)
    assert (grad_full[:, :5].abs().sum() > 0) and torch.allclose(
        grad[:, -1], grad_full[:, -1], atol=1e-6
    )
    net = {"_target_": "nnlab.models.recurrent.RecurrentNet", "input_size": 3, "output_size": 1}
    with pytest.raises(ConfigError, match="model.truncate_gradient"):  # refused before building
        check_node({**net, "cell": cell, "truncate_gradient": 0}, "model")


# -- initialisers in every family -------------------------------------------------------------
def fans(layer: nn.Module) -> tuple[int, int]:
    """Keras' fans: a dense layer's inputs and outputs, a conv's times its receptive field."""
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    field = math.prod(layer.kernel_size)
    return layer.in_channels // layer.groups * field, layer.out_channels * field


FAMILIES = {
    "cnn": ("nnlab.models.cnn.CNN", {"num_classes": 10, "dense": [64]}),
    "separable_cnn": ("nnlab.models.cnn.SeparableCNN", {"num_classes": 10}),
    "conv1d": (
        "nnlab.models.cnn.CNN",
        {
            "output_size": 2,
            "in_channels": 3,
            "in_size": 12,
            "dims": 1,
            "layout": "sequence",
            "blocks": [{"channels": 16}, {"channels": 16, "pool": 2}],
        },
    ),  # fmt: skip
    "lenet": ("nnlab.models.lenet.LeNet5", {}),
    "alexnet": (
        "nnlab.models.alexnet.AlexNet",
        {"num_classes": 10, "variant": "small", "channels": [8, 16, 16, 16, 8], "hidden": 64},
    ),
    "text_cnn": ("nnlab.models.text.ConvTextClassifier", {"num_words": 50, "channels": [32]}),
    "text_rnn": ("nnlab.models.text.RecurrentTextClassifier", {"num_words": 50}),
    "seq2seq": ("nnlab.models.seq2seq.Seq2SeqForecaster", {"input_size": 3, "output_size": 4}),
}


def build_family(name: str, **extra):
    from hydra.utils import get_class

    target, kwargs = FAMILIES[name]
    if name in ("cnn", "separable_cnn"):
        kwargs = {"blocks": [{"channels": 16, "pool": 2}, {"channels": 32, "pool": 2}], **kwargs}
    check_node({"_target_": target, **kwargs, **extra}, "model")  # the schema takes the keys
    return get_class(target)(**kwargs, **extra)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_takes_keras_initialisers(family):
    """glorot_uniform: every dense and conv weight within sqrt(6 / (fan_in + fan_out)), with the
    uniform's spread, biases zero; the recurrent weights orthogonal (inner_init); `torch` (the
    default) leaves torch's start, draw for draw; a name that is none is refused by the schema."""
    torch.manual_seed(0)
    extra = {"inner_init": "orthogonal"} if family in ("text_rnn", "seq2seq") else {}
    net = build_family(family, init="glorot_uniform", **extra)
    layers = [m for m in net.modules() if isinstance(m, nn.Linear | nn.modules.conv._ConvNd)]
    assert layers or family in ("text_rnn", "seq2seq")
    for layer in layers:
        fan_in, fan_out = fans(layer)
        bound = math.sqrt(6 / (fan_in + fan_out))
        w = layer.weight.detach()
        assert w.abs().max() <= bound + 1e-7, (family, layer)
        if w.numel() >= 400:  # U(-l, l) has std l / sqrt(3)
            assert abs(float(w.std()) * math.sqrt(3) / bound - 1) < 0.1, (family, layer)
        assert layer.bias is None or (layer.bias == 0).all()
    for rnn in (m for m in net.modules() if isinstance(m, nn.RNNBase)):
        H = rnn.hidden_size
        for block in rnn.weight_hh_l0.split(H):
            assert torch.allclose(block @ block.T, torch.eye(H), atol=1e-5)
        bound = math.sqrt(6 / (rnn.input_size + H))
        assert rnn.weight_ih_l0.abs().max() <= bound + 1e-7 and (rnn.bias_ih_l0 == 0).all()
    torch.manual_seed(1)
    default = build_family(family)
    torch.manual_seed(1)
    named = build_family(family, init="torch")
    for (key, a), b in zip(default.state_dict().items(), named.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
    zeros = build_family(family, init="zeros")
    assert all((m.weight == 0).all() for m in zeros.modules() if isinstance(m, nn.Linear))
    target, kwargs = FAMILIES[family]
    with pytest.raises(ConfigError, match="model.init"):
        check_node({"_target_": target, **kwargs, "init": "xavier"}, "model")


@pytest.mark.parametrize("name", ["he_normal", "lecun_normal", "glorot_normal"])
def test_normal_initialisers_in_a_cnn_have_keras_statistics(name):
    torch.manual_seed(0)
    net = build_family("cnn", init=name)
    conv = net.features.conv2  # 16 -> 32 channels, 3x3: fan_in 144, fan_out 288
    variance = {"he": 2 / 144, "lecun": 1 / 144, "glorot": 2 / (144 + 288)}[name.split("_")[0]]
    w = conv.weight.detach()
    assert abs(float(w.std()) / math.sqrt(variance) - 1) < 0.08
    assert w.abs().max() <= 2 * math.sqrt(variance) / 0.87962566103423978 + 1e-6  # truncated
