"""The Keras-style model summary, the first-layer filter image and the channels-last switch."""

import torch

from nnlab.callbacks.filters import filter_grid, first_conv
from nnlab.callbacks.summary import summarize
from nnlab.models.cnn import CNN, SeparableCNN
from nnlab.models.lenet import LeNet5
from nnlab.models.mlp import MLP
from nnlab.models.recurrent import RecurrentNet
from nnlab.tasks.classification import ClassificationTask


def test_summary_of_lenet():
    text = summarize(LeNet5(), torch.zeros(2, 1, 28, 28))
    lines = text.splitlines()
    assert lines[0] == "Model: LeNet5"
    row = next(line for line in lines if line.startswith("features.c1 (Conv2d)"))
    assert row.split()[2:] == ["(B,", "6,", "28,", "28)", "156"]
    row = next(line for line in lines if line.startswith("classifier.f6 (Linear)"))
    assert row.split()[2:] == ["(B,", "84)", "10,164"]
    assert "features.input (InputAdapter)" in text and "(B, 1, 32, 32)" in text
    assert "Total params: 61,706" in text and "Non-trainable params: 0" in text
    layers = [line.split()[0] for line in lines if line.startswith(("features.", "classifier."))]
    assert layers[:3] == ["features.input", "features.c1", "features.act1"]  # in forward order
    assert len(layers) == 13


def test_summary_of_other_families():
    mlp = summarize(MLP(4, 1, hidden_sizes=[10]), torch.zeros(2, 4))
    assert "layers.1 (Linear)" in mlp and "(B, 10)" in mlp and "Total params: 61" in mlp
    rnn = summarize(
        RecurrentNet(input_size=28, output_size=10, hidden_size=8), torch.zeros(2, 5, 28)
    )
    assert "rnn (LSTM)" in rnn and "(B, 5, 8)" in rnn and "head (Linear)" in rnn
    no_example = summarize(MLP(4, 1))
    assert "layers.1 (Linear)" in no_example and "?" in no_example


def test_summary_leaves_batch_norm_statistics_alone():
    net = CNN(10, [{"channels": 4, "pool": 2}], batch_norm=True)
    net.train()
    before = net.features.norm1.running_mean.clone()
    summarize(net, torch.rand(4, 1, 28, 28) * 5)
    assert torch.equal(net.features.norm1.running_mean, before) and net.training
    non_trainable = "Non-trainable params: 0"  # running stats are buffers, not parameters
    assert non_trainable in summarize(net)


def test_filter_grid_of_the_first_conv():
    net = LeNet5()
    conv = first_conv(net)
    assert conv is net.features.c1
    grid = filter_grid(conv)
    assert grid.shape[0] == 3 and grid.min() >= 0 and grid.max() <= 1
    assert grid.shape[1:] == (2 + 2 * (12 * 5 + 2), 2 + 3 * (12 * 5 + 2))  # 6 tiles of 60 px
    assert first_conv(SeparableCNN(10, [{"channels": 4}])).groups == 1  # depthwise of 1 channel
    assert first_conv(MLP(4, 1)) is None


def test_channels_last_task():
    net_cfg = {
        "_target_": "nnlab.models.cnn.CNN",
        "num_classes": 10,
        "in_channels": 3,
        "blocks": [{"channels": 8, "pool": 2}],
        "dense": [16],
    }
    torch.manual_seed(0)
    plain = ClassificationTask(net=net_cfg)
    fast = ClassificationTask(net=net_cfg, channels_last=True)
    fast.net.load_state_dict(plain.net.state_dict())
    weight = fast.net.features.conv1.weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    assert fast.hparams.channels_last is True
    seen = []
    fast.net.features.conv1.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    x = torch.rand(3, 3, 28, 28)
    assert torch.allclose(fast(x), plain(x), atol=1e-5)
    assert seen[0].is_contiguous(memory_format=torch.channels_last)
    assert not seen[0].is_contiguous()


def test_every_run_saves_its_summary(cli):
    """The default callbacks and the series presets write it too (MLP here)."""
    run = cli("experiment=sine_mlp", "debug=fast_dev_run").run_dir()
    text = (run / "model_summary.txt").read_text()
    assert text.startswith("Model: MLP") and "layers.1 (Linear)" in text and "(B, 10)" in text
    assert "Total params: 61" in text
