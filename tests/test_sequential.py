"""model=sequential: layer lists sized from the data, Keras' padding arithmetic, shape errors
before training, equivalence with the fixed families, and the commands (train, summary,
checkpoint without a config, export, predict) on tiny generated data."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_cli
from test_imdb import write_tree

from nnlab.errors import ConfigError
from nnlab.models.lenet import LeNet5
from nnlab.models.mlp import MLP
from nnlab.models.recurrent import RecurrentNet
from nnlab.models.sequential import Sequential


def seeded(build, seed=0):
    torch.manual_seed(seed)
    return build()


def same_network(a: torch.nn.Module, b: torch.nn.Module, *inputs: torch.Tensor) -> None:
    count = sum(p.numel() for p in a.parameters())
    assert count == sum(p.numel() for p in b.parameters())
    a.eval(), b.eval()
    with torch.no_grad():
        assert torch.equal(a(*inputs), b(*inputs))


# --- sizes ------------------------------------------------------------------------------------


def test_every_kind_builds_and_its_shapes_are_the_real_ones():
    layers = [
        {"conv2d": {"filters": 4, "kernel": 3, "padding": "same", "activation": "relu"}},
        "batch_norm",
        {
            "separable_conv2d": {
                "filters": 6,
                "kernel": 3,
                "strides": 2,
                "padding": "same",
                "depth_multiplier": 2,
            }
        },
        {"max_pool2d": {"pool_size": 3, "padding": "same"}},
        {"conv2d_transpose": {"filters": 5, "kernel": 3, "strides": 2, "padding": "same"}},
        "layer_norm",
        {"avg_pool2d": 2},
        {"zero_padding2d": 1},
        {"reshape": [-1, 5]},  # (5, 4, 4) -> 16 steps of 5
        {"conv1d": {"filters": 8, "kernel": 4, "strides": 3, "padding": "same"}},
        {"separable_conv1d": {"filters": 8, "kernel": 3, "padding": "same"}},
        {"max_pool1d": 2},
        {"time_distributed": {"dense": {"units": 6, "activation": "tanh"}}},
        {"simple_rnn": {"units": 4, "return_sequences": True, "activation": "relu"}},
        {"gru": {"units": 4, "return_sequences": True, "bidirectional": True}},
        {"jzs3": {"units": 3, "return_sequences": True}},
        {"deep_rnn": {"units": 3, "return_sequences": True, "depth": 2}},
        {"permute": [2, 1]},
        "flatten",
        {"dropout": 0.1},
        {"activation": "gelu"},
        {"dense": {"activation": "softmax"}},
    ]
    net = Sequential(layers, [1, 28, 28], output_size=7)
    sizes = [
        (4, 28, 28), (4, 28, 28), (6, 14, 14), (6, 5, 5), (5, 10, 10), (5, 10, 10), (5, 5, 5),
        (5, 7, 7), (49, 5), (17, 8), (17, 8), (8, 8), (8, 6), (8, 4), (8, 8), (8, 3), (8, 3),
        (3, 8), (24,), (24,), (24,), (7,),
    ]  # fmt: skip
    assert net.shapes == sizes
    x = torch.randn(3, 1, 28, 28)
    for i in range(1, len(layers)):  # what each prefix of the list computes
        assert Sequential(layers[:i], [1, 28, 28])(x).shape[1:] == sizes[i - 1], layers[i - 1]
    out = net(x)
    assert out.shape == (3, 7)  # the final softmax is the loss's: logits come out
    assert not torch.allclose(out.sum(-1), torch.ones(3))


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "padding", "expected"),
    [
        (28, 3, 1, "same", 28),
        (28, 3, 2, "same", 14),  # uneven zeros: one more after
        (28, 4, 2, "same", 14),
        (7, 3, 2, "same", 4),
        (28, 3, 2, "valid", 13),  # Keras floors: the last window that does not fit is dropped
        (28, 5, 1, "valid", 24),
        (9, 2, 3, "valid", 3),
    ],
)
def test_conv_padding_has_keras_meaning(size, kernel, stride, padding, expected):
    for dims, shape in ((1, [size, 2]), (2, [2, size, size])):
        net = Sequential(
            [{f"conv{dims}d": {"filters": 3, "kernel": kernel, "strides": stride,
                               "padding": padding}}],
            shape,
        )  # fmt: skip
        want = (expected, 3) if dims == 1 else (3, expected, expected)
        assert net.shapes[-1] == want
        assert net(torch.randn(2, *shape)).shape[1:] == want


def test_same_padding_with_stride_pads_as_tensorflow():
    """TensorFlow's `same` with stride 2 on an even size puts its one zero after the input."""
    net = Sequential([{"conv1d": {"filters": 1, "kernel": 3, "strides": 2, "padding": "same",
                                  "use_bias": False}}], [4, 1])  # fmt: skip
    conv = net.layers[0]
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[1.0, 10.0, 100.0]]]))
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]]).reshape(1, 4, 1)
    # windows [1 2 3], [3 4 0]: 1 + 20 + 300, 3 + 40 + 0
    assert net(x).flatten().tolist() == [321.0, 43.0]


