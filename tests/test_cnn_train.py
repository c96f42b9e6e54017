"""The CNN presets end to end through nnlab-train on tiny generated IDX files: a few steps each,
the model summary, the filter image (TensorBoard and PNG), bf16 and channels-last switches; with
NNLAB_DATA_DIR, the README's accuracy bounds (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mnist_files import real_mnist_dir

CNN_EXPERIMENTS = [
    "mnist_lenet",
    "mnist_lenet_classic",
    "mnist_cnn",
    "fashion_mnist_cnn",
    "mnist_alexnet_small",
    "fashion_mnist_alexnet",
]
FEW_STEPS = [
    "debug=limit",
    "trainer.accelerator=cpu",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "data.val_size=20",
    "data.batch_size=4",
    "data.eval_batch_size=8",
]
PNG = b"\x89PNG\r\n\x1a\n"


def tensorboard_images(run: Path) -> list[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return events.Tags()["images"]


@pytest.mark.parametrize("experiment", CNN_EXPERIMENTS)
@pytest.mark.slow
def test_cnn_experiment_trains_a_few_steps(cli, data_dir, experiment):
    result = cli(f"experiment={experiment}", *FEW_STEPS, env={"NNLAB_DATA_DIR": str(data_dir)})
    run = result.run_dir()
    metrics = result.metrics()
    # accuracy counts whole images: a multiple of 1/n for the n scored (a batch of 4, or all 40)
    assert metrics["test/acc"] * 40 == pytest.approx(round(metrics["test/acc"] * 40), abs=1e-4)
    assert metrics["global_step"] == 2
    summary = (run / "model_summary.txt").read_text()
    assert "features.input (InputAdapter)" in summary and "Total params: " in summary
    assert "Model summary" in (run / "train.log").read_text()
    assert (run / "first_layer_filters.png").read_bytes()[:8] == PNG
    assert "filters/first_conv" in tensorboard_images(run)
    config = (run / ".hydra" / "config.yaml").read_text()
    assert "monitor: val/acc" in config and "view: image" in config


def test_alexnet_preset_is_the_published_network_in_bf16_channels_last(make_cfg):
    cfg = make_cfg("experiment=fashion_mnist_alexnet")
    assert cfg.model.variant == "full" and list(cfg.model.channels) == [96, 256, 384, 384, 256]
    assert cfg.model.hidden == 4096 and cfg.model.in_size == 28 and cfg.model.in_channels == 1
    assert cfg.trainer.precision == "bf16-mixed" and cfg.task.channels_last is True
    assert cfg.data.dataset == "fashion_mnist" and cfg.model.num_classes == 10


@pytest.mark.slow
def test_summary_lists_the_alexnet_geometry(cli, data_dir):
    result = cli(
        "experiment=fashion_mnist_alexnet",
        "debug=fast_dev_run",
        "data.val_size=20",
        "data.batch_size=2",
        env={"NNLAB_DATA_DIR": str(data_dir)},
    )
    rows = {
        line.split()[0]: line
        for line in (result.run_dir() / "model_summary.txt").read_text().splitlines()
    }
    assert "(B, 3, 227, 227)" in rows["features.input"]
    assert "(B, 96, 55, 55)" in rows["features.conv1"] and "34,944" in rows["features.conv1"]
    assert "(B, 96, 27, 27)" in rows["features.pool1"]
    assert "(B, 256, 6, 6)" in rows["features.pool5"]
    assert "(B, 4096)" in rows["classifier.1"] and "37,752,832" in rows["classifier.1"]


def test_a_size_that_does_not_divide_ends_with_one_line(cli, data_dir):
    result = cli(
        "experiment=mnist_cnn",
        "model.blocks=[{channels:4,pool:2},{channels:4,pool:2},{channels:4,pool:2}]",
        check=False,
        env={"NNLAB_DATA_DIR": str(data_dir)},
    )
    assert result.returncode == 2
    assert (
        "error: model.blocks[2]: layer pool3: (W - F + 2P)/S + 1 = (7 - 2 + 2*0)/2 + 1 = 3.5 is "
        "not a whole number" in result.stderr
    )
    assert "Traceback" not in result.stderr


def test_separable_cnn_and_switches_train(cli, data_dir):
    result = cli(
        "experiment=mnist_cnn",
        "model=separable_cnn",
        "task.channels_last=true",
        "trainer.precision=bf16-mixed",
        *FEW_STEPS,
        env={"NNLAB_DATA_DIR": str(data_dir)},
    )
    summary = (result.run_dir() / "model_summary.txt").read_text()
    assert "features.conv1.depthwise (Conv2d)" in summary
    assert "features.conv1.pointwise (Conv2d)" in summary
    assert result.metrics()["global_step"] == 2


@pytest.mark.full_run
@pytest.mark.real_data
@pytest.mark.skipif(real_mnist_dir() is None, reason="NNLAB_DATA_DIR does not hold MNIST/raw")
@pytest.mark.parametrize(
    "experiment,bound",
    [
        ("mnist_lenet", 0.988),
        ("mnist_lenet_classic", 0.98),
        ("mnist_cnn", 0.990),
        ("fashion_mnist_cnn", 0.90),
        ("mnist_alexnet_small", 0.990),
    ],
)
def test_cnn_experiment_reaches_its_bound(cli, experiment, bound):
    """The README's rows (CPU presets, minutes each); fashion_mnist_alexnet needs a GPU."""
    metrics = cli(f"experiment={experiment}", timeout=7200).metrics()
    assert metrics["test/acc"] >= bound, json.dumps(metrics)
