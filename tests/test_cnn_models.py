"""The CNN family: exact layer shapes (computed up front and seen in a forward pass), the
published AlexNet geometry and parameter count, LRN by hand, input adaptation, size errors."""

import pytest
import torch
from torch import nn

from nnlab.errors import ConfigError
from nnlab.models.alexnet import AlexNet, LocalResponseNorm
from nnlab.models.cnn import CNN, SeparableCNN
from nnlab.models.layers import InputAdapter, output_size
from nnlab.models.lenet import LeNet5
from nnlab.schema import check_args


def traced_in_forward(model: nn.Module, x: torch.Tensor) -> list[tuple[str, tuple[int, ...]]]:
    """Each leaf layer of `model.features` and the shape it really outputs (without the batch)."""
    seen = []
    hooks = [
        m.register_forward_hook(lambda m, a, out, name=name: seen.append((name, out.shape[1:])))
        for name, m in model.features.named_modules()
        if name and not any(True for _ in m.children())
    ]
    model.eval()
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return [(n, tuple(s)) for n, s in seen]


def check(model: nn.Module, x: torch.Tensor, classes: int) -> None:
    """The shapes computed before any data flowed are the shapes the forward pass produces."""
    assert traced_in_forward(model, x) == [(n, s) for n, s in model.shapes]
    assert model(x).shape == (len(x), classes)


MNIST = torch.rand(3, 1, 28, 28)


@pytest.mark.parametrize("variant", ["classic", "modern"])
def test_lenet_geometry(variant):
    net = LeNet5(num_classes=10, variant=variant)
    shapes = dict(net.shapes)
    assert shapes["input"] == (1, 32, 32)
    assert [shapes[k] for k in ("c1", "s2", "c3", "s4", "c5", "flatten")] == [
        (6, 28, 28),
        (6, 14, 14),
        (16, 10, 10),
        (16, 5, 5),
        (120, 1, 1),
        (120,),
    ]
    check(net, MNIST, 10)
    used = (nn.Tanh, nn.AvgPool2d) if variant == "classic" else (nn.ReLU, nn.MaxPool2d)
    other = (nn.ReLU, nn.MaxPool2d) if variant == "classic" else (nn.Tanh, nn.AvgPool2d)
    kinds = {type(m) for m in net.modules()}
    assert set(used) <= kinds and not set(other) & kinds
    assert sum(p.numel() for p in net.parameters()) == 61_706  # the usual LeNet-5 count


def test_lenet_classic_with_sigmoid_units():
    net = LeNet5(variant="classic", activation="sigmoid")
    assert sum(isinstance(m, nn.Sigmoid) for m in net.modules()) == 4
    check(net, MNIST, 10)


def test_lenet_without_padding_shrinks_to_nothing():
    with pytest.raises(ConfigError) as err:
        LeNet5(input_size=28)
    message = str(err.value)
    assert message.startswith("model.input_size: layer c5:")
    assert "(4 - 5 + 2*0)/1 + 1 shrinks to nothing" in message


@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize("pool_type", ["max", "avg"])
@pytest.mark.parametrize("head", ["flatten", "gap"])
@pytest.mark.parametrize("cls", [CNN, SeparableCNN])
def test_cnn_variants(dims, pool_type, head, cls):
    net = cls(
        num_classes=7,
        blocks=[
            {"channels": 8, "kernel": 3, "padding": "same", "pool": 2},
            {"channels": 12, "kernel": 3, "padding": "valid"},
            {"channels": 16, "kernel": 5, "stride": 1, "padding": 2, "pool": 2},
        ],
        dims=dims,
        pool_type=pool_type,
        batch_norm=True,
        dropout=0.2,
        head=head,
        dense=[24, 16],
        dense_dropout=0.3,
    )
    check(net, MNIST, 7)
    shapes = dict(net.shapes)
    if dims == 2:  # 28 -> same 28 -> pool 14 -> valid 12 -> 12 -> pool 6
        assert shapes["pool3"] == (16, 6, 6)
        assert shapes["flatten"] == ((16,) if head == "gap" else (16 * 36,))
    else:  # rows as steps: 28 features per step, 28 steps
        assert shapes["pool3"] == (16, 6)
        assert shapes["flatten"] == ((16,) if head == "gap" else (16 * 6,))
    pool = {"max": (nn.MaxPool1d, nn.MaxPool2d), "avg": (nn.AvgPool1d, nn.AvgPool2d)}[pool_type]
    assert sum(isinstance(m, pool) for m in net.modules()) == 2
    assert sum(isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) for m in net.modules()) == 3


