"""MNIST / Fashion-MNIST: tiny IDX files read through torchvision, views, splits, errors, the
classification presets end to end, and (with NNLAB_DATA_DIR) one epoch on the real data."""

from __future__ import annotations

import gzip

import pytest
import torch
from conftest import EXPERIMENTS
from mnist_files import idx_bytes, real_mnist_dir, tiny_digits, write_mnist

from nnlab import CONF_DIR
from nnlab.data import mnist as mnist_module
from nnlab.data.mnist import MNISTDataModule
from nnlab.errors import ConfigError, DataError
from nnlab.schema import check_args
from nnlab.tasks.classification import ClassificationTask

# The improved presets; the *_as_written ones reproduce a reference run as it was (no validation,
# the final weights tested) and are tested in test_as_written.py, the several-output ones
# (task=multi_output: no single val/acc) in test_graph.py.
MNIST_EXPERIMENTS = [
    e
    for e in EXPERIMENTS
    if not e.endswith("_as_written")
    and "override /task: multi_output" not in (CONF_DIR / "experiment" / f"{e}.yaml").read_text()
    and any(
        f"override /data: {data}" in (CONF_DIR / "experiment" / f"{e}.yaml").read_text()
        for data in ("mnist", "fashion_mnist")
    )
]
PNG = b"\x89PNG\r\n\x1a\n"


def module(data_dir, **kwargs) -> MNISTDataModule:
    kwargs = {"val_size": 20, "batch_size": 8, "download": False, **kwargs}
    dm = MNISTDataModule(data_dir=str(data_dir), **kwargs)
    dm.setup()
    return dm


def rows_of(dm, split: str) -> torch.Tensor:
    """Which of the 120 tiny training images each sample of `split` is (they are all distinct)."""
    images = tiny_digits(120, seed=0)[0].float().reshape(120, -1) / 255
    x = dm.datasets[split].tensors[0]
    return torch.cdist(x.reshape(len(x), -1), images).argmin(dim=1)


def test_files_are_read_through_torchvision_into_tensors(data_dir):
    dm = module(data_dir, view="rows")
    images, labels = tiny_digits(120, seed=0)
    assert [len(dm.datasets[s]) for s in ("train", "val", "test")] == [100, 20, 40]
    x, y = dm.datasets["train"].tensors
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert 0.0 <= x.min() and x.max() <= 1.0
    idx = rows_of(dm, "train")
    assert torch.equal(x, images[idx].float() / 255)
    assert torch.equal(y, labels[idx].long())
    test_x, test_y = dm.datasets["test"].tensors
    assert torch.equal(test_y, tiny_digits(40, seed=1)[1].long())
    batch_x, batch_y = next(iter(dm.train_dataloader()))
    assert batch_x.shape == (8, 28, 28) and batch_y.shape == (8,)


@pytest.mark.parametrize(
    ("view", "shape"),
    [("rows", (28, 28)), ("pixels", (784, 1)), ("permuted", (784, 1)), ("image", (1, 28, 28))],
)
def test_view_shapes(data_dir, view, shape):
    dm = module(data_dir, view=view)
    for split in ("train", "val", "test"):
        assert dm.datasets[split].tensors[0].shape[1:] == shape
    assert dm.example_input(3).shape == (3, *shape)
    x, _ = next(iter(dm.test_dataloader()))
    assert x.shape[1:] == shape and x.dtype == torch.float32
    # every view turns back into the same images
    assert torch.allclose(
        dm.to_image(dm.datasets["test"].tensors[0]),
        module(data_dir).to_image(module(data_dir).datasets["test"].tensors[0]),
    )


@pytest.mark.parametrize(
    ("view", "seq_len", "input_size"),
    [("rows", 28, 28), ("pixels", 784, 1), ("permuted", 784, 1), ("image", None, 784)],
)
def test_config_interpolates_the_view_shapes_into_the_model(make_cfg, view, seq_len, input_size):
    cfg = make_cfg("experiment=mnist_lstm", f"data.view={view}")
    assert cfg.data.seq_len == seq_len and cfg.data.input_size == input_size
    assert cfg.model.input_size == input_size
    assert cfg.model.output_size == cfg.task.num_classes == cfg.data.num_classes == 10