@pytest.mark.parametrize(
    ("layers", "shape", "key", "words"),
    [
        (
            [{"conv2d": 8}, {"max_pool2d": 2}, {"conv2d": {"filters": 8, "kernel": 5}}],
            [1, 8, 8],
            "model.layers[2]",
            ["conv2d", "(8, 3, 3)", "shrinks to nothing"],
        ),
        ([{"lstm": 8}, {"conv1d": 4}], [10, 3], "model.layers[1]", ["conv1d", "(8,)"]),
        ([{"dense": 4}, {"reshape": [3, 2]}], [5], "model.layers[1]", ["reshape", "4 values"]),
        ([{"conv2d": {"filters": 2, "kernal": 3}}], [1, 8, 8], "model.layers[0]", ["kernal"]),
        ([{"pool": 2}], [4, 4], "model.layers[0]", ["unknown layer kind 'pool'"]),
        (["flatten", {"dense": 3}], [4, 4], "model.layers[1]", ["task needs (2,)"]),
        (
            [{"dense": {"units": 4, "activation": "swish"}}, "dense"],
            [3],
            "model.layers[0]",
            ["unknown activation 'swish'"],
        ),
        (
            [{"masking": 0.0}, "dense"],
            [4, 4, 4],
            "model.layers[0]",
            ["masking", "(steps, features)"],
        ),
    ],
)
def test_a_layer_that_does_not_fit_is_named_before_training(layers, shape, key, words):
    with pytest.raises(ConfigError) as error:
        Sequential(layers, shape, output_size=2)
    message = str(error.value)
    assert key in message, message
    for word in words:
        assert word in message, message


def test_mask_zero_makes_padding_invisible():
    layers = [
        {"embedding": {"input_dim": 20, "output_dim": 5, "mask_zero": True}},
        {"lstm": {"units": 4, "return_sequences": True, "bidirectional": True}},
        {"time_distributed": {"dense": 3}},
        {"dropout": 0.2},
        "global_avg_pool",
        "dense",
    ]
    net = seeded(lambda: Sequential(layers, [9], output_size=2)).eval()
    ids = torch.tensor([[3, 7, 2, 9, 4, 0, 0, 0, 0]])
    with torch.no_grad():
        padded = net(ids)
        short = Sequential(layers, [5], output_size=2).eval()
        short.load_state_dict(net.state_dict())
        assert torch.allclose(padded, short(ids[:, :5]), atol=1e-6)
        assert not torch.allclose(padded, short(torch.tensor([[3, 7, 2, 9, 5]])))


# --- masks: Keras' Masking and mask_zero ---------------------------------------------------------


def padded(x: torch.Tensor, steps: int, where: list[int], value: float) -> torch.Tensor:
    """`x` (batch, real steps, features) at the steps `where` of a sequence of `steps`."""
    out = torch.full((x.shape[0], steps, x.shape[2]), value)
    out[:, where] = x
    return out