def test_separable_convs_are_depthwise_then_pointwise():
    blocks = [{"channels": 32, "pool": 2}, {"channels": 64, "pool": 2}]
    plain, separable = CNN(10, blocks), SeparableCNN(10, blocks)
    conv2 = separable.features.conv2
    assert conv2.depthwise.groups == 32 and conv2.depthwise.weight.shape == (32, 1, 3, 3)
    assert conv2.pointwise.weight.shape == (64, 32, 1, 1)
    count = [sum(p.numel() for p in n.features.parameters()) for n in (plain, separable)]
    assert count[1] < count[0] / 4  # 32*9 + 33*64 vs 32*64*9 + 64 for the second conv


@pytest.mark.parametrize(
    "blocks,message",
    [
        (
            [{"channels": 4, "pool": 2}] * 5,  # 28 -> 14 -> 7 -> 3.5
            "model.blocks[2]: layer pool3: (W - F + 2P)/S + 1 = (7 - 2 + 2*0)/2 + 1 = 3.5 is not "
            "a whole number",
        ),
        (
            [{"channels": 4, "kernel": 3, "stride": 2, "padding": "valid"}],
            "model.blocks[0]: layer conv1: (W - F + 2P)/S + 1 = (28 - 3 + 2*0)/2 + 1 = 13.5",
        ),
        (
            [{"channels": 4, "kernel": 29, "padding": "valid"}],
            "model.blocks[0]: layer conv1: (W - F + 2P)/S + 1 = (28 - 29 + 2*0)/1 + 1 shrinks "
            "to nothing",
        ),
        ([{"channels": 4, "kernel": 4, "padding": "same"}], "same padding needs an odd kernel"),
        ([{"channels": 4, "kernal": 3}], "model.blocks[0].kernal: unknown key"),
        ([{"channels": 0}], "model.blocks[0].channels: got 0; expected a number >= 1"),
    ],
)
def test_cnn_config_errors(blocks, message):
    with pytest.raises(ConfigError) as err:
        check_args(CNN, "model", num_classes=10, blocks=blocks)  # the schema's part
        CNN(10, blocks)  # what only building finds out (shapes)
    assert message in str(err.value)


def test_output_size_formula():
    assert output_size("k", "l", 227, 11, 4, 0) == 55
    assert output_size("k", "l", 55, 3, 2, 0) == 27
    assert output_size("k", "l", 27, 5, 1, 2) == 27
    with pytest.raises(ConfigError, match=r"k: layer l: .* = 54.25 is not a whole number"):
        output_size("k", "l", 224, 11, 4, 0)


def test_alexnet_as_published():
    net = AlexNet(num_classes=1000, in_channels=3, in_size=227, groups=2)
    shapes = dict(net.shapes)
    assert [shapes[k] for k in ("input", "conv1", "pool1", "conv2", "pool2")] == [
        (3, 227, 227),
        (96, 55, 55),
        (96, 27, 27),
        (256, 27, 27),
        (256, 13, 13),
    ]
    assert [shapes[k] for k in ("conv3", "conv4", "conv5", "pool5", "flatten")] == [
        (384, 13, 13),
        (384, 13, 13),
        (256, 13, 13),
        (256, 6, 6),
        (9216,),
    ]
    f = net.features
    assert (f.conv1.kernel_size, f.conv1.stride, f.conv1.out_channels) == ((11, 11), (4, 4), 96)
    assert [f.conv2.groups, f.conv3.groups, f.conv4.groups, f.conv5.groups] == [2, 1, 2, 2]
    assert isinstance(f.lrn1, LocalResponseNorm) and isinstance(f.lrn2, LocalResponseNorm)
    assert sum(isinstance(m, LocalResponseNorm) for m in net.modules()) == 2
    assert all(p.kernel_size == 3 and p.stride == 2 for p in (f.pool1, f.pool2, f.pool5))
    linears = [m for m in net.classifier if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (9216, 4096),
        (4096, 4096),
        (4096, 1000),
    ]
    assert sum(isinstance(m, nn.Dropout) for m in net.classifier) == 2
    # The two-GPU network's published size: 60,965,224 parameters.
    assert sum(p.numel() for p in net.parameters()) == 60_965_224
    check(net, torch.rand(2, 3, 227, 227), 1000)