def test_permutation_is_fixed_by_its_seed(data_dir):
    pixels = module(data_dir, view="pixels").datasets["test"].tensors[0].squeeze(-1)
    a = module(data_dir, view="permuted", permutation_seed=3)
    b = module(data_dir, view="permuted", permutation_seed=3)
    c = module(data_dir, view="permuted", permutation_seed=4)
    assert torch.equal(a.permutation, b.permutation)
    assert not torch.equal(a.permutation, c.permutation)
    assert sorted(a.permutation.tolist()) == list(range(784))
    permuted = a.datasets["test"].tensors[0].squeeze(-1)
    assert torch.equal(permuted, pixels[:, a.permutation])
    assert torch.equal(permuted, b.datasets["test"].tensors[0].squeeze(-1))
    assert torch.allclose(a.to_image(a.datasets["test"].tensors[0]), pixels.reshape(-1, 28, 28))


def test_validation_split_is_seeded_and_disjoint(data_dir):
    dm = module(data_dir, val_size=30)
    train, val = rows_of(dm, "train"), rows_of(dm, "val")
    assert len(train) == 90 and len(val) == 30
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(120))
    assert torch.equal(val, rows_of(module(data_dir, val_size=30), "val"))
    assert not torch.equal(val, rows_of(module(data_dir, val_size=30, split_seed=1), "val"))
    with pytest.raises(ConfigError, match="data.val_size"):
        module(data_dir, val_size=120)


def test_normalisation_uses_the_training_split(data_dir):
    dm = module(data_dir, normalize=True, view="pixels")
    x = dm.datasets["train"].tensors[0]
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-3
    raw = module(data_dir, view="pixels").datasets["test"].tensors[0]
    assert torch.allclose(
        dm.to_image(dm.datasets["test"].tensors[0]), raw.reshape(-1, 28, 28), atol=1e-5
    )


def test_fashion_mnist_reads_its_own_folder(data_dir, tmp_path):
    dm = module(data_dir, dataset="fashion_mnist")
    assert dm.raw_folder == data_dir / "FashionMNIST" / "raw"
    assert dm.classes[0] == "T-shirt/top" and len(dm.classes) == 10
    only_fashion = tmp_path / "fashion_only"
    write_mnist(only_fashion, "fashion_mnist")
    module(only_fashion, dataset="fashion_mnist")
    with pytest.raises(DataError, match="MNIST/raw"):
        module(only_fashion, dataset="mnist")


def test_missing_files_say_which_and_where(tmp_path):
    with pytest.raises(DataError) as info:
        module(tmp_path / "empty")
    message = str(info.value)
    for name in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "data.download is false"):
        assert name in message
    assert str(tmp_path / "empty" / "MNIST" / "raw") in message and "NNLAB_DATA_DIR" in message


def test_a_failed_download_is_reported_with_the_missing_files(tmp_path, monkeypatch):
    class Offline:
        __name__ = "MNIST"

        def __init__(self, root, train=True, download=False):
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: no network")

    monkeypatch.setitem(mnist_module.DATASETS, "mnist", Offline)
    with pytest.raises(DataError, match=r"download failed \(RuntimeError: .*no network\)"):
        module(tmp_path / "offline", download=True)


def test_gzipped_files_are_unpacked(tmp_path):
    raw = write_mnist(tmp_path / "d")
    for path in list(raw.iterdir()):
        with gzip.open(f"{path}.gz", "wb") as f:
            f.write(path.read_bytes())
        path.unlink()
    assert len(module(tmp_path / "d").datasets["test"]) == 40


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda b: b[:-100], "train-images-idx3-ubyte: truncated"),
        (lambda b: b[:6], "train-images-idx3-ubyte: truncated"),
        (lambda b: b + b"\0", "longer than its header says"),
        (lambda b: b"\x1f\x8b" + b[2:], "not an IDX file of images"),
        (lambda b: b[:3] + b"\x01" + b[4:], "not an IDX file of images"),
    ],
)
def test_malformed_files_are_named(tmp_path, damage, match):
    raw = write_mnist(tmp_path / "d")
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataError, match=match):
        module(tmp_path / "d")


def test_labels_that_do_not_match_the_images(tmp_path):
    raw = write_mnist(tmp_path / "d")
    (raw / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(torch.zeros(39, dtype=torch.uint8)))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte: holds 39 labels"):
        module(tmp_path / "d")
    (raw / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(torch.full((40,), 12)))
    with pytest.raises(DataError, match="labels must be 0..9"):
        module(tmp_path / "d")