@pytest.mark.parametrize("kind", ["lstm", "gru", "simple_rnn", "jzs1", "keras_lstm", "deep_rnn"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_masked_steps_change_nothing_wherever_they_are(kind, bidirectional):
    """Keras' Masking: steps whose features all equal mask_value are skipped by the recurrent
    layers, at the front (pad_sequences' default), in the middle or at the end."""
    layers = [
        {"masking": -1.0},
        {kind: {"units": 4, "return_sequences": True, "bidirectional": bidirectional}},
        {"dropout": 0.3},
        {kind: {"units": 3, "bidirectional": bidirectional}},
        "dense",
    ]
    net = seeded(lambda: Sequential(layers, [7, 3], output_size=2)).eval()
    short = Sequential(layers, [4, 3], output_size=2).eval()
    short.load_state_dict(net.state_dict())
    x = torch.randn(2, 4, 3)
    with torch.no_grad():
        expected = short(x)
        for where in ([3, 4, 5, 6], [0, 2, 3, 6], [0, 1, 2, 3]):
            assert torch.allclose(net(padded(x, 7, where, -1.0)), expected, atol=1e-6), where
        # the same values unmasked (mask_value 5) are read: another answer
        unmasked = Sequential([{"masking": 5.0}, *layers[1:]], [7, 3], output_size=2).eval()
        unmasked.load_state_dict(net.state_dict())
        assert not torch.allclose(unmasked(padded(x, 7, [3, 4, 5, 6], -1.0)), expected)


def test_a_masked_step_holds_the_previous_output_and_an_empty_sequence_gives_zeros():
    layers = [{"masking": 0.0}, {"gru": {"units": 3, "return_sequences": True}}]
    net = seeded(lambda: Sequential(layers, [5, 2])).eval()
    recurrent = net.layers[1]
    x = torch.randn(2, 5, 2)
    x[0, [0, 2, 3]] = 0.0  # sequence 0: steps 1 and 4 are real
    x[1] = 0.0  # sequence 1: nothing is real
    with torch.no_grad():
        masked, mask = net.layers[0](x)
        outputs, passed = recurrent(masked, mask)
        alone, _ = recurrent.rnn(x[:1, [1, 4]])
    assert torch.equal(passed, mask) and mask[0].tolist() == [False, True, False, False, True]
    assert torch.equal(outputs[0, 0], torch.zeros(3))  # before the first real step
    assert torch.allclose(outputs[0, [1, 2, 3]], alone[0, 0].expand(3, 3), atol=1e-6)
    assert torch.allclose(outputs[0, 4], alone[0, 1], atol=1e-6)
    assert torch.equal(outputs[1], torch.zeros(5, 3))
    last = Sequential([{"masking": 0.0}, {"gru": 3}, "dense"], [5, 2], output_size=2)
    with torch.no_grad():
        assert torch.equal(last.layers[1](*last.layers[0](x))[0][1], torch.zeros(3))


def test_masking_reads_a_univariate_window_and_checks_its_value():
    net = seeded(lambda: Sequential([{"masking": 0.0}, {"lstm": 4}, "dense"], [6], output_size=1))
    x = torch.tensor([[0.0, 0.0, 0.5, -0.2, 0.1, 0.3]])
    short = Sequential([{"masking": 0.0}, {"lstm": 4}, "dense"], [4], output_size=1)
    short.load_state_dict(net.state_dict())
    with torch.no_grad():
        assert torch.allclose(net(x), short(x[:, 2:]), atol=1e-6)
    from nnlab.schema import check_node

    node = {"_target_": "nnlab.models.sequential.Sequential", "input_shape": [6]}
    with pytest.raises(ConfigError, match=r"model\.layers\[0\]\.mask_value"):
        check_node({**node, "layers": [{"masking": "pad"}, "dense"]}, "model")
    check_node({**node, "layers": [{"masking": 0}, {"lstm": 4}, "dense"]}, "model")


def test_the_mask_ends_where_the_steps_stop_lining_up_with_it():
    """mask_zero, then a conv that shortens the steps: the recurrent layer after it reads every
    step (before, it took the embedding's mask of the longer sequence and failed)."""
    layers = [
        {"embedding": {"input_dim": 12, "output_dim": 4, "mask_zero": True}},
        {"conv1d": {"filters": 5, "kernel": 3}},
        {"lstm": 4},
        "dense",
    ]
    net = seeded(lambda: Sequential(layers, [8], output_size=2)).eval()
    plain = Sequential([{"embedding": {"input_dim": 12, "output_dim": 4}}, *layers[1:]], [8], 2)
    plain.eval().load_state_dict(net.state_dict())
    ids = torch.tensor([[3, 5, 7, 2, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6, 7, 8 % 12]])
    with torch.no_grad():
        assert torch.equal(net(ids), plain(ids))


# --- the fixed families, written as layer lists -----------------------------------------------


def test_mlp_as_layers():
    mlp = seeded(lambda: MLP(12, 3, hidden_sizes=[16, 8], activation="tanh"))
    seq = seeded(
        lambda: Sequential(
            ["flatten", {"dense": {"units": 16, "activation": "tanh"}},
             {"dense": {"units": 8, "activation": "tanh"}}, "dense"],
            [12], output_size=3,
        )
    )  # fmt: skip
    same_network(mlp, seq, torch.randn(5, 12))
    assert mlp.state_dict().keys() == seq.state_dict().keys()  # MLP checkpoints load too


@pytest.mark.parametrize(
    ("cell", "kind", "bidirectional"),
    [("lstm", "lstm", False), ("gru", "gru", True), ("rnn", "simple_rnn", False),
     ("jzs2", "jzs2", True), ("deep_rnn", "deep_rnn", False)],
)  # fmt: skip
def test_recurrent_net_as_layers(cell, kind, bidirectional):
    net = seeded(lambda: RecurrentNet(6, 4, cell=cell, hidden_size=8, bidirectional=bidirectional))
    seq = seeded(
        lambda: Sequential(
            [{kind: {"units": 8, "bidirectional": bidirectional}}, "dense"], [7, 6], output_size=4
        )
    )
    same_network(net, seq, torch.randn(3, 7, 6))


def test_stacked_recurrent_net_as_layers():
    net = seeded(lambda: RecurrentNet(1, 1, cell="lstm", hidden_size=5, num_layers=1))
    seq = seeded(lambda: Sequential([{"lstm": 5}, "dense"], [16], output_size=1))
    same_network(net, seq, torch.randn(4, 16))  # a univariate window: one feature per step


@pytest.mark.parametrize("variant", ["modern", "classic"])
def test_lenet_as_layers(variant):
    act, pool = ("relu", "max_pool2d") if variant == "modern" else ("tanh", "avg_pool2d")
    lenet = seeded(lambda: LeNet5(num_classes=10, variant=variant))
    seq = seeded(
        lambda: Sequential(
            [
                {"zero_padding2d": 2},
                {"conv2d": {"filters": 6, "kernel": 5, "activation": act}},
                {pool: 2},
                {"conv2d": {"filters": 16, "kernel": 5, "activation": act}},
                {pool: 2},
                {"conv2d": {"filters": 120, "kernel": 5, "activation": act}},
                "flatten",
                {"dense": {"units": 84, "activation": act}},
                "dense",
            ],
            [1, 28, 28],
            output_size=10,
        )
    )
    same_network(lenet, seq, torch.randn(2, 1, 28, 28))


# --- the commands -------------------------------------------------------------------------------

TINY_IMDB = [
    "trainer.accelerator=cpu",
    "trainer.max_epochs=2",
    "data.num_words=40",
    "data.max_len=24",
    "data.val_size=0.25",
    "data.batch_size=8",
    "logger=none",
]


@pytest.fixture(scope="module")
def imdb_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("imdb")
    write_tree(root / "data")
    return root


def test_imdb_sequential_mlp_gives_imdb_mlps_numbers(imdb_root):
    env = {"NNLAB_DATA_DIR": str(imdb_root / "data")}
    metrics = {}
    for experiment in ("imdb_mlp", "imdb_sequential_mlp"):
        run = run_cli(
            f"experiment={experiment}", *TINY_IMDB, outputs=imdb_root / experiment,
            cwd=imdb_root, env=env,
        ).run_dir()  # fmt: skip
        metrics[experiment] = json.loads((run / "metrics.json").read_text())
    scores = [k for k in metrics["imdb_mlp"] if k.startswith(("val/", "test/"))]
    assert scores and all(
        metrics["imdb_mlp"][k] == metrics["imdb_sequential_mlp"][k] for k in scores
    ), metrics


def test_a_text_network_with_masking_trains_and_exports(imdb_root):
    env = {"NNLAB_DATA_DIR": str(imdb_root / "data")}
    layers = (
        "model.layers=[{embedding: {input_dim: ${data.num_words}, output_dim: 8, mask_zero: true}},"
        "{gru: {units: 8, bidirectional: true}}, dense]"
    )
    result = run_cli(
        "experiment=imdb_sequential_mlp", "data.view=sequence", layers, *TINY_IMDB,
        outputs=imdb_root / "text", cwd=imdb_root, env=env,
    )  # fmt: skip
    run = result.run_dir()
    assert json.loads((run / "metrics.json").read_text())["test/acc"] >= 0.0
    run_cli(f"run={run}", "format=torchscript", module="nnlab.export", outputs=imdb_root,
            cwd=imdb_root, env=env)  # fmt: skip
    assert json.loads((run / "export" / "export.json").read_text())["matches"]


@pytest.mark.slow
def test_sine_conv1d_gru_trains_summarises_exports_and_predicts(cli, tmp_path):
    result = cli("experiment=sine_conv1d_gru", "trainer.max_epochs=2", "data.num_points=300")
    run = result.run_dir()
    assert (run / "metrics.json").is_file()
    summary = (run / "model_summary.txt").read_text()
    assert "Layer (type)" in summary and "Output shape" in summary and "Params" in summary
    for row in ("layers.1 (Conv1D)", "(B, 16, 32)", "layers.3 (MaxPool1D)", "(B, 8, 32)",
                "layers.4.rnn (GRU)", "layers.5.last (LastStep)", "(B, 32)", "layers.6 (Linear)"):  # fmt: skip
        assert row in summary, summary
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert any("Sequential[net]" in node.name for node in events.Graph().node)  # the graph

    # The checkpoint rebuilds the network alone: its hyperparameters hold the input shape.
    from nnlab.tasks.regression import RegressionTask

    ckpt = json.loads((run / "metrics.json").read_text())["best_checkpoint"]
    task = RegressionTask.load_from_checkpoint(ckpt)
    assert task.hparams.net["input_shape"] == [16] and task.hparams.net["output_size"] == 1
    assert task(torch.zeros(2, 16)).shape == (2, 1)

    for fmt in ("torchscript", "onnx"):
        cli(f"run={run}", f"format={fmt}", module="nnlab.export")
        assert json.loads((run / "export" / "export.json").read_text())["matches"], fmt
    cli(f"run={run}", "input=0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0,0.9,0.8,0.7,0.6,0.5,0.4",
        "steps=5", f"out={tmp_path / 'pred'}", module="nnlab.predict")  # fmt: skip
    assert (tmp_path / "pred" / "predictions.csv").is_file()


def test_bad_layers_fail_before_training_with_exit_2(cli):
    result = cli(
        "experiment=sine_conv1d_gru",
        "model.layers=[{conv1d: {filters: 4, kernel: 9}}, {max_pool1d: 4}, {conv1d: 4}, dense]",
        check=False,
    )
    assert result.returncode == 2, result.output[-2000:]
    assert "model.layers[2]" in result.output and "conv1d" in result.output
    assert not list(result.outputs.glob("runs/*/*/checkpoints/*.ckpt"))


# --- the presets on the real data (minutes each on a CPU: -m full_run) -------------------------

BOUNDS = {
    "imdb_sequential_mlp": ("test/acc", ">=", 0.87),
    "sine_conv1d_gru": ("test/mse", "<=", 0.055),
    "mnist_stacked_lstm": ("test/acc", ">=", 0.98),
    "mnist_separable_stack": ("test/acc", ">=", 0.97),
}


@pytest.mark.full_run
@pytest.mark.real_data
@pytest.mark.parametrize("experiment", sorted(BOUNDS))
def test_preset_reaches_its_bound(cli, experiment):
    import os

    if experiment != "sine_conv1d_gru" and not os.environ.get("NNLAB_DATA_DIR"):
        pytest.skip("needs the real data: set NNLAB_DATA_DIR")
    metrics = cli(f"experiment={experiment}", env={"OMP_NUM_THREADS": "1"}).metrics()
    key, op, bound = BOUNDS[experiment]
    assert (metrics[key] >= bound) if op == ">=" else (metrics[key] <= bound), metrics