def test_alexnet_adapts_mnist_on_the_device():
    net = AlexNet(num_classes=10, in_channels=1, in_size=28)
    assert dict(net.shapes)["conv1"] == (96, 55, 55)
    check(net, torch.rand(2, 1, 28, 28), 10)
    assert sum(p.numel() for p in net.features.conv2.parameters()) == 256 * 96 * 25 + 256


def test_alexnet_small():
    net = AlexNet(10, variant="small", channels=[16, 32, 48, 48, 32], hidden=64)
    shapes = dict(net.shapes)
    assert [shapes[k] for k in ("input", "pool1", "pool2", "pool5", "flatten")] == [
        (1, 31, 31),
        (16, 15, 15),
        (32, 7, 7),
        (32, 3, 3),
        (288,),
    ]
    check(net, MNIST, 10)


def test_alexnet_at_224_refuses_to_build():
    with pytest.raises(ConfigError) as err:
        AlexNet(10, input_size=224)
    assert str(err.value).startswith(
        "model.input_size: layer conv1: (W - F + 2P)/S + 1 = (224 - 11 + 2*0)/4 + 1 = 54.25 is "
        "not a whole number"
    )


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"variant": "tiny"}, "model.variant: got 'tiny'; expected one of 'full' or 'small'"),
        ({"groups": 3}, "model.groups: got 3; expected one of 1 or 2"),
        ({"channels": [96, 256]}, "model.channels: got [96, 256]; expected 5 items"),
        ({"groups": 2, "channels": [95, 256, 384, 384, 256]}, "groups=2 needs even widths"),
        ({"in_channels": 2}, "model.in_channels: the network expects 3 channel(s)"),
    ],
)
def test_alexnet_config_errors(kwargs, message):
    with pytest.raises(ConfigError) as err:
        check_args(AlexNet, "model", num_classes=10, **kwargs)  # the schema's part
        AlexNet(10, **kwargs)  # what only building finds out (widths against groups, channels)
    assert message in str(err.value)


def test_lrn_matches_the_paper_by_hand():
    """b[c] = a[c] / (k + alpha * sum_{j = c-n/2}^{c+n/2} a[j]^2)^beta, k=2 n=5 alpha=1e-4
    beta=0.75, the sum clipped at the first and last channel."""
    torch.manual_seed(0)
    a = torch.randn(2, 7, 3, 3) * 40  # large activations, so alpha's term matters
    lrn = LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0)
    expected = torch.empty_like(a)
    channels = a.shape[1]
    for c in range(channels):
        lo, hi = max(0, c - 2), min(channels - 1, c + 2)
        total = sum(a[:, j] ** 2 for j in range(lo, hi + 1))
        expected[:, c] = a[:, c] / (2.0 + 1e-4 * total) ** 0.75
    out = lrn(a)
    assert torch.allclose(out, expected, rtol=1e-5, atol=1e-6)
    # torch's own module divides alpha by n: with alpha=1e-4 it would be another function.
    assert not torch.allclose(nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0)(a), expected, rtol=1e-3)
    # a hand-checked single value: channel 0 sees channels 0..2
    x = torch.zeros(1, 3, 1, 1)
    x[0, :, 0, 0] = torch.tensor([10.0, 20.0, 30.0])
    assert lrn(x)[0, 0, 0, 0].item() == pytest.approx(10.0 / (2 + 1e-4 * 1400) ** 0.75)


def test_input_adapter_pads_and_resizes():
    x = torch.rand(2, 1, 28, 28)
    padded = InputAdapter(1, 28, 1, 32, mode="pad")(x)
    assert padded.shape == (2, 1, 32, 32)
    assert torch.equal(padded[:, :, 2:30, 2:30], x) and padded[:, :, :2].abs().sum() == 0
    odd = InputAdapter(1, 28, 1, 31, mode="pad")(x)
    assert torch.equal(odd[:, :, 1:29, 1:29], x)
    resized = InputAdapter(1, 28, 3, 227, mode="resize")(x)
    assert resized.shape == (2, 3, 227, 227)
    assert torch.equal(resized[:, 0], resized[:, 2])  # one channel repeated
    assert InputAdapter(1, 28, 1, 28)(x) is x
    with pytest.raises(ConfigError, match="model.in_size: 40x40 images cannot be padded"):
        InputAdapter(1, 40, 1, 32, mode="pad")
    with pytest.raises(ConfigError, match="model.input_mode"):
        InputAdapter(1, 28, 1, 32, mode="crop")