def test_bad_names_and_inconsistent_shapes(data_dir):
    with pytest.raises(ConfigError, match="data.view: got 'columns'; expected one of 'rows'"):
        check_args(MNISTDataModule, "data", data_dir=str(data_dir), view="columns")
    with pytest.raises(ConfigError, match="data.dataset"):
        check_args(MNISTDataModule, "data", data_dir=str(data_dir), dataset="kmnist")
    with pytest.raises(ConfigError, match="data.input_size: is 28 but the 'pixels' view"):
        MNISTDataModule(data_dir=str(data_dir), view="pixels", input_size=28)


def test_the_task_keeps_the_misclassified_test_samples():
    net = {"_target_": "torch.nn.Flatten"}
    task = ClassificationTask(net, num_classes=4, keep_mistakes=3)
    x = torch.arange(5).float()[:, None]
    task.collect_mistakes(x, torch.tensor([0, 1, 2, 3, 0]), torch.tensor([0, 2, 2, 1, 3]))
    task.collect_mistakes(x, torch.tensor([0, 1, 2, 3, 0]), torch.tensor([1, 1, 1, 1, 1]))
    kept_x = torch.cat([m[0] for m in task.test_mistakes]).flatten().tolist()
    kept_pred = torch.cat([m[2] for m in task.test_mistakes]).tolist()
    assert kept_x == [1.0, 3.0, 4.0] and kept_pred == [2, 1, 3]
    task.collect_mistakes(x, torch.zeros(5, dtype=torch.long), torch.ones(5, dtype=torch.long))
    assert sum(len(m[1]) for m in task.test_mistakes) == 3


@pytest.mark.parametrize("experiment", MNIST_EXPERIMENTS)
@pytest.mark.slow
def test_each_mnist_experiment_runs_end_to_end(cli, data_dir, experiment):
    result = cli(
        f"experiment={experiment}",
        "debug=limit",
        "trainer.accelerator=cpu",
        "data.val_size=20",
        "data.batch_size=8",
        "trainer.limit_train_batches=3",
        env={"NNLAB_DATA_DIR": str(data_dir)},
    )
    run = result.run_dir()
    metrics = result.metrics()
    for key in ("val/acc", "test/acc", "test/f1", "test/loss", "best_checkpoint"):
        assert key in metrics, key
    assert 0.0 <= metrics["test/acc"] <= 1.0
    for name in ("confusion_matrix.png", "misclassified.png"):
        assert (run / name).read_bytes()[:8] == PNG, name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert "epoch001" in metrics["best_checkpoint"] or "epoch000" in metrics["best_checkpoint"]


@pytest.mark.parametrize("experiment", MNIST_EXPERIMENTS)
def test_classification_presets_watch_validation_accuracy(make_cfg, experiment):
    cfg = make_cfg(f"experiment={experiment}")
    assert cfg.monitor == "val/acc" and cfg.monitor_mode == "max"
    assert cfg.monitor == "val/acc"
    assert cfg.trainer.accelerator == "auto"
    assert "classification_figures" in cfg.callbacks


def test_the_reference_recipe_is_the_preset(make_cfg):
    cfg = make_cfg("experiment=mnist_rnn")
    assert cfg.data.view == "rows" and cfg.data.batch_size == 8
    assert cfg.model.cell == "rnn" and cfg.model.hidden_size == 64 and cfg.model.readout == "last"
    assert cfg.model.num_layers == 1 and not cfg.model.bidirectional
    assert cfg.task.optimizer.lr == 1e-3 and cfg.trainer.max_epochs == 10
    assert cfg.trainer.accelerator == "auto"
    assert cfg.trainer.gradient_clip_val == 1.0  # nnlab's one addition (README results table)


def test_missing_data_ends_with_one_line_and_status_2(cli, tmp_path):
    result = cli(
        "experiment=mnist_rnn",
        "data.download=false",
        check=False,
        env={"NNLAB_DATA_DIR": str(tmp_path / "nothing")},
    )
    assert result.returncode == 2
    assert "error: data.data_dir: mnist files missing in" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.real_data
@pytest.mark.skipif(real_mnist_dir() is None, reason="NNLAB_DATA_DIR does not hold MNIST/raw")
def test_an_lstm_learns_real_mnist_in_one_epoch(cli):
    """A 64-unit LSTM reading rows, one epoch (batch 64): test accuracy >= 95%."""
    metrics = cli(
        "experiment=mnist_lstm",
        "model.hidden_size=64",
        "data.batch_size=64",
        "task.optimizer.lr=2e-3",
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        env={"NNLAB_DATA_DIR": str(real_mnist_dir())},
    ).metrics()
    assert metrics["test/acc"] >= 0.95, metrics
